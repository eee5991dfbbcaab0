package replication

import (
	"net/netip"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/wire"
)

// Without a key, the peers discovery finds are the accept-list: a peer
// that left is retired (its datagrams count as forged), one that arrived
// is accepted, and the sender is asked to greet it.
func TestSetPeersRetiresAndGreets(t *testing.T) {
	f := newReceiverFixture(t, peerA.Addr())
	f.n.SetPeers([]netip.Addr{peerB.Addr()})
	if !f.n.sender.greet.Load() {
		t.Error("new peers did not ask the sender for an announce")
	}
	f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	if s := f.stats.Snapshot(); s.Forged != 1 || s.DatagramsReceived != 0 {
		t.Errorf("from a peer that left: forged %d received %d, want 1 and 0", s.Forged, s.DatagramsReceived)
	}
	f.untouched(t)
	f.handle(peerB, f.peerDatagram(t, 1, 1, "key1", "1"))
	if s := f.stats.Snapshot(); s.DatagramsReceived != 1 {
		t.Errorf("from a peer that arrived: received %d, want 1", s.DatagramsReceived)
	}

	f.n.SetPeers([]netip.Addr{}) // a name without records: nobody is accepted
	f.handle(peerB, f.peerDatagram(t, 1, 2, "key2", "2"))
	if s := f.stats.Snapshot(); s.Forged != 2 {
		t.Errorf("with no peers found: forged %d, want 2", s.Forged)
	}
}

// A node whose discovery has found no one yet (Config.Peers empty, not
// nil) accepts no one without a key, rather than everyone.
func TestEmptyPeersAcceptNone(t *testing.T) {
	f := newFixtureWith(t, Config{Peers: []netip.Addr{}})
	f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	if s := f.stats.Snapshot(); s.Forged != 1 || s.DatagramsReceived != 0 {
		t.Errorf("no peers found yet: forged %d received %d, want 1 and 0", s.Forged, s.DatagramsReceived)
	}
	f.untouched(t)
}

// With a key, discovery decides where to send, not whom to trust: a
// sealed datagram from an address it never found is handled.
func TestSetPeersKeyedAcceptsAnyAddress(t *testing.T) {
	f := newReceiverFixture(t)
	f.n.dispatch.keyed, f.replyTo, f.replyToSince = true, peerA, time.Now()
	f.n.SetPeers([]netip.Addr{peerB.Addr()})
	d := f.peerDatagram(t, 1, 1, "key1", "1")
	d[5] = wire.SealSize // claims to be sealed: opening is the sealing transport's
	f.handle(peerA, d)
	if s := f.stats.Snapshot(); s.Forged != 0 || s.DatagramsReceived != 1 {
		t.Errorf("keyed, from an address discovery did not find: forged %d received %d, want 0 and 1", s.Forged, s.DatagramsReceived)
	}
}

// The accept-list ignores zones and IPv4-mapped forms, as --peers did.
func TestAcceptListForms(t *testing.T) {
	var l acceptList
	if !l.accepts(netip.MustParseAddr("10.0.0.9")) {
		t.Error("an accept-list never set refuses an address")
	}
	l.set([]netip.Addr{netip.MustParseAddr("::ffff:10.0.0.1"), netip.MustParseAddr("fe80::1%eth0")})
	for a, want := range map[string]bool{"10.0.0.1": true, "fe80::1": true, "fe80::1%eth1": true, "10.0.0.2": false} {
		if got := l.accepts(netip.MustParseAddr(a)); got != want {
			t.Errorf("accepts(%s) = %v, want %v", a, got, want)
		}
	}
}

// A greeting is an announce sent at the sender's next step, not an
// announce interval later.
func TestSenderGreets(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	src := &scriptSource{steps: []step{{timeout: true}, {timeout: true}}}
	tr := newFakeTransport()
	s, _ := newTestSender(t, tab, src, tr, senderConfig{AnnounceInterval: time.Hour})
	announces := func() int {
		n := 0
		for _, b := range tr.sent() {
			var h wire.Header
			if h.Unmarshal(b[0]) == nil && h.Kind == wire.KindAnnounce {
				n++
			}
		}
		return n
	}
	s.begin()
	if _, err := s.step(); err != nil {
		t.Fatal(err)
	}
	if n := announces(); n != 1 {
		t.Fatalf("%d announces before the greeting, want the first one alone", n)
	}
	s.greet.Store(true)
	if _, err := s.step(); err != nil {
		t.Fatal(err)
	}
	if n := announces(); n != 2 {
		t.Errorf("%d announces after the greeting, want 2", n)
	}
}
