package loader

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/ops"
)

// The capture tests write maps from a second process, because a capture
// ignores the writes of its own process: the test binary runs again as
// TestCaptureWriterProcess, selected by this variable.
const (
	envCaptureWriter = "UDPMAPSYNC_CAPTURE_WRITER" // "script" or "feed"
	envCaptureScript = "UDPMAPSYNC_CAPTURE_SCRIPT" // script: file of JSON steps; feed: the map id
	envCaptureOut    = "UDPMAPSYNC_CAPTURE_OUT"    // script: where to write the results
)

// fentryRefusedText is how ErrFentryRefused reads, for errors that come as
// text from another process.
var fentryRefusedText = ErrFentryRefused.Error()

// envVM is set to 1 by the VM harness (vmtest.EnvVM), whose kernel allows
// fentry: there a refused fentry backend fails the tests instead of
// narrowing them to the syscall backend.
const envVM = "UDPMAPSYNC_VM"

var fentryProbe struct {
	once sync.Once
	err  error
}

// captureBackends are the backends to test: syscall everywhere, fentry
// where the kernel allows it (the VM harness; this host refuses it). Any
// other fentry failure fails the test.
func captureBackends(t *testing.T) []Backend {
	t.Helper()
	fentryProbe.once.Do(func() {
		m := captureTestMap(t, "probe", ebpf.Hash, 4, 4, 1)
		c, err := NewCapture(CaptureOptions{Backend: BackendFentry, Maps: []*Map{m}, RingSize: 4096})
		if err == nil {
			c.Close()
		}
		fentryProbe.err = err
	})
	if err := fentryProbe.err; err != nil {
		if !errors.Is(err, ErrFentryRefused) || os.Getenv(envVM) == "1" {
			t.Fatalf("fentry backend: %v", err)
		}
		return []Backend{BackendSyscall}
	}
	return []Backend{BackendSyscall, BackendFentry}
}

// captureTestMap creates a kernel map and wraps it as OpenMaps would.
func captureTestMap(t testing.TB, name string, typ ebpf.MapType, keySize, valueSize, maxEntries uint32) *Map {
	t.Helper()
	spec := &ebpf.MapSpec{Name: name, Type: typ, KeySize: keySize, ValueSize: valueSize, MaxEntries: maxEntries}
	if typ == ebpf.LPMTrie {
		spec.Flags = unix.BPF_F_NO_PREALLOC
	}
	em, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatalf("create %s map: %v", typ, err)
	}
	t.Cleanup(func() { em.Close() })
	info, err := em.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("kernel does not report map ids")
	}
	var cpus uint32
	if PerCPU(typ) {
		cpus = uint32(ebpf.MustPossibleCPU())
	}
	return &Map{Name: name, Type: typ, KeySize: keySize, ValueSize: valueSize, MaxEntries: maxEntries, ID: id,
		CPUs: cpus, ValueLen: valueLen(valueSize, cpus), m: em}
}

func startCapture(t testing.TB, opts CaptureOptions) *Capture {
	t.Helper()
	c, err := NewCapture(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if c.Backend() != opts.Backend {
		t.Fatalf("asked for backend %s, got %s", opts.Backend, c.Backend())
	}
	return c
}

// drain reads every queued change. The writer process has exited, so all
// its samples are in the ring already.
func drain(t *testing.T, c *Capture) []Change {
	t.Helper()
	got, _ := drainSamples(t, c)
	return got
}

// drainSamples is drain that also returns how many changes each ring sample
// held. Everything is queued before it starts, so Buffered must be above
// zero before every Read that returns a change, the sender's cue to keep
// reading, and zero at the end.
func drainSamples(t *testing.T, c *Capture) (got []Change, samples []int) {
	t.Helper()
	c.SetDeadline(time.Now())
	for {
		var ch Change
		buffered := c.Buffered()
		first := len(c.cur.keys) == 0
		err := c.Read(&ch)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatalf("read change %d: %v", len(got), err)
		}
		if buffered <= 0 {
			t.Fatalf("change %d: Buffered was %d before the Read that returned it", len(got), buffered)
		}
		if first {
			samples = append(samples, 0)
		}
		samples[len(samples)-1]++
		got = append(got, Change{MapID: ch.MapID, Op: ch.Op, Key: slices.Clone(ch.Key), Value: slices.Clone(ch.Value)})
	}
	if n := c.Buffered(); n != 0 {
		t.Errorf("drained, yet %d bytes buffered", n)
	}
	return got, samples
}

func changeString(c Change) string {
	s := fmt.Sprintf("map %d op %d key %x", c.MapID, c.Op, c.Key)
	if c.Value != nil {
		s += fmt.Sprintf(" value %x", c.Value)
	}
	return s
}

func checkChanges(t *testing.T, got, want []Change) {
	t.Helper()
	g := make([]string, len(got))
	for i, c := range got {
		g[i] = changeString(c)
	}
	w := make([]string, len(want))
	for i, c := range want {
		w[i] = changeString(c)
	}
	if !slices.Equal(g, w) {
		t.Errorf("captured %d changes:\n\t%s\nwant %d:\n\t%s", len(g), strings.Join(g, "\n\t"), len(w), strings.Join(w, "\n\t"))
	}
}

// key returns key number i of m: an array index, or a pattern that starts
// with i.
func key(m *Map, i int) []byte {
	k := make([]byte, m.KeySize)
	for j := range k {
		k[j] = byte(i*13 + j*7 + 1)
	}
	binary.NativeEndian.PutUint32(k, uint32(i))
	return k
}

// value returns version ver of a value for key i of m: for a per-CPU map,
// every CPU's slot (with the sizes the tests use, no padding).
func value(m *Map, i, ver int) []byte {
	v := make([]byte, m.ValueLen)
	for j := range v {
		v[j] = byte(i*31 + ver*17 + j*3)
	}
	return v
}

// A writeStep is one write the writer process makes with cilium/ebpf.
type writeStep struct {
	Map  ebpf.MapID `json:"map"`
	Do   string     `json:"do"`
	Keys [][]byte   `json:"keys"`
	Vals [][]byte   `json:"vals,omitempty"`
	// Fail: the kernel must refuse this write; a refused batch touched no
	// element (its count is not checked: the kernel left it as requested).
	Fail bool `json:"fail,omitempty"`
	// Done: how many elements the kernel must report a batch processed.
	Done int `json:"done,omitempty"`
	// Flags: elem_flags of a batch update.
	Flags uint64 `json:"flags,omitempty"`
}

// writeScript is what the writer process does and what a capture should
// report for it.
type writeScript struct {
	steps []writeStep
	want  []func(deleted [][]byte) []Change
}

func (s *writeScript) add(st writeStep, want func(deleted [][]byte) []Change) {
	s.steps = append(s.steps, st)
	s.want = append(s.want, want)
}

func reports(cs ...Change) func([][]byte) []Change {
	return func([][]byte) []Change { return cs }
}

