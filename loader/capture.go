package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/ops"
)

// Change is one successful write to a watched map, as [Capture.Read]
// returns it. Key and Value alias the capture's buffer until the next Read;
// Value is nil for [ops.Delete].
type Change struct {
	MapID ebpf.MapID
	Op    ops.Op
	Key   []byte
	Value []byte
}

// Backend names the kernel mechanism a [Capture] uses to see map writes.
type Backend string

// The capture backends.
const (
	// BackendAuto uses [BackendFentry] where the kernel allows it and
	// [BackendSyscall] otherwise; [Capture.Fallback] says why.
	BackendAuto Backend = "auto"
	// BackendFentry traces the map implementations (fexit), so it also sees
	// writes made by BPF programs.
	BackendFentry Backend = "fentry"
	// BackendSyscall traces bpf(2) returns (tp_btf/sys_exit): writes from
	// user space only, and a small cost on every syscall of the machine.
	BackendSyscall Backend = "syscall"
)

// CaptureOptions configure [NewCapture].
type CaptureOptions struct {
	Backend Backend // zero means BackendAuto
	Maps    []*Map  // the maps whose writes are reported
	// RingSize is the ring buffer size in bytes: a power of two, at least a
	// page. Zero means [DefaultRingSize]. The changes of a batch command are
	// queued in samples of up to 24 KiB, each queued or lost whole, so a
	// ring should be several times that.
	RingSize int
	// WakeBytes is how much must be queued before every new change wakes the
	// reader; below it changes are delivered in batches. Zero means
	// RingSize/8.
	WakeBytes int
}

// The wake-up contract between the capture and its reader, stated here
// once; the argument that no change is stranded is in bpf/capture.h.
const (
	// IdleWake is the longest wait of a Read that does not ask to be woken
	// by the next change: changes queued during it are collected in bulk
	// when its deadline passes (see [Capture.SetDeadline]).
	IdleWake = 250 * time.Microsecond
	// PollWindow is how long after its last change a reader keeps polling
	// (reads with a deadline already passed, a pause between them) before
	// it waits with a long deadline, whose Read asks for a wake-up: while
	// changes flow, their writers then wake nobody.
	PollWindow = 2 * IdleWake
)

// DefaultRingSize is the default capture ring: about 80,000 changes of a
// 16-byte key and 64-byte value. The kernel maps its pages twice (for
// wrap-around), so it counts twice in the daemon's resident set size.
const DefaultRingSize = 8 << 20

// Layout of a ring sample (struct change in bpf/capture.h, machine byte
// order): a run of count changes of one map with one op. The header, then
// count keys of key_size bytes back to back, then count values of
// value_size bytes back to back (none for deletes).
const (
	recordMapID     = 0
	recordOp        = 4
	recordKeySize   = 6
	recordValueSize = 8
	recordCount     = 12
	recordHeaderLen = 16
	// A sample's keys fill at most sampleKeysMax bytes and its values at
	// most sampleValuesMax (CAPTURE_KEYS_MASK and CAPTURE_VALUES_MASK in
	// bpf/capture.h): a batch is cut into samples of as many changes as fit
	// both. recordMaxLen bounds a sample: the kernel programs assemble one
	// in a buffer of this size (struct record).
	sampleKeysMax   = 8191
	sampleValuesMax = 16383
	recordMaxLen    = recordHeaderLen + sampleKeysMax + 1 + sampleValuesMax + 1
)

// btfPath is where the running kernel's BTF is; both backends need it.
const btfPath = "/sys/kernel/btf/vmlinux"

// fentryRequired are the fexit targets without which the fentry backend
// would miss plain updates and deletes, when it attaches them (see
// fentryTargetTypes); the others (lookup-and-delete) are attached where the
// kernel has them.
var fentryRequired = []string{
	"htab_map_update_elem",
	"htab_map_delete_elem",
	"htab_lru_map_update_elem",
	"htab_lru_map_delete_elem",
	"array_map_update_elem",
}

// fentryRequiredFor are the further targets without which the fentry
// backend would miss the plain updates and deletes of the maps of a type:
// required when a watched map has it.
var fentryRequiredFor = map[ebpf.MapType][]string{
	ebpf.PerCPUHash:  {"bpf_percpu_hash_update", "htab_percpu_map_update_elem"},
	ebpf.LRUCPUHash:  {"bpf_percpu_hash_update", "htab_lru_percpu_map_update_elem"},
	ebpf.PerCPUArray: {"bpf_percpu_array_update"},
	ebpf.LPMTrie:     {"trie_update_elem", "trie_delete_elem"},
}

