package loader

import (
	"encoding/binary"
	"errors"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/netns-test/datapath"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs")
	}
}

// deltas encodes one delta vector of packets and bytes per key, and the
// keys.
func deltaBatch(keys []uint32, packets, bytes uint64) (k, d []byte) {
	for _, key := range keys {
		k = binary.NativeEndian.AppendUint32(k, key)
		d = binary.NativeEndian.AppendUint64(d, packets)
		d = binary.NativeEndian.AppendUint64(d, bytes)
	}
	return k, d
}

// The datapath increments four clients in place, with atomic adds through
// the lookup pointer, while the adder adds batches of deltas to them and
// to a fifth it creates: every count is exact, none of the datapath's
// increments is lost to an add.
func TestAdderConcurrentIncrements(t *testing.T) {
	dp, a := datapathAdder(t, func(dp *datapath.Node) *ebpf.Map { return dp.Counters })
	const (
		rounds, repeat = 100, 5000 // the datapath: rounds × repeat packets per client
		packetBytes    = 100
	)
	clients := []uint32{1, 2, 3, 4, 5}
	keys, deltas := deltaBatch(clients, 1, 7)
	adds := addWhile(t, a, keys, deltas, func() error {
		for range rounds {
			if err := dp.Count(1, 4, packetBytes, repeat); err != nil {
				return err
			}
		}
		return nil
	})
	for _, c := range clients {
		var got datapath.Counter
		if err := dp.Counters.Lookup(c, &got); err != nil {
			t.Fatalf("client %d: %v", c, err)
		}
		want := datapath.Counter{Packets: adds, Bytes: 7 * adds}
		if c <= 4 {
			want.Packets += rounds * repeat
			want.Bytes += rounds * repeat * packetBytes
		}
		if got != want {
			t.Errorf("client %d: %+v, want %+v", c, got, want)
		}
	}
}

