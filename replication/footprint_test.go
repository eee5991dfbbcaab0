package replication

import (
	"strings"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/knowledge"
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
}
