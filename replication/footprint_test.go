package replication

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
)

// The footprint counts what the node holds, and names a bound exceeded.
func TestFootprint(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 3, "key3", "3")) // held behind 2
	f.n.relay.add(0, ops.Update, knowledge.Version{Stamp: 1, Origin: ourNode}, []byte("key9"), []byte("valueof9"))
	fp := f.n.Footprint()
	if fp.Peers != 1 || fp.Held != 1 || fp.HeldBytes == 0 || fp.Relayed != 1 || fp.Keys != 1 || fp.ResendSize == 0 {
		t.Fatalf("footprint %+v; want 1 peer, 1 datagram held, 1 entry relayed, 1 key known", fp)
	}
	if why := fp.Exceeded(); why != "" {
		t.Fatalf("within bounds, Exceeded says %q", why)
	}
	fp.ResendBytes = fp.ResendSize + 1
	if why := fp.Exceeded(); !strings.Contains(why, "resend buffer") {
		t.Fatalf("a resend buffer over its size: Exceeded says %q", why)
	}
	fp.ResendBytes, fp.Tombstones = 0, fp.Keys+1
	if why := fp.Exceeded(); !strings.Contains(why, "deletes remembered") {
		t.Fatalf("more deletes than keys: Exceeded says %q", why)
	}

	// The first chunk of a record in two, next in order: held, and counted.
	f.handleAt(t0, peerA, f.fragmentDatagram(t, 2, "big1", 0))
	fp = f.n.Footprint()
	if fp.ReassemblyBytes == 0 || fp.ReassemblyBytes != f.n.apply.reasm.held || fp.ReassemblyLimit != DefaultReassemblyBytes {
		t.Fatalf("with a record incomplete: reassembly %d bytes of %d; want %d of %d", fp.ReassemblyBytes, fp.ReassemblyLimit, f.n.apply.reasm.held, DefaultReassemblyBytes)
	}
	fp.ReassemblyBytes = fp.ReassemblyLimit + 1
	if why := fp.Exceeded(); !strings.Contains(why, "incomplete records") {
		t.Fatalf("reassembly over its bound: Exceeded says %q", why)
	}
}

// The footprint counts the keys a sum map's target keeps, within twice
// the map's max_entries.
func TestFootprintCounters(t *testing.T) {
	k := memKernel{}
	ct := NewCounterTarget(k, k, 4, 8, 1, 1, 3, time.Now)
	sums := CounterMap(testMap("sums", 1, 4, 8, nil), ct, mapopt.Options{Merge: mapopt.Sum, Origins: 3})
	n, err := NewNode(Config{Node: 1, Table: mustTable(t, testPayload, sums), Source: &chanSource{}, Transport: nopTransport{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := peerContribution(ct, 0, 1, 5); err != nil { // key 0
		t.Fatal(err)
	}
	ks, vs := ct.entrySize()
	key, val := make([]byte, ks), make([]byte, vs)
	key[0] = 7
	binary.BigEndian.PutUint32(key[4:], 2)
	binary.BigEndian.PutUint64(val[12:], 1)
	binary.BigEndian.PutUint64(val[20:], 1)
	if err := ct.UpdateBatch(key, val); err != nil {
		t.Fatal(err)
	}
	fp := n.Footprint()
	if fp.CounterKeys != 2 || fp.CounterKeysBound != 2*1024 {
		t.Fatalf("footprint counts %d counter keys, of %d; want 2 of %d", fp.CounterKeys, fp.CounterKeysBound, 2*1024)
	}
	fp.CounterKeys = fp.CounterKeysBound + 1
	if why := fp.Exceeded(); !strings.Contains(why, "sum maps keep") {
		t.Fatalf("counter keys over their bound: Exceeded says %q", why)
	}
}