// fentryTargetTypes are the map types whose writes each fexit target of
// the fentry backend sees. A program is attached only when a watched map
// has one of its types, so that writes to maps of other types run no
// program at all: a trampoline costs about as much as a hash map update
// (perf/PROFILE.md). Targets not listed (the batch functions, which every
// type's batch commands call) are attached always.
var fentryTargetTypes = map[string][]ebpf.MapType{
	"htab_map_update_elem":                        {ebpf.Hash},
	"htab_map_delete_elem":                        {ebpf.Hash, ebpf.PerCPUHash},
	"htab_lru_map_update_elem":                    {ebpf.LRUHash},
	"htab_lru_map_delete_elem":                    {ebpf.LRUHash, ebpf.LRUCPUHash},
	"array_map_update_elem":                       {ebpf.Array, ebpf.PerCPUArray},
	"htab_map_lookup_and_delete_elem":             {ebpf.Hash},
	"htab_lru_map_lookup_and_delete_elem":         {ebpf.LRUHash},
	"htab_map_lookup_and_delete_batch":            {ebpf.Hash},
	"htab_lru_map_lookup_and_delete_batch":        {ebpf.LRUHash},
	"bpf_percpu_hash_update":                      {ebpf.PerCPUHash, ebpf.LRUCPUHash},
	"bpf_percpu_array_update":                     {ebpf.PerCPUArray},
	"htab_percpu_map_update_elem":                 {ebpf.PerCPUHash},
	"htab_lru_percpu_map_update_elem":             {ebpf.LRUCPUHash},
	"htab_percpu_map_lookup_and_delete_elem":      {ebpf.PerCPUHash},
	"htab_lru_percpu_map_lookup_and_delete_elem":  {ebpf.LRUCPUHash},
	"htab_percpu_map_lookup_and_delete_batch":     {ebpf.PerCPUHash},
	"htab_lru_percpu_map_lookup_and_delete_batch": {ebpf.LRUCPUHash},
	"trie_update_elem":                            {ebpf.LPMTrie},
	"trie_delete_elem":                            {ebpf.LPMTrie},
}

// dropUnwatchedTypes removes the programs whose target sees writes only to
// maps of types no watched map has (see fentryTargetTypes).
func dropUnwatchedTypes(spec *ebpf.CollectionSpec, maps []*Map) {
	for name, prog := range spec.Programs {
		types, ok := fentryTargetTypes[prog.AttachTo]
		if ok && !slices.ContainsFunc(maps, func(m *Map) bool { return slices.Contains(types, m.Type) }) {
			delete(spec.Programs, name)
		}
	}
}

