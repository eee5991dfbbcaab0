package loader

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
)

// ErrCounterValue is a map whose value is not a vector of 64-bit
// counters: merge=sum needs a value size that is a multiple of 8, of at
// most [MaxCounterWords] words.
var ErrCounterValue = errors.New("value is not a vector of 64-bit counters")

// Limits of the counter program's scratch space (bpf/counter.c).
const (
	MaxCounterKey   = 512
	MaxCounterWords = 64
)

// Adder adds delta vectors to the counters of one merge=sum map in the
// kernel with atomic adds, so that the datapath's increments made at the
// same moment are never lost, as a read-modify-write from user space
// would lose them. It runs a BPF_PROG_TYPE_SYSCALL program (bpf/counter.c)
// loaded for this map alone, with BPF_PROG_RUN. For a per-CPU map the
// deltas go into the slot of the CPU the program runs on, which that
// CPU's datapath cannot be halfway through writing when it runs in
// softirq (XDP, tc), nor in process context unless the kernel preempts
// it there (see [ProcessPreemptible]): then a datapath that updates its
// slot without an atomic instruction can overwrite an add, as it would
// overwrite its own increments made by another task on that CPU, and
// the adds made are counted in AddsAtRisk. An Adder is safe for
// concurrent use: the program runs one batch at a time.
type Adder struct {
	mu        sync.Mutex
	prog      *ebpf.Program
	keySize   int
	valueSize int
	// AddsAtRisk counts the entries added to a per-CPU map on a kernel
	// that preempts BPF programs in process context (see [Adder.AtRisk]).
	AddsAtRisk atomic.Uint64
	// atRisk is why the adds into a per-CPU map may be lost; "" if
	// they may not, or the map is not per-CPU.
	atRisk string
}

// NewAdder loads the counter program for m. A value that is not a vector
// of 64-bit counters is [ErrCounterValue]. The caller closes the Adder.
func NewAdder(m *Map) (*Adder, error) {
	a, err := newAdder(m.m)
	if err != nil {
		return nil, fmt.Errorf("map %s: %w", m.Name, err)
	}
	return a, nil
}

func newAdder(m *ebpf.Map) (*Adder, error) {
	keySize, valueSize := int(m.KeySize()), int(m.ValueSize())
	if valueSize == 0 || valueSize%8 != 0 || valueSize/8 > MaxCounterWords {
		return nil, fmt.Errorf("%w: the value is %d bytes, not a multiple of 8 of at most %d", ErrCounterValue, valueSize, MaxCounterWords*8)
	}
	if keySize == 0 || keySize > MaxCounterKey {
		return nil, fmt.Errorf("%w: the key is %d bytes, more than the counter program's %d", ErrUnsupportedMap, keySize, MaxCounterKey)
	}
	spec, err := loadCounter()
	if err != nil {
		return nil, fmt.Errorf("load the counter program's spec: %w", err)
	}
	prog, target, other, otherTarget := "add_deltas", "target", "add_deltas_percpu", "target_percpu"
	if PerCPU(m.Type()) {
		prog, target, other, otherTarget = other, otherTarget, prog, target
	}
	delete(spec.Programs, other)
	delete(spec.Maps, otherTarget)
	ms := spec.Maps[target]
	ms.Type, ms.KeySize, ms.ValueSize, ms.MaxEntries, ms.Flags = m.Type(), m.KeySize(), m.ValueSize(), m.MaxEntries(), m.Flags()
	if err := spec.Variables["key_size"].Set(uint32(keySize)); err != nil {
		return nil, fmt.Errorf("set the counter program's key size: %w", err)
	}
	if err := spec.Variables["words"].Set(uint32(valueSize / 8)); err != nil {
		return nil, fmt.Errorf("set the counter program's words: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{target: m}})
	if err != nil {
		return nil, fmt.Errorf("load the counter program %s: %w", prog, err)
	}
	p := coll.DetachProgram(prog)
	coll.Close()
	a := &Adder{prog: p, keySize: keySize, valueSize: valueSize}
	if preemptible, why := ProcessPreemptible(); PerCPU(m.Type()) && preemptible {
		a.atRisk = why
	}
	return a, nil
}

// AtRisk returns why an add into this per-CPU map may be lost, "" if it
// may not: the kernel preempts BPF programs in process context, so a
// datapath program there that updates its CPU's slot without an atomic
// instruction can be preempted between its read and its write while the
// add runs on that CPU. The kernel offers no way around it: an add into
// another CPU's slot races that CPU's datapath at any time. A datapath
// that updates its slot with __sync_fetch_and_add, or runs in softirq
// (XDP, tc), loses nothing.
func (a *Adder) AtRisk() string { return a.atRisk }

// Add adds deltas to the values of keys: keys holds n keys back to back,
// deltas n vectors of the value's size, each word in the host's byte
// order. A key the map does not hold is created with its deltas. It
// returns how many entries could be neither found nor created (a full
// map); the others were added.
func (a *Adder) Add(keys, deltas []byte) (failed int, err error) {
	n := len(keys) / a.keySize
	if len(keys) != n*a.keySize || len(deltas) != n*a.valueSize {
		return 0, fmt.Errorf("add counters: %d key bytes and %d delta bytes are not whole entries of %d and %d", len(keys), len(deltas), a.keySize, a.valueSize)
	}
	if n == 0 {
		return 0, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// The program reads keys and deltas from this memory while it runs:
	// pin it, so that the addresses stay valid whatever the runtime does.
	var pin runtime.Pinner
	pin.Pin(&keys[0])
	pin.Pin(&deltas[0])
	defer pin.Unpin()
	args := counterCounterArgs{Keys: uint64(uintptr(unsafe.Pointer(&keys[0]))), Deltas: uint64(uintptr(unsafe.Pointer(&deltas[0]))), Count: uint32(n)}
	ret, err := a.prog.Run(&ebpf.RunOptions{Context: args})
	if err != nil {
		return 0, fmt.Errorf("run the counter program: %w", err)
	}
	if a.atRisk != "" {
		a.AddsAtRisk.Add(uint64(n - int(ret)))
	}
	return int(ret), nil
}

// Close releases the program.
func (a *Adder) Close() error { return a.prog.Close() }
