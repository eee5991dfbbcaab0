package loader

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
)

// dumped collects what Dump reports, failing on a key reported twice.
func dumped(t *testing.T, m *Map, batch int) map[string]string {
	t.Helper()
	got := map[string]string{}
	keys, values := make([]byte, batch*int(m.KeySize)), make([]byte, batch*int(m.ValueLen))
	err := m.Dump(keys, values, func(k, v []byte) error {
		if len(k)/int(m.KeySize) != len(v)/int(m.ValueLen) || len(k) == 0 {
			t.Fatalf("batch of %d B keys and %d B values", len(k), len(v))
		}
		for i := 0; i < len(k)/int(m.KeySize); i++ {
			key := string(k[i*int(m.KeySize) : (i+1)*int(m.KeySize)])
			if _, dup := got[key]; dup {
				t.Errorf("key %x reported twice", key)
			}
			got[key] = string(v[i*int(m.ValueLen) : (i+1)*int(m.ValueLen)])
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Dump: %v", err)
	}
	return got
}

func checkDump(t *testing.T, m *Map, batch int, want map[string]string) {
	t.Helper()
	got := dumped(t, m, batch)
	if len(got) != len(want) {
		t.Errorf("dumped %d entries, want %d", len(got), len(want))
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("key %x: dumped %x, want %x", k, got[k], w)
		}
	}
}

func TestDump(t *testing.T) {
	for _, typ := range []ebpf.MapType{ebpf.Hash, ebpf.LRUHash, ebpf.Array} {
		for _, batched := range []bool{true, false} {
			name := typ.String() + "/batch"
			if !batched {
				name = typ.String() + "/elements"
			}
			t.Run(name, func(t *testing.T) {
				// Room to spare: an LRU map evicts before it is full.
				keySize, maxEntries := uint32(12), uint32(4096)
				if typ == ebpf.Array {
					keySize, maxEntries = 4, 1000
				}
				m := testMap(t, typ, keySize, 20, maxEntries)
				m.noBatch.Store(!batched)
				want := map[string]string{}
				keys, values := pack(m, 0, 1000, 1, nil, nil, want)
				if err := m.UpdateBatch(keys, values); err != nil {
					t.Fatal(err)
				}
				for _, batch := range []int{256, 1000, 4096} {
					checkDump(t, m, batch, want)
				}
			})
		}
	}
}

func TestDumpEmptyAndErrors(t *testing.T) {
	m := testMap(t, ebpf.Hash, 4, 8, 16)
	checkDump(t, m, 64, map[string]string{})

	keys, values := pack(m, 0, 10, 1, nil, nil, nil)
	if err := m.UpdateBatch(keys, values); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	err := m.Dump(make([]byte, 4*4), make([]byte, 4*8), func(k, v []byte) error { return stop })
	if !errors.Is(err, stop) {
		t.Errorf("Dump returned %v, want the callback's error", err)
	}
	if err := m.Dump(make([]byte, 3), make([]byte, 8), nil); err == nil {
		t.Error("Dump with a partial key buffer: no error")
	}
	if err := m.Dump(make([]byte, 8), make([]byte, 8), nil); err == nil {
		t.Error("Dump with values for one of two keys: no error")
	}
}