// Capture reports successful writes to a set of maps, made by other
// processes (and, with [BackendFentry], by BPF programs), through a BPF ring
// buffer. Writes by this process are not reported: they are the changes the
// daemon applies for its peers. Read is for one goroutine; SetDeadline,
// Buffered, Overflows and Close may be called from others.
type Capture struct {
	backend  Backend
	fallback error

	coll      *ebpf.Collection
	links     []link.Link
	reader    *ringbuf.Reader
	overflows *ebpf.Variable
	rec       ringbuf.Record // the sample being read
	cur       sample         // its changes not yet read
	// maps are the watched maps by id, for the samples whose changes
	// need their map: touches and LPM trie keys (see complete).
	maps map[ebpf.MapID]*Map
	// curMap is cur's map when its changes need it, else nil.
	curMap *Map
	// value holds a touched key's whole value, read from its map.
	value []byte
	// touchLost counts touches whose value could not be read.
	touchLost atomic.Uint64
	// pending is, for Buffered, the bytes of the changes cur had left after
	// its first was read, until its last is read; then zero.
	pending atomic.Int64
	// waiting is the programs' reader_waiting flag, mapped into this
	// process: set before a read that may wait long (see SetDeadline).
	waiting *uint32
	// waitsLong says the deadline, when SetDeadline set it, was more than
	// IdleWake away, or none.
	waitsLong atomic.Bool
	closed    atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// NewCapture loads and attaches the capture programs for opts.Maps. The
// caller closes the Capture.
func NewCapture(opts CaptureOptions) (*Capture, error) {
	if err := checkCaptureOptions(&opts); err != nil {
		return nil, err
	}
	if _, err := os.Stat(btfPath); err != nil {
		return nil, fmt.Errorf("capture: kernel without BTF (CONFIG_DEBUG_INFO_BTF): %w", err)
	}
	switch opts.Backend {
	case BackendFentry, BackendSyscall:
		return newCapture(opts.Backend, &opts)
	}
	c, err := newCapture(BackendFentry, &opts)
	if err == nil {
		return c, nil
	}
	c, err2 := newCapture(BackendSyscall, &opts)
	if err2 != nil {
		return nil, fmt.Errorf("capture: fentry: %v; syscall: %w", err, err2)
	}
	c.fallback = err
	return c, nil
}

func checkCaptureOptions(opts *CaptureOptions) error {
	switch opts.Backend {
	case "":
		opts.Backend = BackendAuto
	case BackendAuto, BackendFentry, BackendSyscall:
	default:
		return fmt.Errorf("capture backend %q: %w", opts.Backend, ErrUnknownBackend)
	}
	if opts.RingSize == 0 {
		opts.RingSize = DefaultRingSize
	}
	if page := os.Getpagesize(); opts.RingSize < page || opts.RingSize&(opts.RingSize-1) != 0 {
		return fmt.Errorf("capture ring size %d: %w: want a power of two of at least %d bytes", opts.RingSize, ErrRingSize, page)
	}
	if opts.WakeBytes == 0 {
		opts.WakeBytes = opts.RingSize / 8
	}
	if opts.WakeBytes < 0 || opts.WakeBytes > opts.RingSize {
		return fmt.Errorf("capture wake bytes %d: want 1 to the ring size %d", opts.WakeBytes, opts.RingSize)
	}
	if len(opts.Maps) == 0 {
		return errors.New("capture: no maps to watch")
	}
	for _, m := range opts.Maps {
		if m.KeySize > MaxKeySize || m.ValueLen > MaxValueSize {
			return fmt.Errorf("capture %s: keys up to %d B and values up to %d B can be captured",
				m, MaxKeySize, MaxValueSize)
		}
	}
	return nil
}

func newCapture(backend Backend, opts *CaptureOptions) (_ *Capture, err error) {
	spec, err := captureSpec(backend, opts)
	if err != nil {
		return nil, fmt.Errorf("load %s capture: %w", backend, err)
	}
	// Sized for the largest sample once, so that Read never allocates.
	c := &Capture{
		backend: backend,
		rec:     ringbuf.Record{RawSample: make([]byte, 0, recordMaxLen)},
		maps:    make(map[ebpf.MapID]*Map, len(opts.Maps)),
		value:   make([]byte, MaxValueSize),
	}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.coll, err = ebpf.NewCollection(spec); err != nil {
		return nil, fmt.Errorf("load %s capture: %w", backend, captureRefusal(backend, err))
	}
	watched := c.coll.Maps["watched"]
	for _, m := range opts.Maps {
		// The programs read each value as this many bytes.
		if err := watched.Update(uint32(m.ID), m.ValueLen, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("watch %s: %w", m, err)
		}
		c.maps[m.ID] = m
	}
	c.overflows = c.coll.Variables["overflows"]
	if err := c.mapWaiting(); err != nil {
		return nil, err
	}
	c.waitsLong.Store(true) // no deadline yet
	if c.reader, err = ringbuf.NewReader(c.coll.Maps["ring"]); err != nil {
		return nil, fmt.Errorf("capture ring reader: %w", err)
	}
	// Attach last, in a fixed order, once everything a record needs exists.
	names := make([]string, 0, len(c.coll.Programs))
	for name := range c.coll.Programs {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		prog := c.coll.Programs[name]
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			section := spec.Programs[name].SectionName
			return nil, fmt.Errorf("attach %s: %w", section, captureRefusal(backend, err))
		}
		c.links = append(c.links, l)
	}
	return c, nil
}