func upd(m *Map, k, v []byte) Change { return Change{MapID: m.ID, Op: ops.Update, Key: k, Value: v} }
func del(m *Map, k []byte) Change    { return Change{MapID: m.ID, Op: ops.Delete, Key: k} }

func (s *writeScript) put(m *Map, k, v []byte) {
	s.add(writeStep{Map: m.ID, Do: "update", Keys: [][]byte{k}, Vals: [][]byte{v}}, reports(upd(m, k, v)))
}

// refused adds a write the kernel rejects without touching the map:
// nothing to report.
func (s *writeScript) refused(m *Map, do string, keys, vals [][]byte, flags uint64) {
	s.add(writeStep{Map: m.ID, Do: do, Keys: keys, Vals: vals, Fail: true, Flags: flags}, reports())
}

func one(b []byte) [][]byte {
	if b == nil {
		return nil
	}
	return [][]byte{b}
}

func (s *writeScript) delete(m *Map, k []byte) {
	s.add(writeStep{Map: m.ID, Do: "delete", Keys: [][]byte{k}}, reports(del(m, k)))
}

func (s *writeScript) lookupDelete(m *Map, k []byte) {
	s.add(writeStep{Map: m.ID, Do: "lookup-delete", Keys: [][]byte{k}}, reports(del(m, k)))
}

// batchUpdate writes keys and values with one BPF_MAP_UPDATE_BATCH of
// which the kernel applies the first done.
func (s *writeScript) batchUpdate(m *Map, keys, vals [][]byte, done int, flags uint64) {
	var want []Change
	for i := range done {
		want = append(want, upd(m, keys[i], vals[i]))
	}
	s.add(writeStep{Map: m.ID, Do: "batch-update", Keys: keys, Vals: vals, Done: done, Flags: flags}, reports(want...))
}

// batchUpdateFault writes keys and vals (at least one) with one
// BPF_MAP_UPDATE_BATCH whose next key lies in an unreadable page: all of
// them take effect, then the batch fails with EFAULT. The syscall backend
// cannot tell that error from one returned before any element and reports
// none (see batch_done in bpf/capture.h); the fentry backend counts the
// elements that took effect and reports them all.
func (s *writeScript) batchUpdateFault(m *Map, keys, vals [][]byte, backend Backend) {
	var want []Change
	for i := range keys {
		if backend == BackendFentry {
			want = append(want, upd(m, keys[i], vals[i]))
		}
	}
	s.add(writeStep{Map: m.ID, Do: "batch-update-fault", Keys: keys, Vals: vals, Done: len(keys)}, reports(want...))
}

func (s *writeScript) batchDelete(m *Map, keys [][]byte, done int) {
	var want []Change
	for i := range done {
		want = append(want, del(m, keys[i]))
	}
	s.add(writeStep{Map: m.ID, Do: "batch-delete", Keys: keys, Done: done}, reports(want...))
}

// lookupDeleteBatch empties m with one BPF_MAP_LOOKUP_AND_DELETE_BATCH that
// must return done keys; they are reported in the order the kernel returned
// them.
func (s *writeScript) lookupDeleteBatch(m *Map, done int) {
	s.add(writeStep{Map: m.ID, Do: "batch-lookup-delete", Done: done}, func(deleted [][]byte) []Change {
		var want []Change
		for _, k := range deleted {
			want = append(want, del(m, k))
		}
		return want
	})
}

// run makes the writes in a writer process and returns the changes a
// capture of the watched maps must report, in order.
func (s *writeScript) run(t *testing.T, watched ...*Map) []Change {
	t.Helper()
	b, err := json.Marshal(s.steps)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script, out := filepath.Join(dir, "script.json"), filepath.Join(dir, "deleted.json")
	if err := os.WriteFile(script, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCaptureWriterProcess$", "-test.v")
	cmd.Env = append(os.Environ(), envCaptureWriter+"=script", envCaptureScript+"="+script, envCaptureOut+"="+out)
	if b, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(b), "--- PASS: TestCaptureWriterProcess") {
		t.Fatalf("writer process: %v\n%s", err, b)
	}
	b, err = os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var deleted [][][]byte
	if err := json.Unmarshal(b, &deleted); err != nil {
		t.Fatal(err)
	}
	var want []Change
	for i, w := range s.want {
		for _, c := range w(deleted[i]) {
			if slices.ContainsFunc(watched, func(m *Map) bool { return m.ID == c.MapID }) {
				want = append(want, c)
			}
		}
	}
	return want
}

// A Read that waits without a deadline, or with a far one, is woken by the
// next change; the ring's wake-up threshold is far above what is written, so
// only the reader_waiting flag can wake it (bpf/capture.h). Before each
// write the Read has waited a while, so the write comes after it looked at
// the ring. A Read that is never woken fails the test at the test's timeout.
func TestCaptureWakesWaitingRead(t *testing.T) {
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			m := captureTestMap(t, "wake", ebpf.Hash, 4, 8, 16)
			c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
			for i, deadline := range []time.Time{{}, time.Now().Add(time.Hour), {}} {
				c.SetDeadline(deadline)
				read := make(chan error, 1)
				var ch Change
				go func() { read <- c.Read(&ch) }()
				time.Sleep(50 * time.Millisecond)
				var s writeScript
				s.put(m, key(m, i), value(m, i, 1))
				want := s.run(t, m)
				if err := <-read; err != nil {
					t.Fatalf("read %d: %v", i, err)
				}
				checkChanges(t, []Change{ch}, want)
			}
		})
	}
}

// TestCaptureWriterProcess is the writer process of the capture tests; it
// does nothing unless one of them starts it.
func TestCaptureWriterProcess(t *testing.T) {
	switch os.Getenv(envCaptureWriter) {
	case "script":
		writeFromScript(t)
	case "feed":
		writeOnRequest(t)
	default:
		t.Skip("the writer process of the capture tests; they start it")
	}
}

// packed returns elems as a slice of size-byte arrays, the shape
// cilium/ebpf's batch calls take.
func packed(size int, elems [][]byte) reflect.Value {
	s := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(size, reflect.TypeFor[byte]())), len(elems), len(elems))
	for i, e := range elems {
		reflect.Copy(s.Index(i), reflect.ValueOf(e))
	}
	return s
}

