package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// testMap creates a named kernel map and wraps it as OpenMaps would.
func testMap(t testing.TB, typ ebpf.MapType, keySize, valueSize, maxEntries uint32) *Map {
	t.Helper()
	spec := &ebpf.MapSpec{Name: "apply_test", Type: typ, KeySize: keySize, ValueSize: valueSize, MaxEntries: maxEntries}
	if typ == ebpf.LPMTrie {
		spec.Flags = unix.BPF_F_NO_PREALLOC // the kernel refuses a trie without
	}
	em, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatalf("create %s map: %v", typ, err)
	}
	m, err := newMap(em)
	if err != nil {
		em.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// contents reads the whole map back from the kernel, key after key.
func contents(t *testing.T, m *Map) map[string]string {
	t.Helper()
	got := map[string]string{}
	var prev any // nil: the first key
	for {
		k := make([]byte, m.KeySize)
		if err := m.m.NextKey(prev, k); errors.Is(err, ebpf.ErrKeyNotExist) {
			return got
		} else if err != nil {
			t.Fatalf("iterate %s: %v", m, err)
		}
		v := make([]byte, m.ValueLen)
		if found, err := m.Lookup(k, v); err != nil || !found {
			t.Fatalf("iterate %s: key %x: %v, %v", m, k, found, err)
		}
		got[string(k)] = string(v)
		prev = k
	}
}

func checkContents(t *testing.T, m *Map, want map[string]string) {
	t.Helper()
	got := contents(t, m)
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("key %x missing", k)
		} else if g != w {
			t.Errorf("key %x: value %x, want %x", k, g, w)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected key %x", k)
		}
	}
}

// entry makes key i and its value for version ver, distinct in every byte
// position so a shifted or truncated copy shows.
func entry(m *Map, i, ver int) (key, value []byte) {
	key = make([]byte, m.KeySize)
	for j := range key {
		key[j] = byte(i*7 + j)
	}
	binary.LittleEndian.PutUint32(key, uint32(i)) // also a valid array index
	value = make([]byte, m.ValueLen)
	for j := range value {
		value[j] = byte(i*13 + j*3 + ver*101)
	}
	return key, value
}

// pack appends entries lo..hi-1 of version ver to keys and values and
// records them in want.
func pack(m *Map, lo, hi, ver int, keys, values []byte, want map[string]string) ([]byte, []byte) {
	for i := lo; i < hi; i++ {
		k, v := entry(m, i, ver)
		keys, values = append(keys, k...), append(values, v...)
		if want != nil {
			want[string(k)] = string(v)
		}
	}
	return keys, values
}

func TestApplyHash(t *testing.T) {
	for _, typ := range []ebpf.MapType{ebpf.Hash, ebpf.LRUHash} {
		for _, size := range [][2]uint32{{4, 8}, {13, 37}, {MaxKeySize, MaxValueSize}} {
			for _, perElement := range []bool{false, true} {
				name := fmt.Sprintf("%s/%dx%d", typ, size[0], size[1])
				if perElement {
					name += "/per-element"
				}
				t.Run(name, func(t *testing.T) {
					// LRU maps evict before they are full; leave them room.
					m := testMap(t, typ, size[0], size[1], 1024)
					m.noBatch.Store(perElement)
					testApplyHash(t, m)
				})
			}
		}
	}
}