// mapWaiting maps the programs' reader_waiting flag into this process. The
// mapping outlives Close, which may run during a Read that stores into it,
// and is removed once c is unreachable.
func (c *Capture) mapWaiting() error {
	mem, err := unix.Mmap(c.coll.Maps["reader_waiting"].FD(), 0, os.Getpagesize(),
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the capture's reader_waiting flag: %w", err)
	}
	runtime.AddCleanup(c, func(mem []byte) { unix.Munmap(mem) }, mem)
	c.waiting = (*uint32)(unsafe.Pointer(&mem[0]))
	return nil
}

// captureRefusal explains an EPERM from loading or attaching the capture:
// a [*PermissionError] naming the capabilities the process lacks, or for
// fentry with all of them held [ErrFentryRefused] (and unix.EPERM) in place
// of cilium/ebpf's error, whose advice to raise RLIMIT_MEMLOCK is wrong for a
// kernel that refuses trampolines outright.
//
// Without those capabilities cilium/ebpf's feature probes fail too, and it
// reports the feature as not supported (seen on 6.12 for the fentry
// backend's task storage map, whenever that map happened to be created
// first): that is the same refusal, and is reported as one.
func captureRefusal(backend Backend, err error) error {
	if errors.Is(err, ebpf.ErrNotSupported) && !errors.Is(err, unix.EPERM) && len(missingCaps(captureCaps)) > 0 {
		err = fmt.Errorf("%w (its feature probe was refused: %w)", err, unix.EPERM)
	}
	if !errors.Is(err, unix.EPERM) {
		return err
	}
	if backend == BackendFentry && len(missingCaps(captureCaps)) == 0 {
		return fmt.Errorf("%w: %w", ErrFentryRefused, unix.EPERM)
	}
	return permissionError(err, captureCaps...)
}

// captureSpec returns the backend's programs configured for opts and this
// process, without the fexit programs whose target this kernel lacks.
func captureSpec(backend Backend, opts *CaptureOptions) (*ebpf.CollectionSpec, error) {
	var spec *ebpf.CollectionSpec
	var err error
	if backend == BackendFentry {
		spec, err = loadCaptureFentry()
	} else {
		spec, err = loadCaptureSyscall()
	}
	if err != nil {
		return nil, err
	}
	if backend == BackendFentry {
		dropUnwatchedTypes(spec, opts.Maps)
		required := slices.Clone(fentryRequired)
		for _, m := range opts.Maps {
			required = append(required, fentryRequiredFor[m.Type]...)
		}
		if err := dropMissingTargets(spec, required); err != nil {
			return nil, err
		}
	}
	spec.Maps["ring"].MaxEntries = uint32(opts.RingSize)
	spec.Maps["watched"].MaxEntries = uint32(len(opts.Maps))

	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return nil, fmt.Errorf("own pid namespace: %w", err)
	}
	// The kernel compares its internal dev_t encoding (major<<20 | minor).
	dev := uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev))
	for name, v := range map[string]any{
		"self_pidns_dev": dev,
		"self_pidns_ino": st.Ino,
		"self_tgid":      uint32(os.Getpid()),
		"wake_bytes":     uint64(opts.WakeBytes),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	return spec, nil
}

// dropMissingTargets removes the programs whose fexit target the kernel
// lacks, unless the target is one of required.
func dropMissingTargets(spec *ebpf.CollectionSpec, required []string) error {
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	for name, prog := range spec.Programs {
		var fn *btf.Func
		if err := kernel.TypeByName(prog.AttachTo, &fn); err == nil {
			continue
		} else if !errors.Is(err, btf.ErrNotFound) {
			return fmt.Errorf("kernel BTF %s: %w", prog.AttachTo, err)
		}
		if slices.Contains(required, prog.AttachTo) {
			return fmt.Errorf("kernel has no %s to attach fexit to", prog.AttachTo)
		}
		delete(spec.Programs, name)
	}
	return nil
}

// Backend returns the backend actually attached.
func (c *Capture) Backend() Backend { return c.backend }

// Fallback returns, for a capture made with [BackendAuto], why
// [BackendFentry] could not be used; nil if it is in use or was not asked for.
func (c *Capture) Fallback() error { return c.fallback }

// SeesProgramWrites reports whether writes made by BPF programs are
// captured too; only [BackendFentry] sees them.
func (c *Capture) SeesProgramWrites() bool { return c.backend == BackendFentry }