// On a per-CPU map the datapath counts on two CPUs, in its CPU's slot
// without atomics, while the adder adds into the slot of the CPU it runs
// on: the sum over the CPUs is exact.
func TestAdderPerCPU(t *testing.T) {
	needRoot(t)
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	dp, err := datapath.New()
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	a, err := newAdder(dp.CountersPerCPU)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	const rounds, repeat = 50, 5000
	onCPUs := min(2, runtime.NumCPU())
	keys, deltas := deltaBatch([]uint32{1}, 3, 300)
	adds := addWhile(t, a, keys, deltas, func() error {
		var wg sync.WaitGroup
		errs := make([]error, onCPUs)
		for cpu := range onCPUs {
			wg.Go(func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				var set unix.CPUSet
				set.Set(cpu)
				if errs[cpu] = unix.SchedSetaffinity(0, &set); errs[cpu] != nil {
					return
				}
				for range rounds {
					if errs[cpu] = dp.CountPerCPU(1, 1, 10, repeat); errs[cpu] != nil {
						return
					}
				}
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	})
	per := make([]datapath.Counter, cpus)
	if err := dp.CountersPerCPU.Lookup(uint32(1), per); err != nil {
		t.Fatal(err)
	}
	var sum datapath.Counter
	used := 0
	for _, c := range per {
		sum.Packets += c.Packets
		sum.Bytes += c.Bytes
		if c.Packets != 0 {
			used++
		}
	}
	want := datapath.Counter{Packets: uint64(onCPUs*rounds*repeat) + 3*adds, Bytes: uint64(onCPUs*rounds*repeat*10) + 300*adds}
	if sum != want {
		t.Errorf("sum over %d CPUs %+v, want %+v (per CPU %+v)", cpus, sum, want, per)
	}
	if onCPUs > 1 && used < 2 {
		t.Errorf("counted on %d CPUs, want 2: %+v", used, per)
	}
}

// A datapath in process context (here BPF_PROG_TEST_RUN's) that counts
// in its CPU's slot without atomics, on the CPU the adder runs on, loses
// none of the adds on a kernel that does not preempt BPF programs there:
// the program runs whole between two of the adder's runs, and each add
// is one instruction. On a kernel that does, the datapath can be
// preempted between its read and its write, and nothing the adder does
// in its slot or another's can keep that write from overwriting the add:
// then the adds are counted at risk (AddsAtRisk), which the daemon
// reports, and the loss is what the test measures.
func TestAdderPerCPUProcessContext(t *testing.T) {
	dp, a := datapathAdder(t, func(dp *datapath.Node) *ebpf.Map { return dp.CountersPerCPU })
	hash, err := newAdder(dp.Counters)
	if err != nil {
		t.Fatal(err)
	}
	defer hash.Close()
	if why := hash.AtRisk(); why != "" {
		t.Errorf("adds into a hash map at risk: %s", why)
	}
	preemptible, why := ProcessPreemptible()
	if (a.AtRisk() != "") != preemptible {
		t.Fatalf("per-CPU adds at risk %q, kernel preemptible %v (%s)", a.AtRisk(), preemptible, why)
	}
	const rounds, repeat = 200, 2000
	keys, deltas := deltaBatch([]uint32{1}, 3, 300)
	var adds uint64
	err = onCPU(0, func() error {
		adds = addWhile(t, a, keys, deltas, func() error {
			return onCPU(0, func() error {
				for range rounds {
					if err := dp.CountPerCPU(1, 1, 10, repeat); err != nil {
						return err
					}
				}
				return nil
			})
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	per := make([]datapath.Counter, cpus)
	if err := dp.CountersPerCPU.Lookup(uint32(1), per); err != nil {
		t.Fatal(err)
	}
	want := datapath.Counter{Packets: rounds*repeat + 3*adds, Bytes: rounds*repeat*10 + 300*adds}
	t.Logf("%s; %d adds on CPU 0 while the datapath counted there: slot %+v, want %+v", why, adds, per[0], want)
	if a.AtRisk() != "" {
		if got := a.AddsAtRisk.Load(); got != adds {
			t.Errorf("%d adds counted at risk, want all %d", got, adds)
		}
		return // what is lost is the kernel's to decide
	}
	if per[0] != want || a.AddsAtRisk.Load() != 0 {
		t.Errorf("CPU 0's slot %+v, want %+v; %d adds counted at risk", per[0], want, a.AddsAtRisk.Load())
	}
}

// onCPU runs fn on its goroutine's OS thread bound to cpu, then unbinds it.
func onCPU(cpu int, fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var was, set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		return err
	}
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return err
	}
	defer unix.SchedSetaffinity(0, &was)
	return fn()
}

// datapathAdder loads the test datapath and an adder for the map of it
// that pick returns; it skips the test without root.
func datapathAdder(t *testing.T, pick func(*datapath.Node) *ebpf.Map) (*datapath.Node, *Adder) {
	t.Helper()
	needRoot(t)
	dp, err := datapath.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	a, err := newAdder(pick(dp))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return dp, a
}

// addWhile adds deltas to keys with a, batch after batch, for as long as
// datapath runs, and returns how many batches it added. It fails t unless
// several batches were added while the datapath ran.
func addWhile(t *testing.T, a *Adder, keys, deltas []byte, datapath func() error) uint64 {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- datapath() }()
	var adds uint64
	for {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if adds < 10 {
				t.Fatalf("only %d batches added while the datapath ran", adds)
			}
			return adds
		default:
		}
		if failed, err := a.Add(keys, deltas); err != nil || failed != 0 {
			t.Fatalf("add: %v, %d entries failed", err, failed)
		}
		adds++
	}
}

// A value that is not a vector of 64-bit counters is refused.
func TestAdderRefusesValue(t *testing.T) {
	needRoot(t)
	m := testMap(t, ebpf.Hash, 4, 12, 16)
	if _, err := NewAdder(m); !errors.Is(err, ErrCounterValue) {
		t.Errorf("a 12-byte value: %v, want ErrCounterValue", err)
	}
}
