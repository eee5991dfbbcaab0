package replication

import (
	"bytes"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/seal"
	"github.com/udpmapsync/udpmapsync/wire"
)

// nackDatagram is a request (or gone answer) from node from, naming n's
// node and epoch, for ranges.
func nackDatagram(t *testing.T, from uint32, n wire.Nack, ranges ...wire.Range) []byte {
	t.Helper()
	n.N = len(ranges)
	copy(n.Ranges[:], ranges)
	h := wire.Header{Kind: wire.KindNack, Count: uint16(n.N), Node: from, Epoch: 1}
	d, err := h.AppendTo(nil)
	if err == nil {
		d, err = n.AppendTo(d)
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// sentBytes sums what was sent to addr, cookies included, with the IPv4
// and UDP headers of each datagram.
func sentBytes(us []unicast, addr netip.AddrPort) (bytes, dgrams int) {
	for _, u := range us {
		if u.to == addr {
			for _, d := range u.dgrams {
				bytes += len(d) + ipv4Overhead
				dgrams++
			}
		}
	}
	return bytes, dgrams
}

// A peer whose address has not proved itself gets a cookie, no larger
// than its request, instead of the answer; once it echoes the cookie
// from that address, the same request is answered.
func TestAnswerGate(t *testing.T) {
	f, _ := ownDatagrams(t, 64<<20, 300)
	f.handle(peerA, announce(t, peerNode, 1, 0))
	req := nackDatagram(t, peerNode, wire.Nack{Node: ourNode, Epoch: ourEpoch}, wire.Range{First: 1, Last: 200})
	f.handle(peerA, req)
	if u := f.tr.sentTo(); len(u) != 0 {
		t.Fatalf("answered an address that has not proved itself: %d sends", len(u))
	}
	cookies := f.tr.sentCookies()
	if len(cookies) != 1 || cookies[0].to != peerA || len(cookies[0].dgrams) != 1 {
		t.Fatalf("cookies %+v, want one to %v", cookies, peerA)
	}
	cookie := cookies[0].dgrams[0]
	if len(cookie) > len(req) {
		t.Errorf("the cookie is %d bytes, the request %d: the cookie amplifies", len(cookie), len(req))
	}
	// The same request again, at once: no second cookie within cookieEvery.
	f.handle(peerA, req)
	if c := f.tr.sentCookies(); len(c) != 0 || len(f.tr.sentTo()) != 0 {
		t.Errorf("a repeated request got %d cookies and answers within %v", len(c), cookieEvery)
	}
	f.handle(peerA, echoOf(t, cookie, peerNode, 1))
	f.handle(peerA, req)
	if _, n := sentBytes(f.tr.sentTo(), peerA); n != 200 {
		t.Errorf("resent %d datagrams once the address proved itself, want 200", n)
	}
	s := f.stats.Snapshot()
	if s.CookiesSent != 1 || s.AddressesProven != 1 || s.DatagramsResent != 200 {
		t.Errorf("cookies sent %d, addresses proven %d, resent %d; want 1, 1, 200", s.CookiesSent, s.AddressesProven, s.DatagramsResent)
	}
}

// Echoes that prove nothing are counted by what is wrong with them, and
// leave the address unproved.
func TestCookieEchoRefused(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.handleAt(t0, peerA, announce(t, peerNode, 1, 0))
	f.handleAt(t0, peerB, announce(t, 9, 1, 0))
	a, b := f.n.peers.byNode[peerNode], f.n.peers.byNode[9]
	f.n.gate.challenge(a, t0)
	cookies := f.tr.sentCookies()
	if len(cookies) != 1 {
		t.Fatalf("%d cookies, want 1", len(cookies))
	}
	good := cookies[0].dgrams[0]
	forged := echoOf(t, good, peerNode, 1)
	forged[len(forged)-1] ^= 1 // the tag's last byte
	f.handleAt(t0, peerA, forged)
	f.handleAt(t0, peerB, echoOf(t, good, 9, 1)) // peerA's cookie, from peerB
	f.handleAt(t0.Add(2*cookieSlot), peerA, echoOf(t, good, peerNode, 1))
	s := f.stats.Snapshot()
	if s.CookiesForged != 1 || s.CookiesWrongAddr != 1 || s.CookiesExpired != 1 || s.AddressesProven != 0 {
		t.Errorf("forged %d, wrong address %d, expired %d, proven %d; want 1, 1, 1, 0",
			s.CookiesForged, s.CookiesWrongAddr, s.CookiesExpired, s.AddressesProven)
	}
	if f.n.gate.proven(a) || f.n.gate.proven(b) {
		t.Error("an address proved itself with a bad echo")
	}
	if n := countLines(f.logs.String(), "cookie echo that proves nothing"); n == 0 {
		t.Error("bad echoes not logged")
	}
}

// Announces sent to the group from a forged address, each claiming more
// datagrams than the last, make every ready node want to ask that
// address for them. Each node sends the address no more than its share
// of what came from there: the group as a whole no more than was forged.
func TestGateSharesWhatCameToTheGroup(t *testing.T) {
	f := newReceiverFixture(t)
	f.n.ready.become("test", 0)
	t0 := time.Now()
	// Two real peers, so the forged one makes a group of four.
	f.handleAt(t0, peerB, announce(t, 9, 1, 0))
	f.handleAt(t0, netip.MustParseAddrPort("10.0.0.3:3870"), announce(t, 10, 1, 0))
	victim := netip.MustParseAddrPort("10.0.0.99:3870")
	received := 0.0
	for i := range 200 {
		now := t0.Add(time.Duration(i) * 20 * time.Millisecond)
		d := announce(t, 0xa77a0001, 1, uint64(10*(i+1)))
		f.dispatch(victim, d, false, now)
		f.n.dispatch.onTimers(now, nil)
		received += float64(len(d)+ipv4Overhead) / float64(len(f.n.peers.byNode)+1)
	}
	all := append(f.tr.sentTo(), f.tr.sentCookies()...)
	sent, n := sentBytes(all, victim)
	t.Logf("forged %d announces; this node's share %.0f B, it sent %d B in %d datagrams", 200, received, sent, n)
	if float64(sent) > received {
		t.Errorf("sent the forged address %d B, over this node's share of what came from there, %.0f B", sent, received)
	}
	if n == 0 {
		t.Error("sent the forged address nothing: the peer is never asked, so the test shows nothing")
	}
	if s := f.stats.Snapshot(); s.Withheld == 0 {
		t.Error("nothing withheld: the credit never bounded what was sent")
	}
}

// With a key, a cookie of a peer whose address has not settled (it may be
// where a replay came from) is not echoed there.
func TestCookieNotEchoedBeforeTheAddressSettles(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.n.dispatch.keyed, f.replyTo, f.replyToSince = true, peerA, t0
	d := announce(t, peerNode, 1, 0)
	d[5] = wire.SealSize
	f.handleAt(t0, peerA, d)
	cookie := wire.Cookie{Slot: 1, Tag: 2}.Header(wire.KindCookie, peerNode, 1)
	cookie.Sealed = true
	c, err := cookie.AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	f.dispatch(peerA, c, true, t0)
	if got := f.tr.sentCookies(); len(got) != 0 {
		t.Errorf("echoed to an address heard a moment ago: %d datagrams", len(got))
	}
	f.dispatch(peerA, c, true, t0.Add(DefaultAnnounceInterval))
	if got := f.tr.sentCookies(); len(got) == 0 {
		t.Error("not echoed once the address settled")
	}
}

// A node that joins a ready one proves its address, and has the other's
// proved, with one cookie each way: the answer to its resync request
// comes after one round trip more than it would without the gate, with a
// key or without.
func TestJoinPaysOneRoundTrip(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		var keys *seal.Keys
		if keyed {
			var err error
			if keys, err = seal.NewKeys(bytes.Repeat([]byte{9}, seal.KeySize)); err != nil {
				t.Fatal(err)
			}
		}
		var n memNet
		var mu sync.Mutex
		var seen []string // node:kind of every datagram, in the order sent
		n.drop = func(d []byte) bool {
			var h wire.Header
			if h.Unmarshal(d) == nil && h.Kind != wire.KindChanges && h.Kind != wire.KindAnnounce {
				mu.Lock()
				seen = append(seen, fmt.Sprintf("%d:%d", h.Node, h.Kind))
				mu.Unlock()
			}
			return false
		}
		a := startMemNodeWith(t, &n, 1, entries(100, 'a', 1), keys)
		a.waitReady(t)
		b := startMemNodeWith(t, &n, 2, nil, keys)
		b.waitReady(t)
		waitSame(t, a, b)
		mu.Lock()
		var before []string
		for _, s := range seen {
			if s == fmt.Sprintf("1:%d", wire.KindSyncStart) {
				break
			}
			before = append(before, s)
		}
		mu.Unlock()
		t.Logf("keyed %v: before the answer: %v", keyed, before)
		count := func(node uint32, k wire.Kind) int {
			c := 0
			for _, s := range before {
				if s == fmt.Sprintf("%d:%d", node, k) {
					c++
				}
			}
			return c
		}
		if c := count(1, wire.KindCookie); c != 1 {
			t.Errorf("keyed %v: the serving node sent %d cookies before it answered, want 1: %v", keyed, c, before)
		}
		if c := count(2, wire.KindCookieEcho); c != 1 {
			t.Errorf("keyed %v: the joining node echoed %d cookies before it was answered, want 1: %v", keyed, c, before)
		}
		if c := count(2, wire.KindCookie); c > 1 {
			t.Errorf("keyed %v: the joining node sent %d cookies before it was answered, want at most 1: %v", keyed, c, before)
		}
		for _, m := range []*memNode{a, b} {
			if p := m.stats.Snapshot().AddressesProven; p != 1 {
				t.Errorf("keyed %v: %d addresses proven, want the other node's", keyed, p)
			}
		}
		a.stop()
		b.stop()
	}
}

// The proof of a joining node's address survives the loss of any one of
// its datagrams: a lost cookie or echo is made again when the joining
// node repeats its request on its retry timer, a lost answer is asked for
// again, and the node is served and becomes ready. Each case drops
// exactly the first datagram of one kind.
func TestJoinSurvivesALostCookie(t *testing.T) {
	for _, c := range []struct {
		what    string
		node    uint32 // 1 serves the initial sync, 2 joins
		kind    wire.Kind
		cookies uint64 // the serving node's, at least
	}{
		{"the cookie", 1, wire.KindCookie, 2},
		{"the echo", 2, wire.KindCookieEcho, 2},
		{"the first answer", 1, wire.KindSyncStart, 1},
	} {
		var n memNet
		var dropped atomic.Bool
		n.drop = func(d []byte) bool {
			var h wire.Header
			return h.Unmarshal(d) == nil && h.Node == c.node && h.Kind == c.kind && dropped.CompareAndSwap(false, true)
		}
		a := startMemNode(t, &n, 1, entries(100, 'a', 1))
		a.waitReady(t)
		b := startMemNode(t, &n, 2, nil)
		b.waitReady(t)
		waitSame(t, a, b)
		if !dropped.Load() {
			t.Errorf("dropping %s: none was sent, the case shows nothing", c.what)
		}
		sa := a.stats.Snapshot()
		if sa.AddressesProven != 1 || sa.CookiesSent < c.cookies {
			t.Errorf("dropping %s: the serving node proved %d addresses with %d cookies, want 1 with at least %d",
				c.what, sa.AddressesProven, sa.CookiesSent, c.cookies)
		}
		if r := b.stats.ResyncsReceived.Load(); r != 1 {
			t.Errorf("dropping %s: the joining node received %d resyncs, want its initial sync", c.what, r)
		}
		a.stop()
		b.stop()
	}
}
