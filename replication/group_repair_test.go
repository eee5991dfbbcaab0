package replication

// Loss repair in multicast mode (Config.Group): a receiver waits a random
// back-off before it asks, asks the group, and holds back when it hears
// another receiver ask for what it lacks; the sender resends to the group
// once for every request within GroupHoldoff.

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/wire"
)

var (
	testGroup = netip.MustParseAddrPort("239.1.1.1:3870")
	peerC     = netip.MustParseAddrPort("10.0.0.3:3870")
)

const thirdNode = 3

// groupFixture is a node in multicast mode that knows peerNode (the
// sender, at peerA) and thirdNode (another receiver, at peerC).
func groupFixture(t *testing.T) *receiverFixture {
	t.Helper()
	f := newFixtureWith(t, Config{Group: testGroup})
	f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.handle(peerA, announce(t, peerNode, 1, 1))
	f.handle(peerC, announce(t, thirdNode, 1, 0))
	return f
}

// overheard hands the node a request thirdNode sent to the group for
// peerNode's datagrams.
func (f *receiverFixture) overheard(t *testing.T, now time.Time, ranges ...wire.Range) {
	t.Helper()
	f.dispatch(peerC, nackDatagram(t, thirdNode, wire.Nack{Node: peerNode, Epoch: 1}, ranges...), false, now)
}

// groupNacks returns the ranges of the requests sent since the last look,
// failing on a request sent anywhere but the group.
func (f *receiverFixture) groupNacks(t *testing.T) [][]wire.Range {
	t.Helper()
	return f.nacksTo(t, wire.KindNack, testGroup)
}

// A gap is asked for only after the back-off, to the group; a retry
// follows the interval.
func TestGroupRepairBackoff(t *testing.T) {
	f := groupFixture(t)
	second := f.peerDatagram(t, 1, 2, "key1", "2") // stamped when it was sent, before 3
	t0 := time.Now()
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 3, "key1", "3")) // 2 lost
	if got := f.groupNacks(t); len(got) != 0 {
		t.Fatalf("requests %v at once, want them after a back-off", got)
	}
	limit := 2 * RetryTick // 2 RetryTick × (1 + ln 1): one other receiver
	if b := f.n.peers.byNode[peerNode].stream.askAt.Sub(t0); b < 0 || b > limit {
		t.Fatalf("back-off %v, want within [0, %v]", b, limit)
	}
	f.n.dispatch.onTimers(t0.Add(limit), nil)
	if got := f.groupNacks(t); len(got) != 1 || len(got[0]) != 1 || got[0][0] != (wire.Range{First: 2, Last: 2}) {
		t.Fatalf("requests %v after the back-off, want one for [2,2] to the group", got)
	}
	f.n.dispatch.onTimers(t0.Add(limit+firstRetry/2), nil)
	if got := f.groupNacks(t); len(got) != 0 {
		t.Fatalf("requests %v before the retry interval", got)
	}
	f.n.dispatch.onTimers(t0.Add(2*limit+firstRetry), nil)
	if got := f.groupNacks(t); len(got) != 1 {
		t.Fatalf("requests %v after the retry interval, want one", got)
	}
	f.handle(peerA, retransmitted(second))
	if f.value("key1") != "       3" || f.stats.NacksSent.Load() != 2 {
		t.Errorf("key1 %q after %d requests, want 3 after 2", f.value("key1"), f.stats.NacksSent.Load())
	}
}

// A receiver that hears another ask the group for everything it lacks
// holds its own request back, and asks only if the repair does not come;
// one that lacks more than it heard asked for asks for it.
func TestGroupRepairSuppressed(t *testing.T) {
	f := groupFixture(t)
	t0 := time.Now()
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 4, "key1", "4")) // 2, 3 lost
	f.overheard(t, t0.Add(time.Millisecond), wire.Range{First: 2, Last: 3})
	f.n.dispatch.onTimers(t0.Add(firstRetry), nil)
	if got := f.groupNacks(t); len(got) != 0 || f.stats.NacksSuppressed.Load() != 1 {
		t.Fatalf("requests %v, suppressed %d, want none sent, 1 held back", got, f.stats.NacksSuppressed.Load())
	}
	// The repair of 2 came, 3's was lost: the node asks for 3 itself.
	f.handleAt(t0.Add(2*time.Millisecond), peerA, retransmitted(f.peerDatagram(t, 1, 2, "key1", "2")))
	f.n.dispatch.onTimers(t0.Add(firstRetry+2*RetryTick+10*time.Millisecond), nil)
	if got := f.groupNacks(t); len(got) != 1 || got[0][0] != (wire.Range{First: 3, Last: 3}) {
		t.Fatalf("requests %v once the repair did not come, want [3,3]", got)
	}

	// 6 lost too, but the request heard names only 5: 6 is asked for.
	g := groupFixture(t)
	g.handleAt(t0, peerA, g.peerDatagram(t, 1, 3, "key1", "3"))
	g.handleAt(t0, peerA, g.peerDatagram(t, 1, 5, "key1", "5")) // 2 and 4 lost
	g.overheard(t, t0.Add(time.Millisecond), wire.Range{First: 2, Last: 2})
	g.n.dispatch.onTimers(t0.Add(2*RetryTick), nil)
	if got := g.groupNacks(t); len(got) != 1 || len(got[0]) != 1 || got[0][0] != (wire.Range{First: 4, Last: 4}) {
		t.Fatalf("requests %v, want [4,4] only: 2 was asked for by another", got)
	}
	// A request heard that misses a number lacked here holds nothing back.
	h := groupFixture(t)
	h.handleAt(t0, peerA, h.peerDatagram(t, 1, 4, "key1", "4")) // 2, 3 lost
	h.overheard(t, t0, wire.Range{First: 3, Last: 3})
	h.n.dispatch.onTimers(t0.Add(2*RetryTick), nil)
	if got := h.groupNacks(t); len(got) != 1 || got[0][0] != (wire.Range{First: 2, Last: 3}) || h.stats.NacksSuppressed.Load() != 0 {
		t.Fatalf("requests %v, suppressed %d; want [2,3], 0", got, h.stats.NacksSuppressed.Load())
	}
}

