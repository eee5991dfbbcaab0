package loader

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// progWrite is one map write a test BPF program makes.
type progWrite struct {
	m      *Map
	delete bool
	key    []byte
	value  []byte // nil for a delete
	flags  int32  // BPF_ANY, BPF_NOEXIST... for an update
}

// stackBytes stores b at fp+off, one byte at a time, so the verifier sees
// the whole key or value initialised whatever its size.
func stackBytes(off int16, b []byte) asm.Instructions {
	var insns asm.Instructions
	for i, c := range b {
		insns = append(insns, asm.StoreImm(asm.RFP, off+int16(i), int64(c), asm.Byte))
	}
	return insns
}

// writerProgram returns a tc program that makes writes in order with the
// map helpers and returns TC_ACT_OK; each key and value has its own stack
// slot. tc rather than XDP: BPF_PROG_TEST_RUN of an XDP program with a
// repeat count swaps the XDP dispatcher around the runs, milliseconds per
// call, and BenchmarkCaptureCost makes many short calls.
func writerProgram(t testing.TB, writes []progWrite) *ebpf.Program {
	t.Helper()
	var insns asm.Instructions
	off := int16(0)
	slot := func(b []byte) int16 {
		off -= int16((len(b) + 7) &^ 7)
		if off < -512 {
			t.Fatalf("writes need more than 512 bytes of stack")
		}
		insns = append(insns, stackBytes(off, b)...)
		return off
	}
	for _, w := range writes {
		k := slot(w.key)
		insns = append(insns, asm.LoadMapPtr(asm.R1, w.m.m.FD()), asm.Mov.Reg(asm.R2, asm.RFP), asm.Add.Imm(asm.R2, int32(k)))
		if w.delete {
			insns = append(insns, asm.FnMapDeleteElem.Call())
			continue
		}
		v := slot(w.value)
		insns = append(insns, asm.Mov.Reg(asm.R3, asm.RFP), asm.Add.Imm(asm.R3, int32(v)),
			asm.Mov.Imm(asm.R4, w.flags), asm.FnMapUpdateElem.Call())
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return()) // TC_ACT_OK
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: insns})
	if err != nil {
		t.Fatalf("load writer program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// TestCaptureProgramWriteBytes writes watched hash and LRU hash maps (odd
// key and value sizes) and an unwatched map from a BPF program run with
// BPF_PROG_TEST_RUN: updates, an overwrite, deletes, and writes the kernel
// refuses. A backend that sees program writes (fentry; the VM harness runs
// it) must report exactly the successful ones with their bytes; the syscall
// backend must report nothing.
func TestCaptureProgramWriteBytes(t *testing.T) {
	const noExist = 1 // BPF_NOEXIST
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			h := captureTestMap(t, "proghash", ebpf.Hash, 6, 13, 8)
			l := captureTestMap(t, "proglru", ebpf.LRUHash, 5, 20, uint32(256*ebpf.MustPossibleCPU()))
			u := captureTestMap(t, "progother", ebpf.Hash, 6, 13, 8)
			writes := []progWrite{
				{m: h, key: key(h, 1), value: value(h, 1, 1)},
				{m: h, key: key(h, 2), value: value(h, 2, 1)},
				{m: u, key: key(u, 1), value: value(u, 1, 1)},
				{m: l, key: key(l, 1), value: value(l, 1, 1)},
				{m: h, key: key(h, 1), value: value(h, 1, 2)},
				{m: h, key: key(h, 1), value: value(h, 1, 3), flags: noExist}, // refused: exists
				{m: h, delete: true, key: key(h, 2)},
				{m: h, delete: true, key: key(h, 2)}, // refused: gone
				{m: l, delete: true, key: key(l, 1)},
				{m: l, key: key(l, 2), value: value(l, 2, 1)},
				{m: u, delete: true, key: key(u, 1)},
			}
			prog := writerProgram(t, writes)
			c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{h, l}})
			if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
				t.Fatal(err)
			}
			var want []Change
			if c.SeesProgramWrites() {
				want = []Change{
					upd(h, key(h, 1), value(h, 1, 1)),
					upd(h, key(h, 2), value(h, 2, 1)),
					upd(l, key(l, 1), value(l, 1, 1)),
					upd(h, key(h, 1), value(h, 1, 2)),
					del(h, key(h, 2)),
					del(l, key(l, 1)),
					upd(l, key(l, 2), value(l, 2, 1)),
				}
			}
			checkChanges(t, drain(t, c), want)
			// The map holds what the program left, so the expectations
			// above are the kernel's, not only the test's.
			var got []byte
			if err := h.m.Lookup(key(h, 1), &got); err != nil || string(got) != string(value(h, 1, 2)) {
				t.Errorf("hash key 1 holds %x (%v), want %x", got, err, value(h, 1, 2))
			}
		})
	}
}

// TestCaptureLRUEvictionNotReported fills a small LRU hash map far beyond
// its capacity from another process: every update is reported, and the
// kernel's evictions are not (they are no delete; see "LRU evictions" in
// docs/ARCHITECTURE.md).
func TestCaptureLRUEvictionNotReported(t *testing.T) {
	const maxEntries, puts = 64, 400
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			m := captureTestMap(t, "lrufull", ebpf.LRUHash, 4, 8, maxEntries)
			c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
			var s writeScript
			for i := range puts {
				s.put(m, key(m, i), value(m, i, 1))
			}
			want := s.run(t, m)
			checkChanges(t, drain(t, c), want)
			held := 0
			var k, v []byte
			for it := m.m.Iterate(); it.Next(&k, &v); {
				held++
			}
			if held > maxEntries {
				t.Errorf("LRU map holds %d entries, more than its %d", held, maxEntries)
			}
			if held == puts {
				t.Errorf("LRU map holds all %d entries: nothing was evicted, the test proves nothing", held)
			}
			t.Logf("%d updates, %d entries left after evictions, no deletes reported", puts, held)
		})
	}
}

// TestCaptureFentryTargets checks, on the VM's Debian kernels (6.1 and
// 6.12, amd64 and arm64), that the fentry backend attached every one of its
// programs: the optional fexit targets are dropped without a word on a
// kernel that lacks them, so a target renamed by a new kernel would
// otherwise go unnoticed.
func TestCaptureFentryTargets(t *testing.T) {
	if os.Getenv(envVM) != "1" {
		t.Skip("only on the VM's Debian kernels (make vmtest); this host refuses fentry")
	}
	spec, err := loadCaptureFentry()
	if err != nil {
		t.Fatal(err)
	}
	m := captureTestMap(t, "targets", ebpf.Hash, 4, 4, 1)
	maps := []*Map{m}
	c := startCapture(t, CaptureOptions{Backend: BackendFentry, Maps: maps, RingSize: 4096})
	dropUnwatchedTypes(spec, maps)
	if len(c.links) != len(spec.Programs) {
		var targets []string
		for _, p := range spec.Programs {
			targets = append(targets, p.AttachTo)
		}
		t.Errorf("attached %d of the %d fexit programs a hash map needs; targets: %v", len(c.links), len(spec.Programs), targets)
	}
}
