package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// TestPerCPUMaps: a per-CPU map's values are read and written whole, one
// slot per possible CPU, each the value size rounded up to 8 bytes, by
// batch and by element.
func TestPerCPUMaps(t *testing.T) {
	cpus := uint32(ebpf.MustPossibleCPU())
	for _, typ := range []ebpf.MapType{ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.PerCPUArray} {
		for _, perElement := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/per-element=%v", typ, perElement), func(t *testing.T) {
				m := testMap(t, typ, 4, 12, 256*cpus) // LRU maps evict early: room
				m.noBatch.Store(perElement)
				if m.CPUs != cpus || m.ValueLen != cpus*16 {
					t.Fatalf("CPUs %d, ValueLen %d; want %d and %d", m.CPUs, m.ValueLen, cpus, cpus*16)
				}
				want := map[string]string{}
				if ArrayType(typ) { // every index holds a value, zero until written
					for i := range int(m.MaxEntries) {
						k, _ := entry(m, i, 0)
						want[string(k)] = string(make([]byte, m.ValueLen))
					}
				}
				keys, values := pack(m, 0, 100, 1, nil, nil, want)
				// The kernel copies whole 8-byte words per slot: the padding
				// after each 12-byte value travels too, so set it.
				if err := m.UpdateBatch(keys, values); err != nil {
					t.Fatal(err)
				}
				checkContents(t, m, want)
				checkDump(t, m, 64, want)
				got := make([]byte, m.ValueLen)
				if found, err := m.Lookup(keys[:4], got); err != nil || !found || !bytes.Equal(got, values[:m.ValueLen]) {
					t.Fatalf("Lookup = %v, %v, %x; want %x", found, err, got, values[:m.ValueLen])
				}
				if ArrayType(typ) {
					if _, err := m.DeleteBatch(keys[:4]); err == nil {
						t.Error("a per-CPU array deleted an entry")
					}
					return
				}
				if missing, err := m.DeleteBatch(keys[:40]); err != nil || missing != 0 {
					t.Fatalf("DeleteBatch: %d missing, %v", missing, err)
				}
				for i := range 10 {
					delete(want, string(keys[i*4:(i+1)*4]))
				}
				checkContents(t, m, want)
			})
		}
	}
}

// trieKey is an IPv4 LPM trie key: prefix length (machine byte order), then
// the address.
func trieKey(plen uint32, a, b, c, d byte) []byte {
	return append(binary.NativeEndian.AppendUint32(nil, plen), a, b, c, d)
}

func TestCanonical(t *testing.T) {
	m := testMap(t, ebpf.LPMTrie, 8, 8, 16)
	for _, tc := range []struct{ in, want []byte }{
		{trieKey(0, 1, 2, 3, 4), trieKey(0, 0, 0, 0, 0)},
		{trieKey(8, 10, 2, 3, 4), trieKey(8, 10, 0, 0, 0)},
		{trieKey(12, 10, 0xff, 3, 4), trieKey(12, 10, 0xf0, 0, 0)},
		{trieKey(31, 1, 2, 3, 0xff), trieKey(31, 1, 2, 3, 0xfe)},
		{trieKey(32, 1, 2, 3, 0xff), trieKey(32, 1, 2, 3, 0xff)},
		{trieKey(99, 1, 2, 3, 4), trieKey(99, 1, 2, 3, 4)}, // the kernel refuses it: left alone
	} {
		k := bytes.Clone(tc.in)
		m.Canonical(k)
		if !bytes.Equal(k, tc.want) {
			t.Errorf("Canonical(%x) = %x, want %x", tc.in, k, tc.want)
		}
	}
	// Two keys at once; other maps' keys are left alone.
	two := append(trieKey(8, 10, 1, 1, 1), trieKey(16, 10, 1, 1, 1)...)
	m.Canonical(two)
	if want := append(trieKey(8, 10, 0, 0, 0), trieKey(16, 10, 1, 0, 0)...); !bytes.Equal(two, want) {
		t.Errorf("Canonical of two keys = %x, want %x", two, want)
	}
	h := testMap(t, ebpf.Hash, 8, 8, 16)
	k := trieKey(8, 10, 1, 1, 1)
	h.Canonical(k)
	if !bytes.Equal(k, trieKey(8, 10, 1, 1, 1)) {
		t.Errorf("Canonical changed a hash map's key: %x", k)
	}
}