// The sender answers a request that came to the group with one resend to
// the group, however many receivers ask for the same datagrams within
// GroupHoldoff; one sent to it alone is answered to the requester alone;
// and an address that has not proved itself gets a cookie, not a resend.
func TestGroupRepairResendOnce(t *testing.T) {
	f, _ := ownDatagrams(t, 64<<20, 10)
	f.n.dispatch.group = testGroup
	t0 := time.Now()
	for _, p := range []struct {
		node uint32
		addr netip.AddrPort
	}{{peerNode, peerA}, {thirdNode, peerC}} {
		f.handleAt(t0, p.addr, announce(t, p.node, 1, 0))
		f.prove(t, p.addr)
	}
	f.tr.sentTo()
	ask := func(at time.Time, from netip.AddrPort, node uint32, unicast bool, ranges ...wire.Range) map[netip.AddrPort][]uint64 {
		f.dispatch(from, nackDatagram(t, node, wire.Nack{Node: ourNode, Epoch: ourEpoch}, ranges...), unicast, at)
		got := map[netip.AddrPort][]uint64{}
		for _, u := range f.tr.sentTo() {
			for _, d := range u.dgrams {
				var h wire.Header
				if h.Unmarshal(d) == nil && h.Kind == wire.KindChanges && h.Flags == wire.FlagRetransmit {
					got[u.to] = append(got[u.to], h.Seq)
				}
			}
		}
		return got
	}
	if got := ask(t0, peerA, peerNode, false, wire.Range{First: 3, Last: 4}); fmt.Sprint(got) != fmt.Sprint(map[netip.AddrPort][]uint64{testGroup: {3, 4}}) {
		t.Fatalf("resent %v, want 3 and 4 to the group", got)
	}
	if got := ask(t0.Add(GroupHoldoff/2), peerC, thirdNode, false, wire.Range{First: 3, Last: 5}); fmt.Sprint(got) != fmt.Sprint(map[netip.AddrPort][]uint64{testGroup: {5}}) {
		t.Fatalf("resent %v for a second request, want only 5 to the group", got)
	}
	if got := ask(t0.Add(GroupHoldoff), peerC, thirdNode, false, wire.Range{First: 3, Last: 3}); fmt.Sprint(got) != fmt.Sprint(map[netip.AddrPort][]uint64{testGroup: {3}}) {
		t.Fatalf("resent %v after the hold-off, want 3 again", got)
	}
	if got := ask(t0.Add(GroupHoldoff), peerA, peerNode, true, wire.Range{First: 3, Last: 3}); fmt.Sprint(got) != fmt.Sprint(map[netip.AddrPort][]uint64{peerA: {3}}) {
		t.Fatalf("resent %v for a request to this node alone, want 3 to the requester", got)
	}
	if f.stats.DatagramsResent.Load() != 5 {
		t.Errorf("resent %d, want 5", f.stats.DatagramsResent.Load())
	}
	// An address not proved gets no resend, to the group or not (a
	// cookie, if its credit covers one).
	p := f.n.peers.byNode[thirdNode]
	p.proven, p.cookieAt = netip.AddrPort{}, time.Time{}
	if got := ask(t0.Add(time.Second), peerC, thirdNode, false, wire.Range{First: 6, Last: 9}); len(got) != 0 {
		t.Fatalf("resent %v to a requester whose address is not proved", got)
	}
}

// Numbers found missing but not yet asked for when an older gap is given
// up are still asked for: giving up stops the timers, and the gap that
// remains starts them again.
func TestStreamAsksAfterGiveUp(t *testing.T) {
	const wait = 7 * time.Millisecond
	s := newStream(1, maxHeld)
	t0 := time.Now()
	s.sent(5, true, t0, wait) // 1..4 missing
	s.hold(5, []byte{5})
	s.asked(4, t0.Add(wait), wait, false)
	s.sent(8, true, t0.Add(wait+time.Millisecond), wait) // 6 and 7 missing too, not asked yet
	s.hold(8, []byte{8})
	t1 := t0.Add(repairTimeout)
	if r := s.due(t1); r != retryGiveUp {
		t.Fatalf("due %v after the timeout, want give up", r)
	}
	s.giveUp()
	for b := s.release(); b != nil; b = s.release() {
	}
	s.settle(t1, wait)
	if s.next != 6 {
		t.Fatalf("next %d, want 6: 1..4 given up, 5 applied", s.next)
	}
	if r := s.due(t1.Add(wait)); r != retryAsk {
		t.Fatalf("due %v once the back-off passed, want ask: 6 and 7 were never asked for", r)
	}
	var req wire.Nack
	s.missing(s.askedThrough+1, &req)
	if req.N != 1 || req.Ranges[0] != (wire.Range{First: 6, Last: 7}) {
		t.Errorf("asks for %v, want [6,7]", req.Ranges[:req.N])
	}
}