func writeFromScript(t *testing.T) {
	b, err := os.ReadFile(os.Getenv(envCaptureScript))
	if err != nil {
		t.Fatal(err)
	}
	var steps []writeStep
	if err := json.Unmarshal(b, &steps); err != nil {
		t.Fatal(err)
	}
	maps := map[ebpf.MapID]*ebpf.Map{}
	deleted := make([][][]byte, len(steps))
	for i, st := range steps {
		m := maps[st.Map]
		if m == nil {
			var err error
			if m, err = ebpf.NewMapFromID(st.Map); err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			maps[st.Map] = m
		}
		ks, vs := int(m.KeySize()), int(m.ValueSize())
		var err error
		n := -1
		if PerCPU(m.Type()) {
			// cilium/ebpf takes per-CPU values as slices of one value per
			// CPU; the tests write them as the kernel takes them.
			n, err = writePerCPU(m, st, &deleted[i])
			st.Do = "done"
		}
		switch st.Do {
		case "done":
		case "update":
			err = m.Update(st.Keys[0], st.Vals[0], ebpf.UpdateAny)
		case "create":
			err = m.Update(st.Keys[0], st.Vals[0], ebpf.UpdateNoExist)
		case "delete":
			err = m.Delete(st.Keys[0])
		case "lookup-delete":
			err = m.LookupAndDelete(st.Keys[0], make([]byte, vs))
		case "batch-update":
			n, err = m.BatchUpdate(packed(ks, st.Keys).Interface(), packed(vs, st.Vals).Interface(), &ebpf.BatchOptions{ElemFlags: st.Flags})
		case "batch-update-fault":
			n, err = batchUpdateFault(m, st.Keys, st.Vals)
		case "batch-delete":
			n, err = m.BatchDelete(packed(ks, st.Keys).Interface(), nil)
		case "batch-lookup-delete":
			var cursor ebpf.MapBatchCursor
			keys := packed(ks, make([][]byte, m.MaxEntries()))
			vals := packed(vs, make([][]byte, m.MaxEntries()))
			n, err = m.BatchLookupAndDelete(&cursor, keys.Interface(), vals.Interface(), nil)
			for j := range max(n, 0) {
				deleted[i] = append(deleted[i], keys.Index(j).Bytes())
			}
		default:
			t.Fatalf("step %d: unknown %q", i, st.Do)
		}
		switch {
		case (err != nil) != st.Fail && (n < 0 || st.Fail):
			t.Errorf("step %d %s: error %v, want failure %v", i, st.Do, err, st.Fail)
		case n >= 0 && !st.Fail && n != st.Done:
			t.Errorf("step %d %s: kernel processed %d, want %d (%v)", i, st.Do, n, st.Done, err)
		}
	}
	b, err = json.Marshal(deleted)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(os.Getenv(envCaptureOut), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writePerCPU makes step st on the per-CPU map m with bpf(2) itself, each
// value every CPU's slot back to back, and returns what the step returns
// in writeFromScript (-1: not a batch). The keys a lookup-and-delete batch
// deleted are appended to deleted.
func writePerCPU(m *ebpf.Map, st writeStep, deleted *[][]byte) (int, error) {
	fd := uint32(m.FD())
	pack := func(elems [][]byte) []byte {
		if len(elems) == 0 {
			return make([]byte, 1)
		}
		return slices.Concat(elems...)
	}
	keys, vals := pack(st.Keys), pack(st.Vals)
	vlen := valueLen(m.ValueSize(), uint32(ebpf.MustPossibleCPU()))
	wrap := func(errno unix.Errno) error {
		if errno == 0 {
			return nil
		}
		return errno
	}
	switch st.Do {
	case "update", "create":
		flags := uint64(0)
		if st.Do == "create" {
			flags = uint64(ebpf.UpdateNoExist)
		}
		return -1, wrap(elem(cmdMapUpdateBatch, fd, flags, keys, vals))
	case "delete":
		return -1, wrap(elem(cmdMapDeleteBatch, fd, 0, keys, nil))
	case "batch-lookup-delete":
		ks, n := int(m.KeySize()), int(m.MaxEntries())
		kb, vb, cursor := make([]byte, n*ks), make([]byte, n*int(vlen)), make([]byte, 8)
		attr := batchAttr{outBatch: unsafe.Pointer(&cursor[0]), keys: unsafe.Pointer(&kb[0]), values: unsafe.Pointer(&vb[0]),
			count: uint32(n), mapFD: fd}
		_, _, errno := unix.Syscall(unix.SYS_BPF, 25, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr)) // BPF_MAP_LOOKUP_AND_DELETE_BATCH
		if errno == unix.ENOENT {
			errno = 0 // the whole map was read
		}
		for j := range int(attr.count) {
			*deleted = append(*deleted, kb[j*ks:(j+1)*ks])
		}
		return int(attr.count), wrap(errno)
	case "lookup-delete":
		v := make([]byte, vlen)
		attr := elemAttr{mapFD: fd, key: unsafe.Pointer(&keys[0]), value: unsafe.Pointer(&v[0])}
		_, _, errno := unix.Syscall(unix.SYS_BPF, 21, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr)) // BPF_MAP_LOOKUP_AND_DELETE_ELEM
		return -1, wrap(errno)
	case "batch-update":
		n, errno := batch(cmdMapUpdateBatch, fd, st.Flags, keys, vals, len(st.Keys))
		return n, wrap(errno)
	case "batch-delete":
		n, errno := batch(cmdMapDeleteBatch, fd, 0, keys, nil, len(st.Keys))
		return n, wrap(errno)
	}
	return -1, fmt.Errorf("per-CPU map: step %q not written", st.Do)
}

// writeOnRequest serves the benchmark: for every number n read from stdin
// it updates n entries of the map named by the script variable with one
// batch, then answers on file descriptor 3.
func writeOnRequest(t *testing.T) {
	id, err := strconv.Atoi(os.Getenv(envCaptureScript))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ack := os.NewFile(3, "ack")
	in := bufio.NewScanner(os.Stdin)
	for ver := 0; in.Scan(); ver++ {
		n, err := strconv.Atoi(in.Text())
		if err != nil {
			t.Fatal(err)
		}
		keys := make([]uint32, n)
		vals := make([]uint64, n)
		for i := range keys {
			keys[i], vals[i] = uint32(i), uint64(ver)
		}
		if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := ack.Write([]byte{'\n'}); err != nil {
			t.Fatal(err)
		}
	}
}

// addHashSteps writes m (a hash or LRU hash map) in every way the kernel
// offers, successful or refused, touching the unwatched map u in between.
func addHashSteps(s *writeScript, m, u *Map) {
	s.put(m, key(m, 1), value(m, 1, 1))
	s.put(m, key(m, 2), value(m, 2, 1))
	s.put(u, key(u, 1), value(u, 1, 1))
	s.put(m, key(m, 1), value(m, 1, 2))
	s.refused(m, "create", one(key(m, 1)), one(value(m, 1, 3)), 0)
	s.delete(m, key(m, 2))
	s.refused(m, "delete", one(key(m, 2)), nil, 0)
	// In order, duplicates included: the later value is the one kept.
	s.batchUpdate(m, [][]byte{key(m, 3), key(m, 4), key(m, 3)},
		[][]byte{value(m, 3, 1), value(m, 4, 1), value(m, 3, 2)}, 3, 0)
	// Stops at the missing key: only the first delete happened.
	s.batchDelete(m, [][]byte{key(m, 3), key(m, 9), key(m, 4)}, 1)
	// BPF_F_LOCK on a map without a spin lock: refused before any element.
	s.refused(m, "batch-update", one(key(m, 5)), one(value(m, 5, 1)), uint64(ebpf.UpdateLock))
	s.lookupDelete(m, key(m, 1))
	s.refused(m, "lookup-delete", one(key(m, 1)), nil, 0)
	s.put(m, key(m, 6), value(m, 6, 1))
	s.put(m, key(m, 7), value(m, 7, 1))
	s.lookupDeleteBatch(m, 3) // keys 4, 6 and 7
	s.batchDelete(u, [][]byte{key(u, 1)}, 1)
}