func testApplyHash(t *testing.T, m *Map) {
	want := map[string]string{}
	keys, values := pack(m, 0, 100, 0, nil, nil, want)
	if err := m.UpdateBatch(keys, values); err != nil {
		t.Fatal(err)
	}
	checkContents(t, m, want)

	// Duplicates within one batch: the last one wins.
	keys, values = pack(m, 10, 20, 1, nil, nil, nil)
	keys, values = pack(m, 15, 25, 2, keys, values, nil)
	keys, values = pack(m, 12, 13, 3, keys, values, nil)
	pack(m, 10, 15, 1, nil, nil, want)
	pack(m, 15, 25, 2, nil, nil, want)
	pack(m, 12, 13, 3, nil, nil, want)
	if err := m.UpdateBatch(keys, values); err != nil {
		t.Fatal(err)
	}
	checkContents(t, m, want)

	// Missing keys first, in the middle, twice and last.
	keys, _ = pack(m, 200, 203, 0, nil, nil, nil) // missing
	keys, _ = pack(m, 30, 40, 0, keys, nil, nil)
	keys, _ = pack(m, 300, 302, 0, keys, nil, nil) // missing
	keys, _ = pack(m, 35, 45, 0, keys, nil, nil)   // 35..39 now missing
	keys, _ = pack(m, 400, 401, 0, keys, nil, nil) // missing
	for i := 30; i < 45; i++ {
		k, _ := entry(m, i, 0)
		delete(want, string(k))
	}
	missing, err := m.DeleteBatch(keys)
	if err != nil {
		t.Fatal(err)
	}
	if missing != 3+2+5+1 {
		t.Errorf("missing = %d, want 11", missing)
	}
	checkContents(t, m, want)

	missing, err = m.DeleteBatch(keys)
	if err != nil || missing != len(keys)/int(m.KeySize) {
		t.Errorf("deleting deleted keys: missing %d, %v; want %d, nil", missing, err, len(keys)/int(m.KeySize))
	}
	if err := m.UpdateBatch(nil, nil); err != nil {
		t.Errorf("empty update: %v", err)
	}
	if missing, err := m.DeleteBatch(nil); missing != 0 || err != nil {
		t.Errorf("empty delete: %d, %v", missing, err)
	}
	checkContents(t, m, want)
}

func TestApplyArray(t *testing.T) {
	m := testMap(t, ebpf.Array, 4, 24, 64)
	want := map[string]string{}
	for i := range 64 { // an array holds every index, zeroed
		k, _ := entry(m, i, 0)
		want[string(k[:4])] = string(make([]byte, 24))
	}
	keys, values := pack(m, 3, 40, 0, nil, nil, want)
	keys, values = pack(m, 5, 7, 1, keys, values, want)
	if err := m.UpdateBatch(keys, values); err != nil {
		t.Fatal(err)
	}
	checkContents(t, m, want)

	_, err := m.DeleteBatch(keys[:8])
	if !errors.Is(err, ErrNotDeletable) {
		t.Errorf("delete from an array: %v, want ErrNotDeletable", err)
	}
	checkContents(t, m, want)

	// Indexes past the end are refused one by one; the rest still land.
	keys, values = pack(m, 62, 66, 2, nil, nil, nil)
	keys, values = pack(m, 70, 71, 2, keys, values, nil)
	keys, values = pack(m, 1, 3, 2, keys, values, nil)
	pack(m, 62, 64, 2, nil, nil, want)
	pack(m, 1, 3, 2, nil, nil, want)
	err = m.UpdateBatch(keys, values)
	if !errors.Is(err, unix.E2BIG) || err.Error() != "update map apply_test: 3 of 7 entries failed, the first (entry 2): argument list too long" {
		t.Errorf("update with indexes out of range: %v", err)
	}
	checkContents(t, m, want)
}

func TestApplyHashFull(t *testing.T) {
	m := testMap(t, ebpf.Hash, 4, 8, 4)
	want := map[string]string{}
	keys, values := pack(m, 0, 4, 0, nil, nil, want)
	keys, values = pack(m, 4, 6, 0, keys, values, nil) // no room
	keys, values = pack(m, 1, 2, 1, keys, values, want)
	err := m.UpdateBatch(keys, values)
	if !errors.Is(err, unix.E2BIG) {
		t.Errorf("update of a full map: %v, want E2BIG", err)
	}
	checkContents(t, m, want)
}

func TestApplyBadLengths(t *testing.T) {
	m := testMap(t, ebpf.Hash, 13, 37, 16)
	keys, values := pack(m, 0, 3, 0, nil, nil, nil)
	for _, tc := range []struct {
		keys, values []byte
		want         string
	}{
		{keys[:38], values, "update map apply_test: 38 B of keys is not a multiple of the 13 B key size"},
		{keys, values[:110], "update map apply_test: 110 B of values for 3 keys of a 37 B value map"},
		{keys[:26], values, "update map apply_test: 111 B of values for 2 keys of a 37 B value map"},
		{keys, nil, "update map apply_test: 0 B of values for 3 keys of a 37 B value map"},
	} {
		if err := m.UpdateBatch(tc.keys, tc.values); err == nil || err.Error() != tc.want {
			t.Errorf("got %v, want %s", err, tc.want)
		}
	}
	if _, err := m.DeleteBatch(keys[:1]); err == nil || err.Error() != "delete from map apply_test: 1 B of keys is not a multiple of the 13 B key size" {
		t.Errorf("delete of 1 B: %v", err)
	}
	checkContents(t, m, map[string]string{})
}