// TestLPMTrie: an LPM trie is written and deleted by batch (the kernel's
// generic batch commands) and by element, and dumped with canonical keys;
// a lookup of an address finds its longest prefix.
func TestLPMTrie(t *testing.T) {
	for _, perElement := range []bool{false, true} {
		t.Run(fmt.Sprintf("per-element=%v", perElement), func(t *testing.T) {
			m := testMap(t, ebpf.LPMTrie, 8, 8, 64)
			m.noBatch.Store(perElement)
			val := func(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }
			// 10.0.0.0/8 written as 10.9.9.9/8: the trie keeps those bytes.
			keys := append(trieKey(8, 10, 9, 9, 9), trieKey(16, 10, 1, 0, 0)...)
			keys = append(keys, trieKey(32, 10, 1, 2, 3)...)
			if err := m.UpdateBatch(keys, append(append(val(8), val(16)...), val(32)...)); err != nil {
				t.Fatal(err)
			}
			checkDump(t, m, 2, map[string]string{
				string(trieKey(8, 10, 0, 0, 0)):  string(val(8)),
				string(trieKey(16, 10, 1, 0, 0)): string(val(16)),
				string(trieKey(32, 10, 1, 2, 3)): string(val(32)),
			})
			// The kernel's lookup finds an address's longest prefix; Lookup
			// finds a prefix the trie holds, and only that.
			got := make([]byte, 8)
			for _, tc := range []struct {
				key   []byte
				held  bool
				value uint64 // the kernel's longest prefix match
			}{
				{trieKey(32, 10, 1, 2, 3), true, 32},
				{trieKey(32, 10, 1, 2, 4), false, 16},
				{trieKey(32, 10, 2, 0, 0), false, 8},
				{trieKey(16, 10, 1, 7, 7), true, 16}, // another spelling of the /16
				{trieKey(8, 10, 0, 0, 0), true, 8},   // the trie's first key
				{trieKey(24, 10, 1, 2, 0), false, 16},
			} {
				if err := m.m.Lookup(tc.key, got); err != nil || binary.NativeEndian.Uint64(got) != tc.value {
					t.Errorf("kernel lookup of %x = %x, %v; want /%d", tc.key, got, err, tc.value)
				}
				if found, err := m.Lookup(tc.key, got); err != nil || found != tc.held {
					t.Errorf("Lookup(%x) = %v, %v; want %v", tc.key, found, err, tc.held)
				}
			}
			if missing, err := m.DeleteBatch(append(trieKey(16, 10, 1, 0, 0), trieKey(24, 10, 1, 2, 0)...)); err != nil || missing != 1 {
				t.Fatalf("DeleteBatch: %d missing, %v; want 1 missing", missing, err)
			}
			if found, err := m.Lookup(trieKey(16, 10, 1, 0, 0), got); err != nil || found {
				t.Errorf("after its delete, Lookup of the /16 = %v, %v; want not found (the /8 holds its address)", found, err)
			}
			if err := m.m.Lookup(trieKey(32, 10, 1, 2, 4), got); err != nil || binary.NativeEndian.Uint64(got) != 8 {
				t.Errorf("after the /16's delete, 10.1.2.4 matches %x, %v; want the /8", got, err)
			}
		})
	}
}