func addArraySteps(s *writeScript, m *Map) {
	s.put(m, key(m, 1), value(m, 1, 1))
	s.put(m, key(m, 1), value(m, 1, 2))
	s.refused(m, "create", one(key(m, 1)), one(value(m, 1, 3)), 0)
	s.refused(m, "update", one(key(m, int(m.MaxEntries))), one(value(m, 0, 1)), 0)
	s.refused(m, "delete", one(key(m, 1)), nil, 0)
	s.refused(m, "lookup-delete", one(key(m, 1)), nil, 0)
	s.batchUpdate(m, [][]byte{key(m, 2), key(m, 3)}, [][]byte{value(m, 2, 1), value(m, 3, 1)}, 2, 0)
	// Stops at the index out of range.
	s.batchUpdate(m, [][]byte{key(m, 4), key(m, 99), key(m, 5)},
		[][]byte{value(m, 4, 1), value(m, 99, 1), value(m, 5, 1)}, 1, 0)
	// Arrays have no delete batch.
	s.refused(m, "batch-delete", one(key(m, 2)), nil, 0)
	// Arrays have no lookup-and-delete batch: refused before the kernel
	// writes the count back, which still holds the request.
	s.refused(m, "batch-lookup-delete", nil, nil, 0)
}

// prefix returns an LPM trie key of m (4 bytes of prefix length, then the
// prefix's bytes) for prefix length plen, with every byte after the length
// set: a key the kernel takes, but not in canonical form.
func prefix(m *Map, plen uint32, b byte) []byte {
	k := slices.Repeat([]byte{b}, int(m.KeySize))
	binary.NativeEndian.PutUint32(k, plen)
	return k
}

// canonical is k in Map.Canonical form.
func canonical(m *Map, k []byte) []byte {
	k = slices.Clone(k)
	m.Canonical(k)
	return k
}

// addTrieSteps writes m, an LPM trie, in every way the kernel offers.
// Keys are reported canonical.
func addTrieSteps(s *writeScript, m, u *Map) {
	k8, k16 := prefix(m, 8, 0x0a), prefix(m, 16, 0x0a)
	s.add(writeStep{Map: m.ID, Do: "update", Keys: one(k8), Vals: one(value(m, 1, 1))}, reports(upd(m, canonical(m, k8), value(m, 1, 1))))
	s.add(writeStep{Map: m.ID, Do: "update", Keys: one(k16), Vals: one(value(m, 2, 1))}, reports(upd(m, canonical(m, k16), value(m, 2, 1))))
	s.put(u, prefix(u, 8, 0x0a), value(u, 1, 1))
	// Another spelling of the /8: the same entry, reported as the same key.
	k8b := prefix(m, 8, 0x0a)
	k8b[len(k8b)-1] = 0x55
	s.add(writeStep{Map: m.ID, Do: "update", Keys: one(k8b), Vals: one(value(m, 1, 2))}, reports(upd(m, canonical(m, k8), value(m, 1, 2))))
	s.refused(m, "create", one(k16), one(value(m, 2, 3)), 0)
	s.add(writeStep{Map: m.ID, Do: "delete", Keys: one(k16)}, reports(del(m, canonical(m, k16))))
	s.refused(m, "delete", one(k16), nil, 0)
	// A prefix longer than the key holds.
	s.refused(m, "update", one(prefix(m, 33, 1)), one(value(m, 3, 1)), 0)
	// The generic batch commands (Linux 5.12 and later).
	k24 := prefix(m, 24, 0x0b)
	s.add(writeStep{Map: m.ID, Do: "batch-update", Keys: [][]byte{k16, k24}, Vals: [][]byte{value(m, 2, 4), value(m, 3, 1)}, Done: 2},
		reports(upd(m, canonical(m, k16), value(m, 2, 4)), upd(m, canonical(m, k24), value(m, 3, 1))))
	// Stops at the missing prefix.
	s.add(writeStep{Map: m.ID, Do: "batch-delete", Keys: [][]byte{k24, prefix(m, 30, 9), k8}, Done: 1},
		reports(del(m, canonical(m, k24))))
}

func TestCaptureWrites(t *testing.T) {
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			for _, tc := range []struct {
				name          string
				typ           ebpf.MapType
				keySz, valSz  uint32
				maxEntries    uint32
				steps         func(s *writeScript, m, u *Map)
				unwatchedType ebpf.MapType
			}{
				{"hash", ebpf.Hash, 4, 8, 64, addHashSteps, ebpf.Hash},
				{"hash odd sizes", ebpf.Hash, 13, 37, 64, addHashSteps, ebpf.Hash},
				{"hash largest", ebpf.Hash, MaxKeySize, MaxValueSize, 16, addHashSteps, ebpf.Hash},
				// Each CPU takes up to 128 free LRU elements for itself and
				// evicts when another CPU holds the rest: size for that.
				{"lru hash", ebpf.LRUHash, 4, 8, uint32(256 * ebpf.MustPossibleCPU()), addHashSteps, ebpf.LRUHash},
				{"array", ebpf.Array, 4, 8, 64, func(s *writeScript, m, _ *Map) { addArraySteps(s, m) }, ebpf.Array},
				// Per-CPU values travel whole: every CPU's slot.
				{"percpu hash", ebpf.PerCPUHash, 4, 16, 64, addHashSteps, ebpf.PerCPUHash},
				{"lru percpu hash", ebpf.LRUCPUHash, 4, 8, uint32(256 * ebpf.MustPossibleCPU()), addHashSteps, ebpf.LRUCPUHash},
				{"percpu array", ebpf.PerCPUArray, 4, 8, 64, func(s *writeScript, m, _ *Map) { addArraySteps(s, m) }, ebpf.PerCPUArray},
				{"lpm trie", ebpf.LPMTrie, 8, 8, 64, addTrieSteps, ebpf.LPMTrie},
			} {
				t.Run(tc.name, func(t *testing.T) {
					m := captureTestMap(t, "watched", tc.typ, tc.keySz, tc.valSz, tc.maxEntries)
					u := captureTestMap(t, "unwatched", tc.unwatchedType, tc.keySz, tc.valSz, tc.maxEntries)
					c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
					var s writeScript
					tc.steps(&s, m, u)
					want := s.run(t, m)
					checkChanges(t, drain(t, c), want)
					if n, err := c.Overflows(); err != nil || n != 0 {
						t.Errorf("overflows %d, %v; want 0", n, err)
					}
				})
			}
		})
	}
}