// TestApplyFallback uses a devmap hash, which is not a replicated type, as
// the one real kernel map whose type has no batch operations but takes
// single-element updates and deletes (the value is an ifindex: lo).
func TestApplyFallback(t *testing.T) {
	em, err := ebpf.NewMap(&ebpf.MapSpec{Name: "apply_test", Type: ebpf.DevMapHash, KeySize: 4, ValueSize: 4, MaxEntries: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer em.Close()
	m := &Map{Name: "apply_test", Type: ebpf.DevMapHash, KeySize: 4, ValueSize: 4, ValueLen: 4, m: em}
	lo := binary.NativeEndian.AppendUint32(nil, 1)
	want := map[string]string{}
	var keys, values []byte
	for i := range 10 {
		k, _ := entry(m, i, 0)
		keys, values = append(keys, k...), append(values, lo...)
		want[string(k)] = string(lo)
	}
	if err := m.UpdateBatch(keys, values); err != nil {
		t.Fatal(err)
	}
	if !m.noBatch.Load() {
		t.Error("batch update of a devmap hash worked; this test no longer covers the fallback")
	}
	checkContents(t, m, want)

	for _, k := range []int{2, 5} {
		key, _ := entry(m, k, 0)
		delete(want, string(key))
	}
	missingKey, _ := entry(m, 77, 0)
	dels := append(keys[8:12:12], keys[20:24]...) // 2, 5
	dels = append(dels, missingKey...)
	dels = append(dels, keys[8:12]...) // deleted just before
	missing, err := m.DeleteBatch(dels)
	if err != nil || missing != 2 {
		t.Errorf("delete: missing %d, %v; want 2, nil", missing, err)
	}
	checkContents(t, m, want)
}

// TestApplyAllocs proves the receive path's apply step allocates nothing,
// for whole batches, for deletes of missing keys and per element.
func TestApplyAllocs(t *testing.T) {
	for _, perElement := range []bool{false, true} {
		m := testMap(t, ebpf.Hash, 16, 64, 1024)
		m.noBatch.Store(perElement)
		keys, values := pack(m, 0, 64, 0, nil, nil, nil)
		missingKeys, _ := pack(m, 64, 96, 0, nil, nil, nil)
		dels := append(bytes.Clone(keys), missingKeys...)
		var err error
		allocs := testing.AllocsPerRun(100, func() {
			if e := m.UpdateBatch(keys, values); e != nil {
				err = e
			}
			if n, e := m.DeleteBatch(dels); e != nil || n != 32 {
				err = fmt.Errorf("delete: %d missing, %v", n, e)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if allocs != 0 {
			t.Errorf("per element %v: %v allocations per update+delete, want 0", perElement, allocs)
		}
	}
}

func BenchmarkUpdateBatch(b *testing.B) {
	m := testMap(b, ebpf.Hash, 16, 64, 1024)
	keys, values := pack(m, 0, 64, 0, nil, nil, nil)
	b.ReportAllocs()
	for b.Loop() {
		if err := m.UpdateBatch(keys, values); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/entry")
}

func BenchmarkDeleteBatch(b *testing.B) {
	m := testMap(b, ebpf.Hash, 16, 64, 1024)
	keys, values := pack(m, 0, 64, 0, nil, nil, nil)
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		if err := m.UpdateBatch(keys, values); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if missing, err := m.DeleteBatch(keys); err != nil || missing != 0 {
			b.Fatal(missing, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/entry")
}

func TestLookup(t *testing.T) {
	m := testMap(t, ebpf.Hash, 13, 37, 64)
	key, value := entry(m, 3, 1)
	if err := m.UpdateBatch(key, value); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, m.ValueLen)
	if found, err := m.Lookup(key, got); err != nil || !found || !bytes.Equal(got, value) {
		t.Fatalf("Lookup of a held key = %v, %v, %x; want true, nil, %x", found, err, got, value)
	}
	absent, _ := entry(m, 4, 0)
	if found, err := m.Lookup(absent, got); err != nil || found {
		t.Fatalf("Lookup of an absent key = %v, %v", found, err)
	}
	if _, err := m.Lookup(key[:1], got); err == nil {
		t.Fatal("Lookup took a short key")
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = m.Lookup(key, got) }); n != 0 {
		t.Fatalf("Lookup allocates %v times", n)
	}
}
