package replication

// Sealed replication between whole nodes over the in-memory network of
// resync_test.go: the network and the maps are fakes so that a test can
// record, replay and tamper with every datagram; the netns tests run
// sealed daemons over real sockets.

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/seal"
	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

func testKeys(t testing.TB, fill ...byte) *seal.Keys {
	t.Helper()
	var keys [][]byte
	for _, b := range fill {
		keys = append(keys, bytes.Repeat([]byte{b}, seal.KeySize))
	}
	k, err := seal.NewKeys(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// recorder keeps a copy of every datagram the network carries.
type recorder struct {
	mu  sync.Mutex
	got [][]byte
}

func (r *recorder) drop(d []byte) bool {
	r.mu.Lock()
	r.got = append(r.got, bytes.Clone(d))
	r.mu.Unlock()
	return false
}

func (r *recorder) all() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return cloneAll(r.got)
}

func cloneAll(in [][]byte) [][]byte {
	out := make([][]byte, len(in))
	for i, d := range in {
		out[i] = bytes.Clone(d)
	}
	return out
}

// inject delivers d to node at to as if from from, bypassing the sender.
func (n *memNet) inject(from, to netip.AddrPort, d []byte) {
	n.mu.Lock()
	dst := n.nodes[to]
	n.mu.Unlock()
	dst.in <- transport.Packet{Data: bytes.Clone(d), From: from}
}

func memAddr(node byte) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, node}), 3870)
}

// Two nodes with one key replicate; a third with another key, on the same
// link, neither gets their changes in nor reads theirs out. Replayed
// datagrams and datagrams with a byte changed are dropped and counted.
func TestSealedReplication(t *testing.T) {
	var rec recorder
	n := &memNet{drop: rec.drop}
	a := startMemNodeWith(t, n, 1, nil, testKeys(t, 1))
	b := startMemNodeWith(t, n, 2, nil, testKeys(t, 1))
	other := startMemNodeWith(t, n, 3, nil, testKeys(t, 9))
	a.waitReady(t)
	b.waitReady(t)
	other.waitReady(t)
	for i := range 300 {
		a.write(fmt.Sprintf("a%03d", i), fmt.Sprintf("%8d", i), false)
		other.write(fmt.Sprintf("x%03d", i), "intruder", false)
	}
	waitSame(t, a, b)
	time.Sleep(3 * memAnnounce) // the intruder's announces and changes have all arrived
	if got := b.flows.snapshot(); len(got) != 300 || !maps.Equal(got, a.flows.snapshot()) {
		t.Fatalf("b holds %d entries, want a's 300 and nothing of the intruder's", len(got))
	}
	if got := other.flows.snapshot(); len(got) != 300 {
		t.Errorf("the node with the wrong key holds %d entries, want only its own 300", len(got))
	}
	if a.stats.Unauthenticated.Load() == 0 || other.stats.Unauthenticated.Load() == 0 {
		t.Errorf("unauthenticated a %d, other %d: the wrong key's datagrams were not counted",
			a.stats.Unauthenticated.Load(), other.stats.Unauthenticated.Load())
	}
	for _, n := range []*memNode{a, b, other} {
		if e := n.stats.SendErrors.Load(); e != 0 {
			t.Errorf("%d sends failed: a datagram's header was not marked sealed", e)
		}
	}
	if p := other.n.Peers(); len(p) != 0 {
		t.Errorf("the node with the wrong key knows peers %+v", p)
	}
	// Encrypted: no key of a's appears on the wire.
	sent := rec.all()
	for _, d := range sent {
		if bytes.Contains(d, []byte("a000")) || bytes.Contains(d, []byte("intruder")) {
			t.Fatal("a change's key or value is readable on the wire")
		}
	}

	// Everything recorded, sent to b again from its real source: nothing
	// gets through, and b's map stays as it is.
	before := b.stats.Snapshot()
	for _, d := range sent {
		n.inject(memAddr(1), memAddr(2), d)
		bad := bytes.Clone(d)
		bad[len(bad)/2] ^= 1
		n.inject(memAddr(1), memAddr(2), bad)
	}
	deadline := time.Now().Add(5 * time.Second)
	for b.stats.Replayed.Load()+b.stats.Unauthenticated.Load()-before.Replayed-before.Unauthenticated < uint64(2*len(sent))*9/10 {
		if time.Now().After(deadline) {
			t.Fatalf("replayed %d unauthenticated %d of %d injected", b.stats.Replayed.Load()-before.Replayed,
				b.stats.Unauthenticated.Load()-before.Unauthenticated, 2*len(sent))
		}
		time.Sleep(5 * time.Millisecond)
	}
	after := b.stats.Snapshot()
	if after.ChangesApplied != before.ChangesApplied || after.Replayed == before.Replayed {
		t.Errorf("replays: applied %d more, replayed %d more; want 0 and some", after.ChangesApplied-before.ChangesApplied,
			after.Replayed-before.Replayed)
	}
	if !maps.Equal(b.flows.snapshot(), a.flows.snapshot()) {
		t.Error("b's map changed under replays")
	}
}