// TestCaptureBatchFull checks a batch that fails midway because the map is
// full: the elements before the failure are reported, none after, also when
// they fill more than one sample.
func TestCaptureBatchFull(t *testing.T) {
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			for _, tc := range []struct {
				name                 string
				keySize, valueSize   uint32
				maxEntries, own, all int
			}{
				{"small", 4, 8, 4, 3, 3},
				{"across samples", 16, 64, 700, 0, 1000},
			} {
				t.Run(tc.name, func(t *testing.T) {
					m := captureTestMap(t, "full", ebpf.Hash, tc.keySize, tc.valueSize, uint32(tc.maxEntries))
					for i := range tc.own {
						// Our own writes: not reported.
						if err := m.m.Put(key(m, 100000+i), value(m, 100000+i, 0)); err != nil {
							t.Fatal(err)
						}
					}
					c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
					var keys, vals [][]byte
					for i := range tc.all {
						keys, vals = append(keys, key(m, i)), append(vals, value(m, i, 1))
					}
					var s writeScript
					s.batchUpdate(m, keys, vals, tc.maxEntries-tc.own, 0)
					want := s.run(t, m)
					checkChanges(t, drain(t, c), want)
					if n, err := c.Overflows(); err != nil || n != 0 {
						t.Errorf("overflows %d, %v; want 0", n, err)
					}
				})
			}
		})
	}
}

// chunkSamples returns how many changes each sample holds when the kernel
// programs report n elements of a batch read from the caller's buffers.
// valueSize is 0 for deletes.
func chunkSamples(n, keySize, valueSize int) []int {
	per := sampleKeysMax / keySize
	if valueSize > 0 {
		per = min(per, sampleValuesMax/valueSize)
	}
	var samples []int
	for ; n > 0; n -= per {
		samples = append(samples, min(n, per))
	}
	return samples
}

// TestCaptureBatchChunks writes batches of more elements than one sample
// holds, with mid-size and with the largest keys and values. Every change
// is reported exactly once, in order, with its bytes, in full samples read
// from the caller's buffers (the last one excepted), also by the fentry
// backend, whose element programs skip the elements of a batch; a batch
// that fails midway reports exactly the elements before the failure.
func TestCaptureBatchChunks(t *testing.T) {
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			for _, tc := range []struct{ keySize, valueSize, n int }{
				{16, 64, 1000},
				{MaxKeySize, MaxValueSize, 40},
			} {
				t.Run(fmt.Sprintf("key %d value %d", tc.keySize, tc.valueSize), func(t *testing.T) {
					m := captureTestMap(t, "chunks", ebpf.Hash, uint32(tc.keySize), uint32(tc.valueSize), uint32(tc.n))
					c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
					var keys, vals, vals2 [][]byte
					for i := range tc.n {
						keys, vals, vals2 = append(keys, key(m, i)), append(vals, value(m, i, 1)), append(vals2, value(m, i, 2))
					}
					var s writeScript
					var samples []int
					// batch adds the samples of n elements of a batch command.
					batch := func(n, valueSize int) {
						samples = append(samples, chunkSamples(n, tc.keySize, valueSize)...)
					}
					s.batchUpdate(m, keys, vals, tc.n, 0)
					batch(tc.n, tc.valueSize)
					// Stops at a missing key after more than one sample's worth.
					cut := tc.n * 3 / 4
					s.batchDelete(m, slices.Concat(keys[:cut], [][]byte{key(m, tc.n)}, keys[cut:]), cut)
					batch(cut, 0)
					// Recreates the deleted keys, which fills the map, then
					// stops at a new key. (Batches take no BPF_NOEXIST.)
					s.batchUpdate(m, append(slices.Clone(keys[:cut]), key(m, tc.n)), append(slices.Clone(vals2[:cut]), value(m, tc.n, 1)), cut, 0)
					batch(cut, tc.valueSize)
					s.batchDelete(m, keys, tc.n)
					batch(tc.n, 0)
					s.put(m, keys[0], vals[0])
					samples = append(samples, 1)
					// Key 0 twice, across samples: the kernel keeps the later
					// value, and the capture reports both in order.
					s.batchUpdate(m, append(slices.Clone(keys), keys[0]), append(slices.Clone(vals2), vals[0]), tc.n+1, 0)
					batch(tc.n+1, tc.valueSize)
					s.lookupDeleteBatch(m, tc.n)
					batch(tc.n, 0)

					want := s.run(t, m)
					got, gotSamples := drainSamples(t, c)
					checkChanges(t, got, want)
					if !slices.Equal(gotSamples, samples) {
						t.Errorf("changes per sample %v, want %v", gotSamples, samples)
					}
					if n, err := c.Overflows(); err != nil || n != 0 {
						t.Errorf("overflows %d, %v; want 0", n, err)
					}
				})
			}
		})
	}
}

// batchUpdateFault is the writer process's side of
// [writeScript.batchUpdateFault]: it returns the count the kernel wrote back.
func batchUpdateFault(m *ebpf.Map, keys, vals [][]byte) (int, error) {
	ks, page := int(m.KeySize()), os.Getpagesize()
	size := (len(keys)*ks + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, size+page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return -1, err
	}
	defer unix.Munmap(mem)
	if err := unix.Mprotect(mem[size:], unix.PROT_NONE); err != nil {
		return -1, err
	}
	start := size - len(keys)*ks
	for i, k := range keys {
		copy(mem[start+i*ks:], k)
	}
	values := slices.Concat(append(slices.Clone(vals), make([]byte, m.ValueSize()))...)
	// attr.batch of union bpf_attr.
	attr := struct {
		inBatch, outBatch, keys, values uint64
		count, mapFD                    uint32
		elemFlags, flags                uint64
	}{
		keys:   uint64(uintptr(unsafe.Pointer(&mem[start]))),
		values: uint64(uintptr(unsafe.Pointer(&values[0]))),
		count:  uint32(len(keys) + 1),
		mapFD:  uint32(m.FD()),
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_MAP_UPDATE_BATCH, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(values)
	if errno != 0 {
		err = errno
	}
	return int(attr.count), err
}

// TestCaptureBatchFault checks a batch update that fails midway because
// its next key cannot be read: see [writeScript.batchUpdateFault].
func TestCaptureBatchFault(t *testing.T) {
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			const n = 300 // more than one sample's worth
			m := captureTestMap(t, "fault", ebpf.Hash, 16, 64, n+1)
			c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
			var keys, vals [][]byte
			for i := range n {
				keys, vals = append(keys, key(m, i)), append(vals, value(m, i, 1))
			}
			var s writeScript
			s.batchUpdateFault(m, keys, vals, backend)
			want := s.run(t, m)
			checkChanges(t, drain(t, c), want)
			if n, err := c.Overflows(); err != nil || n != 0 {
				t.Errorf("overflows %d, %v; want 0", n, err)
			}
		})
	}
}