// SetDeadline bounds Read: once t has passed and the ring is drained, Read
// returns os.ErrDeadlineExceeded. The zero time means no deadline.
//
// With no deadline, or one more than [IdleWake] away, each Read asks the
// kernel first to wake it for the next change; otherwise changes are
// queued without waking the reader, and the Read collects them when its
// deadline passes (or once [CaptureOptions.WakeBytes] are queued, which
// wakes it). So no change waits longer than the deadline of a Read, nor
// longer than IdleWake beyond it (see bpf/capture.h). A reader that keeps
// up should poll while changes flow (a deadline already passed, and a
// pause between drains): a Read that asks for a wake-up makes the next
// change's writer pay for one.
func (c *Capture) SetDeadline(t time.Time) {
	c.waitsLong.Store(t.IsZero() || time.Until(t) > IdleWake)
	c.reader.SetDeadline(t)
}

// Read fills ch with the next captured change, blocking until there is one
// or the deadline passes (os.ErrDeadlineExceeded). After [Capture.Close] it
// returns an error wrapping os.ErrClosed. ch's Key and Value stay valid
// until the next Read. A malformed sample is an error; it means the kernel
// programs and this loader disagree.
//
// The kernel queues changes in samples of up to about 2,000 (all of one map
// and op, from one batch command); Read returns them one at a time and
// takes the next sample from the ring once the current one is used up.
//
// A BPF program's update of a per-CPU map writes the current CPU's slot
// only; the capture reports its key, and Read reads the whole value from
// the map (a key deleted since is skipped: its delete follows). An LPM
// trie's keys are returned in [Map.Canonical] form.
func (c *Capture) Read(ch *Change) error {
	for {
		if err := c.next(ch); err != nil {
			return err
		}
		if c.curMap == nil || c.complete(ch) {
			return nil
		}
	}
}

// complete finishes a change of a map that needs it (c.curMap): an LPM
// trie's key made canonical, a touch turned into the update of the value
// the map holds now. It reports false for a change to skip: a touched key
// the map no longer holds, or whose value could not be read (counted in
// [Capture.Overflows]).
func (c *Capture) complete(ch *Change) bool {
	m := c.curMap
	m.Canonical(ch.Key)
	if ch.Op != opTouch {
		return true
	}
	v := c.value[:m.ValueLen]
	found, err := m.Lookup(ch.Key, v)
	if err != nil {
		c.touchLost.Add(1)
	}
	if err != nil || !found {
		return false
	}
	ch.Op, ch.Value = ops.Update, v
	return true
}

// next is Read without complete: the next change as the ring holds it.
func (c *Capture) next(ch *Change) error {
	if len(c.cur.keys) == 0 {
		if c.waitsLong.Load() {
			// Before ReadInto looks at the ring: see bpf/capture.h.
			atomic.StoreUint32(c.waiting, 1)
		}
		// ReadInto reuses the buffer of the sample read before: only now
		// that all of its changes were returned.
		if err := c.reader.ReadInto(&c.rec); err != nil {
			return err
		}
		if err := parseRecord(c.rec.RawSample, &c.cur); err != nil {
			return err
		}
		c.curMap = nil
		if m := c.maps[c.cur.mapID]; m != nil && (c.cur.op == opTouch || m.Type == ebpf.LPMTrie) {
			c.curMap = m
		}
		c.cur.next(ch)
		if len(c.cur.keys) > 0 {
			c.pending.Store(int64(len(c.cur.keys) + len(c.cur.values)))
		}
		return nil
	}
	if c.closed.Load() {
		return fmt.Errorf("read capture: %w", os.ErrClosed)
	}
	c.cur.next(ch)
	// Not stored per change: an atomic store costs more than the rest of
	// a Read.
	if len(c.cur.keys) == 0 {
		c.pending.Store(0)
	}
	return nil
}

// opTouch is the ring samples' op for updates a BPF program made to one
// CPU's slot of a per-CPU value (CAPTURE_OP_TOUCH in bpf/capture.h): keys
// only, whose whole values [Capture.Read] reads from the map. It never
// leaves the loader.
const opTouch ops.Op = 3

// sample is a parsed ring sample: a run of changes of one map with one op.
type sample struct {
	mapID     ebpf.MapID
	op        ops.Op
	keySize   int
	valueSize int
	// The keys and values of the changes not yet returned by next; keys is
	// empty once all were.
	keys   []byte
	values []byte
}