// A sealed datagram reaching a node without a key is dropped and counted,
// with a log line that says what to do.
func TestSealedAtUnkeyedNode(t *testing.T) {
	f := newReceiverFixture(t)
	d := f.peerDatagram(t, 1, 1, "key1", "1")
	d[5] = wire.SealSize
	d = append(d, make([]byte, wire.SealSize)...)
	f.handle(peerA, d)
	if s := f.stats.Snapshot(); s.Unauthenticated != 1 || s.Malformed != 0 {
		t.Errorf("unauthenticated %d malformed %d, want 1 and 0", s.Unauthenticated, s.Malformed)
	}
	f.untouched(t)
	if l := f.logs.String(); !bytes.Contains([]byte(l), []byte("--key-file")) {
		t.Errorf("log does not say to configure a key:\n%s", l)
	}
}

// The seal's size is the wire format's.
func TestSealSize(t *testing.T) {
	if seal.Overhead != wire.SealSize {
		t.Fatalf("seal.Overhead %d, wire.SealSize %d", seal.Overhead, wire.SealSize)
	}
}

// Authentic datagrams replayed from another address to a node that has not
// seen them yet (it just started) are taken once, but the node answers the
// peer where the peer's freshest datagrams come from, not where the
// replays came from.
func TestSealedReplaysDoNotRedirect(t *testing.T) {
	var rec recorder
	n := &memNet{drop: rec.drop}
	a := startMemNodeWith(t, n, 1, nil, testKeys(t, 1))
	a.waitReady(t)
	for i := range 100 {
		a.write(fmt.Sprintf("a%03d", i), fmt.Sprintf("%8d", i), false)
	}
	time.Sleep(3 * memAnnounce)
	attacker := n.attach(memAddr(66))
	c := startMemNodeWith(t, n, 3, nil, testKeys(t, 1))
	for _, d := range rec.all() {
		n.inject(memAddr(66), memAddr(3), d)
	}
	c.waitReady(t)
	waitSame(t, a, c)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if p := c.n.Peers(); len(p) == 1 && p[0].Addr == memAddr(1) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("c answers a at %+v, want %s", c.n.Peers(), memAddr(1))
		}
	}
	// What c sent the attacker's address before a's own datagrams set it
	// right is bounded by one announce interval; nothing after.
	for len(attacker.in) > 0 {
		<-attacker.in
	}
	c.write("c001", "from-c!!", false)
	a.write("a999", "fresh!!!", false)
	waitSame(t, a, c)
	time.Sleep(2 * memAnnounce)
	unicast := 0
	for len(attacker.in) > 0 {
		var h wire.Header
		if p := <-attacker.in; h.Unmarshal(p.Data) == nil && h.Kind != wire.KindAnnounce &&
			(h.Kind != wire.KindChanges || h.Flags&wire.FlagRetransmit != 0) {
			unicast++ // the group's multicast reaches every address on the link; answers only theirs
		}
	}
	if unicast != 0 {
		t.Errorf("the replays' address got %d answers after the peer was heard", unicast)
	}
}

