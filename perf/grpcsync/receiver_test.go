package grpcsync

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
)

// testMap creates a real hash map (4 B keys, 8 B values) and opens it as
// the daemon would.
func testMap(t *testing.T) (*ebpf.Map, *loader.Map) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create BPF maps")
	}
	em, err := ebpf.NewMap(&ebpf.MapSpec{Name: "grpcsync_test", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { em.Close() })
	info, err := em.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	ms, err := loader.OpenMaps([]string{fmt.Sprintf("id:%d", id)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms[0].Close() })
	return em, ms[0]
}

func update(k byte, v byte) []byte {
	return []byte{byte(ops.Update), k, 0, 0, 0, v, 0, 0, 0, 0, 0, 0, 0}
}

func del(k byte) []byte { return []byte{byte(ops.Delete), k, 0, 0, 0} }

// TestApplyBatchOrder checks that a batch's records land in order across
// runs of updates and deletes: a key updated, deleted and updated again
// holds its last value; a key updated then deleted is gone.
func TestApplyBatchOrder(t *testing.T) {
	em, m := testMap(t)
	r := NewReceiver(m, 4, 8)
	var msg []byte
	for _, rec := range [][]byte{update(1, 10), update(2, 20), del(1), update(3, 30), del(2), update(1, 11)} {
		msg = append(msg, rec...)
	}
	var keys, values []byte
	n, err := r.applyBatch(msg, &keys, &values)
	if err != nil || n != 6 {
		t.Fatalf("applyBatch: %d records, %v", n, err)
	}
	want := map[uint32]uint64{1: 11, 3: 30}
	got := map[uint32]uint64{}
	var k uint32
	var v uint64
	for it := em.Iterate(); it.Next(&k, &v); {
		got[k] = v
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("map holds %v, want %v", got, want)
	}
	if r.Applied.Load() != 6 {
		t.Fatalf("applied %d, want 6", r.Applied.Load())
	}
}

// TestApplyMalformed checks that records of the wrong length or op are
// refused, not applied.
func TestApplyMalformed(t *testing.T) {
	em, m := testMap(t)
	r := NewReceiver(m, 4, 8)
	for _, rec := range [][]byte{update(1, 1)[:8], {9, 1, 0, 0, 0}, del(1)[:3], nil} {
		var keys, values []byte
		if _, err := r.applyBatch(append(rec, 0xff), &keys, &values); !errors.Is(err, errBadRecord) {
			t.Errorf("record %x: got %v, want errBadRecord", rec, err)
		}
		if err := r.applyOne(rec); !errors.Is(err, errBadRecord) {
			t.Errorf("unary record %x: got %v, want errBadRecord", rec, err)
		}
	}
	var k uint32
	var v uint64
	if em.Iterate().Next(&k, &v) {
		t.Fatalf("map holds key %d after malformed records", k)
	}
}