// parseRecord checks a ring sample and makes s its parsed form; s's slices
// alias b. On error s holds no changes.
func parseRecord(b []byte, s *sample) error {
	*s = sample{}
	if len(b) < recordHeaderLen {
		return fmt.Errorf("capture sample of %d bytes: shorter than its %d-byte header", len(b), recordHeaderLen)
	}
	op := ops.Op(b[recordOp])
	keySize := int(binary.NativeEndian.Uint16(b[recordKeySize:]))
	valueSize := int(binary.NativeEndian.Uint32(b[recordValueSize:]))
	count := binary.NativeEndian.Uint32(b[recordCount:])
	switch {
	case op != ops.Update && op != ops.Delete && op != opTouch:
		return fmt.Errorf("capture sample: unknown op %d", op)
	case keySize == 0 || keySize > MaxKeySize || valueSize > MaxValueSize:
		return fmt.Errorf("capture sample: key %d B, value %d B out of range", keySize, valueSize)
	case op != ops.Update && valueSize != 0:
		return fmt.Errorf("capture sample: %s with a %d-byte value", op, valueSize)
	case count == 0:
		return errors.New("capture sample: no changes")
	}
	// In 64 bits, where count < 2^32 times sizes below 2^13 cannot overflow.
	if want := recordHeaderLen + uint64(count)*uint64(keySize+valueSize); uint64(len(b)) != want {
		return fmt.Errorf("capture sample of %d bytes: header says %d changes of %d bytes, %d in all",
			len(b), count, keySize+valueSize, want)
	}
	end := recordHeaderLen + int(count)*keySize
	*s = sample{
		mapID:     ebpf.MapID(binary.NativeEndian.Uint32(b[recordMapID:])),
		op:        op,
		keySize:   keySize,
		valueSize: valueSize,
		keys:      b[recordHeaderLen:end:end],
		values:    b[end:],
	}
	return nil
}

// next fills ch with the sample's next change; it has one. ch's slices
// alias the sample and do not reach past their own bytes.
func (s *sample) next(ch *Change) {
	ch.MapID = s.mapID
	ch.Op = s.op
	ch.Key = s.keys[:s.keySize:s.keySize]
	s.keys = s.keys[s.keySize:]
	ch.Value = nil
	if s.op == ops.Update {
		ch.Value = s.values[:s.valueSize:s.valueSize]
		s.values = s.values[s.valueSize:]
	}
}

// Buffered returns how many bytes of changes wait to be read: those of the
// samples in the ring, and those the sample being read had left after its
// first change, until Read returned its last. Zero means the next Read would
// block.
func (c *Capture) Buffered() int { return int(c.pending.Load()) + c.reader.AvailableBytes() }

// Size returns the capacity of the capture ring in bytes: what Buffered
// may reach before changes are lost.
func (c *Capture) Size() int { return c.reader.BufferSize() }

// Overflows returns how many changes were lost since the capture started:
// made while the ring was full, or whose bytes the kernel could not read.
// It also counts the runs of the capture programs the kernel skipped
// because one was already running on that CPU (a nested call from an
// interrupt, or preemption on preemptible kernels); such a run may have been
// an unwatched write, so that part can overcount. It counts too the BPF
// program writes of per-CPU maps whose whole value Read failed to read. Any loss means the peers
// may now differ from this node.
func (c *Capture) Overflows() (uint64, error) {
	var n uint64
	if err := c.overflows.Get(&n); err != nil {
		return 0, fmt.Errorf("read capture overflows: %w", err)
	}
	for name, prog := range c.coll.Programs {
		stats, err := prog.Stats()
		if err != nil {
			return 0, fmt.Errorf("capture program %s stats: %w", name, err)
		}
		n += stats.RecursionMisses
	}
	return n + c.touchLost.Load(), nil
}

// Close detaches the capture programs and releases the ring; a blocked Read
// returns. It may be called more than once.
func (c *Capture) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		var errs []error
		if c.reader != nil {
			errs = append(errs, c.reader.Close())
		}
		for _, l := range c.links {
			errs = append(errs, l.Close())
		}
		if c.coll != nil {
			c.coll.Close()
		}
		if err := errors.Join(errs...); err != nil {
			c.closeErr = fmt.Errorf("close capture: %w", err)
		}
	})
	return c.closeErr
}
