package replication

import (
	"net/netip"
	"testing"
	"time"
)

// A node missing datagrams of one peer is behind for every other: a
// snapshot it served would lack them, and its requester, which takes the
// snapshot for what that peer sent before the datagram it heard first,
// would never get them (the simulator's "served a snapshot while behind",
// e.g. seed 65 with no faults but loss).
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