// With a key, a ready node that hears a peer for the first time asks it
// for what it missed only once the peer's address has settled, not at the
// first datagram, which may be a replay from anywhere. (The dispatcher is
// fed datagrams that claim to be sealed; opening them is the sealing
// transport's, tested above.)
func TestKeyedRequestWaitsForTheAddressToSettle(t *testing.T) {
	f := newReceiverFixture(t)
	f.n.ready.become("test", 0)
	t0 := time.Now()
	f.n.dispatch.keyed, f.replyTo, f.replyToSince = true, peerA, t0
	d := f.peerDatagram(t, 1, 50, "key1", "50")
	d[5] = wire.SealSize
	f.handleAt(t0, peerA, d)
	if got := f.nacks(t, wire.KindNack); len(got) != 0 {
		t.Fatalf("requests %v sent to an address heard a moment ago", got)
	}
	f.n.dispatch.onTimers(t0.Add(DefaultAnnounceInterval+maxRetry), nil)
	f.echoCookies(t0.Add(DefaultAnnounceInterval + maxRetry)) // the request waits for the cookie's echo
	if got := f.nacks(t, wire.KindNack); len(got) != 1 || got[0][0] != (wire.Range{First: 1, Last: 49}) {
		t.Errorf("requests %v once the address settled, want [1,49]", got)
	}
}

// Each datagram that opens carries where its sender is answered: where
// the freshest datagram of its run came from, whatever address it came
// from itself, and since when that has been so.
func TestSealedReplyTo(t *testing.T) {
	keys := testKeys(t, 1)
	wireOut, wireIn := newFakeTransport(), newFakeTransport()
	sender := newSealedTransport(wireOut, keys, peerNode, 1, new(Stats), newLogger(new(logBuffer)))
	receiver := newSealedTransport(wireIn, keys, ourNode, ourEpoch, new(Stats), newLogger(new(logBuffer)))
	if err := sender.Send([][]byte{announce(t, peerNode, 1, 1)}); !errors.Is(err, errNotMarkedSealed) {
		t.Fatalf("sealing a datagram whose header is not marked sealed: %v, want %v", err, errNotMarkedSealed)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		d := announce(t, peerNode, 1, seq)
		d[5] = wire.SealSize // as the protocol writes it with a key
		if err := sender.Send([][]byte{d}); err != nil {
			t.Fatal(err)
		}
	}
	var sealed [][]byte
	for _, batch := range wireOut.sent() {
		sealed = append(sealed, batch...)
	}
	if len(sealed) != 3 {
		t.Fatalf("%d datagrams sealed, want 3", len(sealed))
	}
	replayer := netip.MustParseAddrPort("10.9.9.9:3870")
	var since time.Time
	for i, step := range []struct {
		d        []byte
		from, to netip.AddrPort
		moved    bool
	}{
		{sealed[1], peerA, peerA, true},     // the freshest so far
		{sealed[0], replayer, peerA, false}, // older: a replay, or late, from elsewhere
		{sealed[2], peerB, peerB, true},     // the freshest, from where the peer moved
	} {
		before := time.Now()
		wireIn.in <- transport.Packet{Data: bytes.Clone(step.d), From: step.from}
		got, err := receiver.Receive()
		if err != nil || len(got) != 1 {
			t.Fatalf("datagram %d: %d received, %v", i, len(got), err)
		}
		p := got[0]
		if p.From != step.from || p.ReplyTo != step.to || step.moved == (p.ReplyToSince == since) || p.ReplyToSince.Before(before) && step.moved {
			t.Errorf("datagram %d from %v: reply to %v since %v, want %v, moved %v (was since %v)",
				i, step.from, p.ReplyTo, p.ReplyToSince, step.to, step.moved, since)
		}
		since = p.ReplyToSince
	}
}
