package replication

import (
	"net/netip"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// A node missing datagrams of one peer is behind for every other: a
// snapshot it served would lack them, and its requester, which takes the
// snapshot for what that peer sent before the datagram it heard first,
// would never get them (found by the simulator: "served a snapshot while
// behind").
func TestBehindOnMissingDatagrams(t *testing.T) {
	tab := newPeerTable(time.Second, false)
	now := time.Now()
	requester := tab.add(2, 1, netip.MustParseAddrPort("10.0.0.2:3870"), now, newStream(1, 64))
	other := tab.add(3, 1, netip.MustParseAddrPort("10.0.0.3:3870"), now, newStream(1, 64))
	if tab.behindOn(requester) {
		t.Fatal("behind with nothing missing")
	}
	other.stream.latest = 3 // datagrams 1..3 known sent, none applied
	if !tab.behindOn(requester) {
		t.Error("not behind while missing datagrams of another peer")
	}
	if tab.behindOn(other) {
		t.Error("behind for the peer whose own datagrams are missing: it holds them itself")
	}
	other.stream.dropThrough(3)
	if tab.behindOn(requester) {
		t.Error("still behind once the missing datagrams arrived")
	}
}

// A peer that restarts while datagrams of its last run are missing here
// is resynced from: nobody holds those datagrams to resend any more, and
// its maps hold their changes (found by the simulator with clean stops:
// the delete in a stopping node's last datagram, lost to one peer, left
// the key there for good).
//
// Not before this node is ready: its initial sync brings those changes,
// and a restarted peer, itself not ready, would refuse the resync for
// ever (found by the simulator: two nodes each waiting for the other).
func TestRestartWithMissingDatagramsResyncs(t *testing.T) {
	for _, ready := range []bool{true, false} {
		f := newReceiverFixture(t)
		if ready {
			f.n.ready.become("test", 0)
		}
		f.handle(peerA, f.seqDatagram(t, 1))
		f.handle(peerA, f.seqDatagram(t, 3)) // 2 is missing
		if got := f.stats.ResyncNeeded.Load(); got != 0 {
			t.Fatalf("%d resyncs needed before the restart", got)
		}
		var b changesBuilder
		b.start()
		b.add(t, f.fpFlow, ops.Update, "new!", "epoch2!!")
		f.handle(peerA, b.finish(peerNode, 2, 1))
		if p := f.n.peers.byNode[peerNode]; p == nil || p.epoch != 2 || p.needSync != ready {
			t.Fatalf("ready %v: after the restart the peer is %+v: want its new run, with a resync due %v", ready, p, ready)
		}
	}
}

// With --peers, a node whose list does not name this one announces
// nothing here, yet hears this node and asks it for its initial sync: it
// is answered once its address echoed a cookie. Ignored as unsolicited,
// it asked for ever while the lists disagreed. With a group every node
// hears every announce, and a request from a node never heard stays
// unsolicited.
func TestSyncRequestFromUnlistedPeer(t *testing.T) {
	answered := func(f *receiverFixture) bool {
		for _, u := range f.tr.sentTo() {
			for _, d := range u.dgrams {
				var h wire.Header
				if h.Unmarshal(d) == nil && h.Kind == wire.KindSyncStart && u.to == peerA {
					return true
				}
			}
		}
		return false
	}
	f := newReceiverFixture(t, peerA.Addr(), peerB.Addr())
	f.n.ready.become("test", 0)
	f.handle(peerA, syncRequest(peerNode, 1, 7))
	if answered(f) {
		t.Fatal("answered a request from an address that proved nothing")
	}
	if p := f.n.peers.byNode[peerNode]; p == nil || p.announced {
		t.Fatalf("peer %+v, want the requester known, not announced", p)
	}
	f.handle(peerA, syncRequest(peerNode, 1, 7)) // asked again, once it echoed the cookie (handle echoes first)
	if !answered(f) {
		t.Fatalf("no answer once the requester proved its address; unsolicited %d", f.stats.Unsolicited.Load())
	}

	g := newReceiverFixture(t)
	g.n.ready.become("test", 0)
	g.handle(peerA, syncRequest(peerNode, 1, 7))
	g.handle(peerA, syncRequest(peerNode, 1, 7))
	if answered(g) || g.stats.Unsolicited.Load() != 2 || len(g.n.peers.byNode) != 0 {
		t.Errorf("multicast: answered %v, unsolicited %d, peers %d; want no answer, 2, none", answered(g), g.stats.Unsolicited.Load(), len(g.n.peers.byNode))
	}
}