// TestCaptureSkipsOwnWrites writes from the capturing process, the way the
// daemon applies its peers' changes, then once from another process: only
// that one is reported.
func TestCaptureSkipsOwnWrites(t *testing.T) {
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			m := captureTestMap(t, "own", ebpf.Hash, 4, 8, 64)
			c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
			if err := m.m.Put(key(m, 1), value(m, 1, 1)); err != nil {
				t.Fatal(err)
			}
			keys := slices.Concat(key(m, 2), key(m, 3))
			if err := m.UpdateBatch(keys, slices.Concat(value(m, 2, 1), value(m, 3, 1))); err != nil {
				t.Fatal(err)
			}
			if _, err := m.DeleteBatch(keys); err != nil {
				t.Fatal(err)
			}
			if err := m.m.Delete(key(m, 1)); err != nil {
				t.Fatal(err)
			}
			var s writeScript
			s.put(m, key(m, 4), value(m, 4, 1))
			want := s.run(t, m)
			checkChanges(t, drain(t, c), want)
		})
	}
}

// TestCaptureProgramWrites writes the watched map from a BPF program (run
// with BPF_PROG_TEST_RUN): reported exactly when the backend says it sees
// program writes.
func TestCaptureProgramWrites(t *testing.T) {
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			m := captureTestMap(t, "progwrite", ebpf.Hash, 4, 8, 4)
			prog := updateProgram(t, m, []int32{7}, 0x0102_0304)
			c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
			if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
				t.Fatal(err)
			}
			var want []Change
			if c.SeesProgramWrites() {
				want = append(want, upd(m, binary.NativeEndian.AppendUint32(nil, 7), binary.NativeEndian.AppendUint64(nil, 0x0102_0304)))
			}
			checkChanges(t, drain(t, c), want)
		})
	}
}

// TestCaptureOverflow fills a small ring without reading it: the changes
// that did not fit are counted, and the ones that did are the first ones.
// The ring holds two full samples of a batch; the batch fills five.
func TestCaptureOverflow(t *testing.T) {
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			const n = 10000
			m := captureTestMap(t, "overflow", ebpf.Hash, 4, 8, n)
			c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}, RingSize: 64 << 10})
			var s writeScript
			var keys, vals [][]byte
			for i := range n {
				keys, vals = append(keys, key(m, i)), append(vals, value(m, i, 1))
			}
			s.batchUpdate(m, keys, vals, n, 0)
			want := s.run(t, m)
			got := drain(t, c)
			lost, err := c.Overflows()
			if err != nil {
				t.Fatal(err)
			}
			if lost == 0 || len(got) == 0 || len(got)+int(lost) != n {
				t.Errorf("read %d changes and %d overflows; want %d in all, some read, some lost", len(got), lost, n)
			}
			checkChanges(t, got, want[:min(len(got), n)])
			t.Logf("%d changes read, %d lost", len(got), lost)
		})
	}
}

// TestCaptureFentryOrFallback: this host refuses fentry/fexit, the VM
// harness allows it. Either way the outcome and BackendAuto must agree.
func TestCaptureFentryOrFallback(t *testing.T) {
	m := captureTestMap(t, "fallback", ebpf.Hash, 4, 8, 4)
	c, fentryErr := NewCapture(CaptureOptions{Backend: BackendFentry, Maps: []*Map{m}, RingSize: 4096})
	if fentryErr == nil {
		if !c.SeesProgramWrites() || c.Fallback() != nil {
			t.Errorf("fentry capture: sees program writes %v, fallback %v", c.SeesProgramWrites(), c.Fallback())
		}
		c.Close()
	} else if !errors.Is(fentryErr, ErrFentryRefused) || !errors.Is(fentryErr, unix.EPERM) || errors.Is(fentryErr, ErrPermission) ||
		strings.Contains(fentryErr.Error(), "MEMLOCK") || os.Getenv(envVM) == "1" {
		t.Fatalf("fentry backend: %v; want it to work or fail with ErrFentryRefused and EPERM, without MEMLOCK advice", fentryErr)
	} else if want := "load fentry capture: kernel refused fentry/fexit programs: operation not permitted"; fentryErr.Error() != want {
		t.Errorf("fentry backend: %q, want %q", fentryErr, want)
	}
	t.Logf("fentry: %v", fentryErr)

	auto, err := NewCapture(CaptureOptions{Maps: []*Map{m}, RingSize: 4096, Backend: BackendAuto})
	if err != nil {
		t.Fatal(err)
	}
	defer auto.Close()
	if fentryErr == nil {
		if auto.Backend() != BackendFentry || auto.Fallback() != nil {
			t.Errorf("auto: backend %s, fallback %v; want fentry and none", auto.Backend(), auto.Fallback())
		}
		return
	}
	if auto.Backend() != BackendSyscall || !errors.Is(auto.Fallback(), ErrFentryRefused) {
		t.Errorf("auto: backend %s, fallback %v; want syscall because of ErrFentryRefused", auto.Backend(), auto.Fallback())
	}
	if auto.SeesProgramWrites() {
		t.Error("syscall backend claims to see program writes")
	}
}