// BenchmarkLPMTrie measures what a resync and a peer's changes cost on an
// LPM trie of 10,000 IPv4 prefixes: a dump of the whole trie, and applying
// it again, by the kernel's generic batch commands and one element per
// syscall.
func BenchmarkLPMTrie(b *testing.B) {
	const n = 10000
	m := testMap(b, ebpf.LPMTrie, 8, 8, n)
	keys, values := make([]byte, 0, n*8), make([]byte, 0, n*8)
	for i := range n {
		keys = append(keys, trieKey(24+uint32(i%9), 10, byte(i>>8), byte(i), 0)...)
		m.Canonical(keys[len(keys)-8:])
		values = binary.NativeEndian.AppendUint64(values, uint64(i))
	}
	if err := m.UpdateBatch(keys, values); err != nil {
		b.Fatal(err)
	}
	for _, perElement := range []bool{false, true} {
		name := "batch"
		if perElement {
			name = "element"
		}
		b.Run("dump/"+name, func(b *testing.B) {
			m.noBatch.Store(perElement)
			kb, vb := make([]byte, 256*8), make([]byte, 256*8)
			got := 0
			for b.Loop() {
				if err := m.Dump(kb, vb, func(k, _ []byte) error { got += len(k) / 8; return nil }); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(got)/b.Elapsed().Seconds(), "entries/s")
		})
		b.Run("apply/"+name, func(b *testing.B) {
			m.noBatch.Store(perElement)
			for b.Loop() {
				if err := m.UpdateBatch(keys, values); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}

// TestCapturePerCPUProgramWrites: a BPF program's update of a per-CPU map
// writes the slot of the CPU it runs on; the fentry backend reports its
// key and Read returns the whole value the map holds, every CPU's slot.
// The syscall backend does not see program writes at all.
func TestCapturePerCPUProgramWrites(t *testing.T) {
	for _, backend := range captureBackends(t) {
		for _, typ := range []ebpf.MapType{ebpf.PerCPUHash, ebpf.LRUCPUHash, ebpf.PerCPUArray} {
			t.Run(fmt.Sprintf("%s/%s", backend, typ), func(t *testing.T) {
				m := captureTestMap(t, "progpercpu", typ, 4, 8, uint32(256*ebpf.MustPossibleCPU()))
				prog := updateProgram(t, m, []int32{3}, 0x0102_0304)
				c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
				if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
					t.Fatal(err)
				}
				k := binary.NativeEndian.AppendUint32(nil, 3)
				whole := make([]byte, m.ValueLen)
				if found, err := m.Lookup(k, whole); err != nil || !found {
					t.Fatalf("lookup after the program ran: %v, %v", found, err)
				}
				slot := binary.NativeEndian.AppendUint64(nil, 0x0102_0304)
				if n := bytes.Count(whole, slot); n != 1 {
					t.Fatalf("the program wrote %d slots (%x), want 1", n, whole)
				}
				var want []Change
				if c.SeesProgramWrites() {
					want = append(want, upd(m, k, whole))
				}
				checkChanges(t, drain(t, c), want)
			})
		}
	}
}

// updateProgram returns an XDP program that sets the key of m made of the
// 4-byte words key (in the machine's byte order) to v (8 bytes) with
// bpf_map_update_elem.
func updateProgram(t *testing.T, m *Map, key []int32, v int32) *ebpf.Program {
	t.Helper()
	at := int16(-4 * len(key)) // the key's offset from the frame pointer
	val := (at - 8) &^ 7       // the value's, 8-byte aligned
	var insns asm.Instructions
	for i, w := range key {
		insns = append(insns, asm.StoreImm(asm.RFP, at+int16(4*i), int64(w), asm.Word))
	}
	insns = append(insns,
		asm.Mov.Imm(asm.R0, v),
		asm.StoreMem(asm.RFP, val, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, m.m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(at)),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, int32(val)),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, 2), // XDP_PASS
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// TestCaptureTrieProgramWrites: a BPF program's update of an LPM trie is
// reported by the fentry backend, its key canonical.
func TestCaptureTrieProgramWrites(t *testing.T) {
	for _, backend := range captureBackends(t) {
		t.Run(string(backend), func(t *testing.T) {
			m := captureTestMap(t, "progtrie", ebpf.LPMTrie, 8, 8, 16)
			addr := binary.NativeEndian.Uint32([]byte{10, 1, 2, 3})
			prog := updateProgram(t, m, []int32{24, int32(addr)}, 0x0102_0304)
			c := startCapture(t, CaptureOptions{Backend: backend, Maps: []*Map{m}})
			if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
				t.Fatal(err)
			}
			var want []Change
			if c.SeesProgramWrites() {
				want = append(want, upd(m, trieKey(24, 10, 1, 2, 0), binary.NativeEndian.AppendUint64(nil, 0x0102_0304)))
			}
			checkChanges(t, drain(t, c), want)
		})
	}
}

// Every fexit target a map type requires is one the fentry backend has a
// program for: a misspelt one would refuse the backend for that type.
func TestFentryTargetsOfTypes(t *testing.T) {
	spec, err := loadCaptureFentry()
	if err != nil {
		t.Fatal(err)
	}
	attached := map[string]bool{}
	for _, p := range spec.Programs {
		attached[p.AttachTo] = true
	}
	for typ, targets := range fentryRequiredFor {
		for _, target := range targets {
			if !attached[target] {
				t.Errorf("%s requires fexit %s, which no program of the fentry backend attaches to", typ, target)
			}
		}
	}
}

// The fentry backend attaches only the programs that see writes to a
// watched map's type (and the batch functions', which see every type's), so
// that writes to other maps run none; each of its targets is in
// fentryTargetTypes or is a batch function.
func TestFentryProgramsOfWatchedTypes(t *testing.T) {
	full, err := loadCaptureFentry()
	if err != nil {
		t.Fatal(err)
	}
	batchFunctions := []string{"generic_map_update_batch", "generic_map_delete_batch"}
	for _, p := range full.Programs {
		if _, ok := fentryTargetTypes[p.AttachTo]; !ok && !slices.Contains(batchFunctions, p.AttachTo) {
			t.Errorf("fexit %s is in no row of fentryTargetTypes: it would be attached for every map type", p.AttachTo)
		}
	}
	for _, tc := range []struct {
		types []ebpf.MapType
		want  []string // targets attached, besides the batch functions
	}{
		{[]ebpf.MapType{ebpf.Hash}, []string{"htab_map_update_elem", "htab_map_delete_elem",
			"htab_map_lookup_and_delete_elem", "htab_map_lookup_and_delete_batch"}},
		{[]ebpf.MapType{ebpf.Array}, []string{"array_map_update_elem"}},
		{[]ebpf.MapType{ebpf.LPMTrie, ebpf.PerCPUArray}, []string{"trie_update_elem", "trie_delete_elem",
			"array_map_update_elem", "bpf_percpu_array_update"}},
	} {
		var maps []*Map
		for _, typ := range tc.types {
			maps = append(maps, &Map{Type: typ})
		}
		spec := full.Copy()
		dropUnwatchedTypes(spec, maps)
		var got []string
		for _, p := range spec.Programs {
			if !slices.Contains(batchFunctions, p.AttachTo) {
				got = append(got, p.AttachTo)
			}
		}
		want := slices.Clone(tc.want)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("watching %v: attach %v, want %v", tc.types, got, want)
		}
		// Both programs (fentry and fexit) of each batch function stay.
		if n := len(spec.Programs) - len(got); n != 4 {
			t.Errorf("watching %v: %d batch programs, want 4", tc.types, n)
		}
	}
}

// BenchmarkPerCPUHash measures a dump and an apply of a per-CPU hash of
// 10,000 keys with 8-byte values, whole (every possible CPU's slot), by
// the kernel's batch commands.
func BenchmarkPerCPUHash(b *testing.B) {
	const n = 10000
	m := testMap(b, ebpf.PerCPUHash, 4, 8, n)
	keys, values := pack(m, 0, n, 1, nil, nil, nil)
	b.Run("apply", func(b *testing.B) {
		for b.Loop() {
			if err := m.UpdateBatch(keys, values); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "entries/s")
	})
	b.Run("dump", func(b *testing.B) {
		kb, vb := make([]byte, 256*4), make([]byte, 256*int(m.ValueLen))
		got := 0
		for b.Loop() {
			if err := m.Dump(kb, vb, func(k, _ []byte) error { got += len(k) / 4; return nil }); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(got)/b.Elapsed().Seconds(), "entries/s")
	})
}
