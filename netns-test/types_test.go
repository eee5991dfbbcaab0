package netnstest

import (
	"context"
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// TestNewMapTypes runs three daemons on an LPM trie and a per-CPU hash,
// both under last-writer-wins. The trie is a CIDR blocklist: prefixes
// added and removed on any node reach every node, and a longest-prefix
// lookup of an address gives the same answer on each. The per-CPU hash is
// a set of counters: values written for every CPU from user space travel
// whole, and an increment a BPF program makes in place, in the slot of
// the CPU it runs on, is found by node1's scans and reaches the others.
func TestNewMapTypes(t *testing.T) {
	block := MapSpec{Name: "blocklist", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8, MaxEntries: 1024}
	counts := MapSpec{Name: "pcounts", Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 1024, Options: "scan=200ms"}
	c := startCluster(t, ClusterConfig{Nodes: 3, Maps: []MapSpec{block, counts}})
	want := map[string]Contents{block.Name: {}, counts.Name: {}}
	converge := func(what string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		if _, err := c.WaitConverged(ctx, want, 50*time.Millisecond, nil); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	t.Run("lpm blocklist", func(t *testing.T) {
		// prefix is a trie key: the prefix length, then the IPv4 address.
		prefix := func(plen uint32, a ...byte) []byte { return append(binary.NativeEndian.AppendUint32(nil, plen), a...) }
		val := func(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }
		put := func(node int, k []byte, v uint64, canonical []byte) {
			t.Helper()
			if err := c.Write(t.Context(), node, []Change{{Map: block.Name, Key: k, Value: val(v)}}); err != nil {
				t.Fatal(err)
			}
			want[block.Name][string(canonical)] = string(val(v))
		}
		put(0, prefix(8, 10, 0, 0, 0), 8, prefix(8, 10, 0, 0, 0))
		put(0, prefix(16, 10, 1, 0, 0), 16, prefix(16, 10, 1, 0, 0))
		put(1, prefix(24, 10, 1, 2, 0), 24, prefix(24, 10, 1, 2, 0))
		// Written as 172.16.9.9/12: the trie's entry for 172.16.0.0/12,
		// which every node holds under that one key.
		put(1, prefix(12, 172, 16, 9, 9), 12, prefix(12, 172, 16, 0, 0))
		put(2, prefix(32, 192, 168, 1, 7), 32, prefix(32, 192, 168, 1, 7))
		converge("prefixes added on three nodes")

		// Removed on another node than the one that added it; a longer
		// prefix added meanwhile.
		if err := c.Write(t.Context(), 2, []Change{{Map: block.Name, Delete: true, Key: prefix(16, 10, 1, 0, 0)}}); err != nil {
			t.Fatal(err)
		}
		delete(want[block.Name], string(prefix(16, 10, 1, 0, 0)))
		put(0, prefix(25, 10, 1, 2, 128), 25, prefix(25, 10, 1, 2, 128))
		converge("a prefix removed and one added")

		for _, probe := range []struct {
			addr [4]byte
			want uint64 // the prefix length matched; 0: none
		}{
			{[4]byte{10, 1, 2, 200}, 25},
			{[4]byte{10, 1, 2, 3}, 24},
			{[4]byte{10, 1, 9, 9}, 8}, // the /16 is gone
			{[4]byte{172, 31, 0, 1}, 12},
			{[4]byte{172, 32, 0, 1}, 0},
			{[4]byte{192, 168, 1, 7}, 32},
			{[4]byte{192, 168, 1, 8}, 0},
		} {
			for i := range c.Topology.Nodes {
				got := make([]byte, 8)
				err := c.open[i][0].Lookup(prefix(32, probe.addr[:]...), got)
				switch {
				case probe.want == 0 && err == nil:
					t.Errorf("node%d: %v matches /%d, want no prefix", i+1, probe.addr, binary.NativeEndian.Uint64(got))
				case probe.want != 0 && (err != nil || binary.NativeEndian.Uint64(got) != probe.want):
					t.Errorf("node%d: %v matches %x (%v), want the /%d", i+1, probe.addr, got, err, probe.want)
				}
			}
		}
	})

	t.Run("per-CPU counters", func(t *testing.T) {
		cpus := ebpf.MustPossibleCPU()
		whole := func(slots []uint64) string {
			var b []byte
			for _, s := range slots {
				b = binary.NativeEndian.AppendUint64(b, s)
			}
			return string(b)
		}
		// Every CPU's slot from user space, on node1 and node2.
		for node, keys := range map[int][]uint32{0: {1, 2, 3, 7}, 1: {20, 21}} {
			for _, k := range keys {
				slots := make([]uint64, cpus)
				for cpu := range slots {
					slots[cpu] = uint64(k)*100 + uint64(cpu)
				}
				if err := c.open[node][1].Update(k, slots, ebpf.UpdateAny); err != nil {
					t.Fatal(err)
				}
				want[counts.Name][string(binary.NativeEndian.AppendUint32(nil, k))] = whole(slots)
			}
		}
		converge("per-CPU values written from user space")

		// node1's datapath adds 1000 to key 7 in place, on the last CPU.
		cpu := cpus - 1
		runOnCPU(t, cpu, addInPlace(t, c.open[0][1], 7, 1000))
		slots := make([]uint64, cpus)
		for i := range slots {
			slots[i] = 700 + uint64(i)
		}
		slots[cpu] += 1000
		want[counts.Name][string(binary.NativeEndian.AppendUint32(nil, 7))] = whole(slots)
		converge("an in-place increment on one CPU")
	})
}

// addInPlace returns an XDP program that adds n to the value of key k of
// the per-CPU map m through the pointer bpf_map_lookup_elem returns: the
// slot of the CPU it runs on, and nothing a capture sees.
func addInPlace(t *testing.T, m *ebpf.Map, k uint32, n int32) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, int64(k), asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.Add.Imm(asm.R1, n),
			asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("out"), // XDP_PASS
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// runOnCPU runs prog once with BPF_PROG_TEST_RUN from a thread bound to
// cpu, so that it runs there.
func runOnCPU(t *testing.T, cpu int, prog *ebpf.Program) {
	t.Helper()
	done := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			done <- err
			return
		}
		_, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)})
		done <- err
	}()
	if err := <-done; err != nil {
		t.Fatalf("run on CPU %d: %v", cpu, err)
	}
}