// TestCaptureClose checks that Close wakes a blocked Read, is idempotent,
// and detaches and frees every capture program.
func TestCaptureClose(t *testing.T) {
	m := captureTestMap(t, "close", ebpf.Hash, 4, 8, 4)
	c, err := NewCapture(CaptureOptions{Backend: BackendSyscall, Maps: []*Map{m}, RingSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, p := range c.coll.Programs {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ids = append(ids, id)
	}
	done := make(chan error)
	go func() {
		var ch Change
		done <- c.Read(&ch)
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("blocked Read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still blocked 10s after Close")
	}
	var ch Change
	if err := c.Read(&ch); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close: %v, want os.ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// Programs are freed after an RCU grace period.
	for _, id := range ids {
		deadline := time.Now().Add(10 * time.Second)
		for {
			p, err := ebpf.NewProgramFromID(id)
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if err == nil {
				p.Close()
			}
			if time.Now().After(deadline) {
				t.Fatalf("program %d still exists after Close (%v)", id, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestCaptureCloseMidSample closes a capture whose Read has changes of the
// current sample left: the next Read reports the close, like an empty ring.
func TestCaptureCloseMidSample(t *testing.T) {
	m := captureTestMap(t, "closemid", ebpf.Hash, 4, 8, 4)
	c := startCapture(t, CaptureOptions{Backend: BackendSyscall, Maps: []*Map{m}, RingSize: 4096})
	var s writeScript
	s.batchUpdate(m, [][]byte{key(m, 1), key(m, 2)}, [][]byte{value(m, 1, 1), value(m, 2, 1)}, 2, 0)
	s.run(t, m)
	c.SetDeadline(time.Now())
	var ch Change
	if err := c.Read(&ch); err != nil {
		t.Fatal(err)
	}
	if len(c.cur.keys) == 0 {
		t.Fatal("the batch's first sample holds one change: the test proves nothing")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Read(&ch); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read after Close: %v, want os.ErrClosed", err)
	}
}

func TestCaptureOptionErrors(t *testing.T) {
	m := captureTestMap(t, "opts", ebpf.Hash, 4, 8, 4)
	big := &Map{Name: "big", Type: ebpf.Hash, KeySize: 4, ValueSize: MaxValueSize + 1, ValueLen: MaxValueSize + 1, ID: m.ID}
	for _, tc := range []struct {
		opts     CaptureOptions
		sentinel error // nil: none
		want     string
	}{
		{CaptureOptions{Backend: "kprobe", Maps: []*Map{m}}, ErrUnknownBackend, `capture backend "kprobe": unknown capture backend`},
		{CaptureOptions{Maps: []*Map{m}, RingSize: 3 << 12}, ErrRingSize, "capture ring size 12288: invalid capture ring size: want a power of two"},
		{CaptureOptions{Maps: []*Map{m}, RingSize: 1024}, ErrRingSize, "capture ring size 1024: invalid capture ring size: want a power of two"},
		{CaptureOptions{Maps: []*Map{m}, RingSize: 4096, WakeBytes: 8192}, nil, "capture wake bytes 8192"},
		{CaptureOptions{}, nil, "capture: no maps to watch"},
		{CaptureOptions{Maps: []*Map{m, big}}, nil, "capture big (Hash, key 4 B, value 16384 B, max 0, id "},
	} {
		c, err := NewCapture(tc.opts)
		if err == nil {
			c.Close()
			t.Errorf("%+v: no error, want %q", tc.opts, tc.want)
		} else if !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.opts, err, tc.want)
		}
		if tc.sentinel != nil && !errors.Is(err, tc.sentinel) {
			t.Errorf("%+v: %v does not match %v", tc.opts, err, tc.sentinel)
		}
	}
}

// TestCaptureNeedsCapabilities runs itself again in child processes that
// drop capabilities the capture needs: every backend then fails with a
// PermissionError (ErrPermission) naming the missing ones, never with
// ErrFentryRefused, which is for a kernel that refuses fentry despite them.
func TestCaptureNeedsCapabilities(t *testing.T) {
	const env = "UDPMAPSYNC_TEST_DROP_CAPS"
	if drop := os.Getenv(env); drop != "" {
		captureWithoutCaps(t, strings.Split(drop, ","), strings.Split(os.Getenv("WANT_MISSING"), ","))
		return
	}
	for drop, missing := range map[string]string{
		"CAP_BPF,CAP_PERFMON,CAP_SYS_ADMIN": "CAP_BPF,CAP_PERFMON",
		"CAP_PERFMON,CAP_SYS_ADMIN":         "CAP_PERFMON",
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCaptureNeedsCapabilities$", "-test.v")
		cmd.Env = append(os.Environ(), env+"="+drop, "WANT_MISSING="+missing)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("child without %s: %v\n%s", drop, err, out)
		} else if !strings.Contains(string(out), "--- PASS: TestCaptureNeedsCapabilities") {
			t.Errorf("child without %s did not run the test:\n%s", drop, out)
		}
	}
}

func captureWithoutCaps(t *testing.T, drop, wantMissing []string) {
	m := captureTestMap(t, "nocaps", ebpf.Hash, 4, 8, 4) // while root
	// Capabilities are per thread: stay on the one that drops them.
	runtime.LockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	for _, name := range drop {
		c := capNumbers[name]
		data[c/32].Effective &^= 1 << (c % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	for _, backend := range []Backend{BackendFentry, BackendSyscall, BackendAuto} {
		c, err := NewCapture(CaptureOptions{Backend: backend, Maps: []*Map{m}, RingSize: 4096})
		if err == nil {
			c.Close()
			t.Errorf("%s without %s: capture attached", backend, drop)
			continue
		}
		checkRefusal(t, string(backend), drop, wantMissing, err)
	}
	// Without the capabilities cilium/ebpf's feature probes fail as well,
	// and which failure comes first depends on the order the maps are
	// created in: 6.12 sometimes reported the fentry backend's task
	// storage map as not supported. That is the same refusal.
	probe := fmt.Errorf("map batch_marks: map create: %w", ebpf.ErrNotSupported)
	checkRefusal(t, "feature probe", drop, wantMissing, captureRefusal(BackendFentry, probe))
}

// checkRefusal fails t unless err, what the capture's backend returned
// without the capabilities drop, is a PermissionError that names those
// of the capture's it lacks.
func checkRefusal(t *testing.T, backend string, drop, wantMissing []string, err error) {
	t.Helper()
	var pe *PermissionError
	if !errors.Is(err, ErrPermission) || !errors.Is(err, unix.EPERM) || errors.Is(err, ErrFentryRefused) ||
		!errors.As(err, &pe) || !slices.Equal(pe.Caps, captureCaps) || !slices.Equal(pe.Missing, wantMissing) {
		t.Errorf("%s without %s: %v (%#v); want a PermissionError missing %s", backend, drop, err, pe, wantMissing)
	}
	if strings.Contains(err.Error(), "MEMLOCK") {
		t.Errorf("%s without %s: %v blames MEMLOCK for missing capabilities", backend, drop, err)
	}
	t.Logf("%s: %v", backend, err)
}

// TestCaptureRecordLayout checks the Go side's sample offsets and size
// bound against the types bpf2go generated from bpf/capture.h for both
// objects.
func TestCaptureRecordLayout(t *testing.T) {
	for _, typ := range []reflect.Type{reflect.TypeFor[captureSyscallChange](), reflect.TypeFor[captureFentryChange]()} {
		if typ.Size() != recordHeaderLen {
			t.Errorf("%s: %d bytes, want %d", typ, typ.Size(), recordHeaderLen)
		}
		for name, off := range map[string]uintptr{
			"MapId": recordMapID, "Op": recordOp, "KeySize": recordKeySize, "ValueSize": recordValueSize, "Count": recordCount,
		} {
			if f, ok := typ.FieldByName(name); !ok || f.Offset != off {
				t.Errorf("%s.%s: at %d (found %v), want %d", typ, name, f.Offset, ok, off)
			}
		}
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[captureSyscallRecord](), reflect.TypeFor[captureFentryRecord]()} {
		if typ.Size() != recordMaxLen {
			t.Errorf("%s: %d bytes, want %d", typ, typ.Size(), recordMaxLen)
		}
	}
}

// record returns a sample header followed by payload bytes 0, 1, 2...
func record(mapID uint32, op ops.Op, keySize uint16, valueSize, count uint32, payload int) []byte {
	b := binary.NativeEndian.AppendUint32(nil, mapID)
	b = append(b, byte(op), 0)
	b = binary.NativeEndian.AppendUint16(b, keySize)
	b = binary.NativeEndian.AppendUint32(b, valueSize)
	b = binary.NativeEndian.AppendUint32(b, count)
	for i := range payload {
		b = append(b, byte(i))
	}
	return b
}

// sampleChanges returns every change of a parsed sample.
func sampleChanges(s *sample) []Change {
	var cs []Change
	for len(s.keys) > 0 {
		var ch Change
		s.next(&ch)
		cs = append(cs, ch)
	}
	return cs
}

func TestCaptureParseRecord(t *testing.T) {
	var s sample
	b := record(42, ops.Update, 3, 2, 3, 15)
	if err := parseRecord(b, &s); err != nil {
		t.Fatal(err)
	}
	got := sampleChanges(&s)
	checkChanges(t, got, []Change{
		{MapID: 42, Op: ops.Update, Key: []byte{0, 1, 2}, Value: []byte{9, 10}},
		{MapID: 42, Op: ops.Update, Key: []byte{3, 4, 5}, Value: []byte{11, 12}},
		{MapID: 42, Op: ops.Update, Key: []byte{6, 7, 8}, Value: []byte{13, 14}},
	})
	for i, ch := range got {
		if unsafe.SliceData(ch.Key) != &b[recordHeaderLen+3*i] || cap(ch.Key) != 3 || unsafe.SliceData(ch.Value) != &b[recordHeaderLen+9+2*i] || cap(ch.Value) != 2 {
			t.Errorf("change %d does not alias the sample, or its capacity reaches into the next bytes", i)
		}
	}
	if err := parseRecord(record(42, ops.Delete, 3, 0, 2, 6), &s); err != nil {
		t.Fatal(err)
	}
	checkChanges(t, sampleChanges(&s), []Change{
		{MapID: 42, Op: ops.Delete, Key: []byte{0, 1, 2}},
		{MapID: 42, Op: ops.Delete, Key: []byte{3, 4, 5}},
	})
	for name, tc := range map[string]struct {
		b    []byte
		want string
	}{
		"empty":               {nil, "shorter than its 16-byte header"},
		"short header":        {record(1, ops.Update, 4, 8, 1, 12)[:recordHeaderLen-1], "shorter than its 16-byte header"},
		"unknown op":          {record(1, 4, 4, 0, 1, 4), "unknown op 4"},
		"touch with a value":  {record(1, opTouch, 4, 8, 1, 12), "op(3) with a 8-byte value"},
		"no key":              {record(1, ops.Delete, 0, 0, 1, 0), "key 0 B, value 0 B out of range"},
		"key too big":         {record(1, ops.Delete, MaxKeySize+1, 0, 1, MaxKeySize+1), "key 513 B, value 0 B out of range"},
		"value too big":       {record(1, ops.Update, 4, MaxValueSize+1, 1, 4+MaxValueSize+1), "key 4 B, value 16384 B out of range"},
		"delete with a value": {record(1, ops.Delete, 4, 8, 1, 12), "delete with a 8-byte value"},
		"no changes":          {record(1, ops.Update, 4, 8, 0, 0), "no changes"},
		"truncated":           {record(1, ops.Update, 4, 8, 2, 23), "capture sample of 39 bytes: header says 2 changes of 12 bytes, 40 in all"},
		"trailing bytes":      {record(1, ops.Update, 4, 8, 2, 25), "header says 2 changes"},
		"one change short":    {record(1, ops.Update, 4, 8, 3, 24), "header says 3 changes"},
		"huge value size":     {record(1, ops.Update, 4, 1<<31, 1, 12), "out of range"},
		"huge count":          {record(1, ops.Update, 4, 8, 1<<32-1, 12), "header says 4294967295 changes"},
	} {
		err := parseRecord(tc.b, &s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, tc.want)
		}
		if len(s.keys) != 0 {
			t.Errorf("%s: rejected sample left changes to read", name)
		}
	}
}

// FuzzCaptureParseRecord checks that any sample parseRecord accepts splits
// into exactly its changes, each within its own bytes.
func FuzzCaptureParseRecord(f *testing.F) {
	f.Add(record(42, ops.Update, 3, 2, 3, 15))
	f.Add(record(42, ops.Delete, 3, 0, 2, 6))
	f.Add(record(1, ops.Update, 4, 8, 2, 23))
	f.Fuzz(func(t *testing.T, b []byte) {
		var s sample
		if parseRecord(b, &s) != nil {
			return
		}
		n := int(binary.NativeEndian.Uint32(b[recordCount:]))
		off := recordHeaderLen
		var keys, values []byte
		for i, ch := range sampleChanges(&s) {
			if len(ch.Key) != s.keySize || cap(ch.Key) != s.keySize || (ch.Op == ops.Update) != (ch.Value != nil) ||
				len(ch.Value) != cap(ch.Value) {
				t.Fatalf("change %d: key %d B (cap %d), value %d B (cap %d, nil %v), op %d",
					i, len(ch.Key), cap(ch.Key), len(ch.Value), cap(ch.Value), ch.Value == nil, ch.Op)
			}
			keys, values = append(keys, ch.Key...), append(values, ch.Value...)
			n--
		}
		off += len(keys)
		if n != 0 || string(keys) != string(b[recordHeaderLen:off]) || string(values) != string(b[off:]) {
			t.Fatalf("changes do not cover the sample: %d left, %d key and %d value bytes of %d", n, len(keys), len(values), len(b))
		}
	})
}

// fill has the writer process make n updates of m and waits for it.
func fill(t *testing.T, m *Map, n int) {
	t.Helper()
	var s writeScript
	var keys, vals [][]byte
	for i := range n {
		keys, vals = append(keys, key(m, i)), append(vals, value(m, i, 1))
	}
	s.batchUpdate(m, keys, vals, n, 0)
	s.run(t, m)
}

func TestCaptureReadAllocs(t *testing.T) {
	const runs = 500
	// 16-byte keys and 64-byte values: the reads cross samples.
	m := captureTestMap(t, "allocs", ebpf.Hash, 16, 64, 2*runs)
	c := startCapture(t, CaptureOptions{Backend: BackendSyscall, Maps: []*Map{m}})
	fill(t, m, 2*runs)
	c.SetDeadline(time.Now())
	var ch Change
	var failed error
	allocs := testing.AllocsPerRun(runs, func() {
		if err := c.Read(&ch); err != nil && failed == nil {
			failed = err
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("Read allocates %.1f times per change", allocs)
	}
}

// BenchmarkCaptureRead measures Read per change: a writer process refills
// the ring between timed stretches with 4096-element batch updates (4-byte
// keys, 8-byte values).
func BenchmarkCaptureRead(b *testing.B) {
	const batch = 4096
	m := captureTestMap(b, "bench", ebpf.Hash, 4, 8, batch)
	c := startCapture(b, CaptureOptions{Backend: BackendSyscall, Maps: []*Map{m}})

	ackR, ackW, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	defer ackR.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCaptureWriterProcess$")
	cmd.Env = append(os.Environ(), envCaptureWriter+"=feed", fmt.Sprint(envCaptureScript, "=", m.ID))
	cmd.ExtraFiles = []*os.File{ackW}
	cmd.Stderr = os.Stderr
	req, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	ackW.Close()
	defer func() {
		req.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("writer process: %v", err)
		}
	}()
	ack := make([]byte, 1)
	// Records queued without a wake-up are only found by polling.
	c.SetDeadline(time.Now())

	var ch Change
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; {
		if c.Buffered() == 0 {
			b.StopTimer()
			if _, err := fmt.Fprintln(req, batch); err != nil {
				b.Fatal(err)
			}
			if _, err := ackR.Read(ack); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		if err := c.Read(&ch); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
