package loader

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/udpmapsync/udpmapsync/netns-test/datapath"
)

// A map created with BTF yields its value type, one created without none;
// a value with a bpf_spin_lock is read and written with BPF_F_LOCK once
// the map is told, in single and batch commands alike.
func TestValueTypeAndSpinLock(t *testing.T) {
	dp, err := datapath.New()
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	open := func(em *ebpf.Map) *Map {
		t.Helper()
		info, err := em.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ms, err := OpenMaps([]string{fmt.Sprintf("id:%d", id)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ms[0].Close() })
		return ms[0]
	}
	locked := open(dp.Locked)
	vt, err := locked.ValueType()
	if err != nil {
		t.Fatal(err)
	}
	s, ok := vt.(*btf.Struct)
	if !ok || s.Name != "locked_entry" || s.Members[0].Name != "lock" {
		t.Fatalf("value type %v", vt)
	}
	em, _ := kernelMap(t, ebpf.MapSpec{Name: randomName(t), Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 4}, "")
	plain := open(em)
	if vt, err := plain.ValueType(); vt != nil || err != nil {
		t.Errorf("a map without BTF: value type %v, %v", vt, err)
	}

	locked.UseSpinLock()
	size := int(locked.ValueSize)
	keys := make([]byte, 8)
	binary.NativeEndian.PutUint32(keys[4:], 1)
	vals := make([]byte, 2*size)
	for i := range vals {
		vals[i] = 0xee // the lock's bytes too: the kernel skips them
	}
	if err := locked.UpdateBatch(keys, vals); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, size)
	if found, err := locked.Lookup(keys[:4], got); err != nil || !found || got[0] != 0 || got[8] != 0xee {
		t.Fatalf("lookup under the lock: %v %v % x", found, err, got[:16])
	}
	n := 0
	err = locked.Dump(make([]byte, 16*4), make([]byte, 16*size), func(ks, vs []byte) error {
		n += len(ks) / 4
		return nil
	})
	if err != nil || n != 2 {
		t.Errorf("a locked batch read found %d entries: %v", n, err)
	}
}
