package replication

// Loss repair against the in-memory fakes of fakes_test.go: datagrams are
// handed to the receiver directly, "lost" ones simply are not, and the
// fake transport records the unicast requests and resends.
// TestRepairOverLossyLink in netns_test.go runs the same over real sockets
// with random loss.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// peerDatagram is change datagram seq of peerNode setting flows key k to
// value v (8 bytes).
func (f *receiverFixture) peerDatagram(t testing.TB, epoch, seq uint64, k, v string) []byte {
	var b changesBuilder
	b.start()
	b.add(t, f.fpFlow, ops.Update, k, fmt.Sprintf("%8s", v))
	return b.finish(peerNode, epoch, seq)
}

// sentSyncStart decodes the last resync answer the node sent by unicast
// since the last look, failing the test on a malformed one; the zero
// answer if it sent none.
func (f *receiverFixture) sentSyncStart(t *testing.T) wire.SyncStart {
	t.Helper()
	var st wire.SyncStart
	for _, u := range f.tr.sentTo() {
		for _, d := range u.dgrams {
			var h wire.Header
			if h.Unmarshal(d) == nil && h.Kind == wire.KindSyncStart {
				if err := st.Unmarshal(d[wire.HeaderSize:]); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return st
}

func retransmitted(d []byte) []byte {
	d = append([]byte(nil), d...)
	d[4] |= wire.FlagRetransmit
	return d
}

// nacks decodes the requests sent so far (and forgets them), failing on
// anything else.
func (f *receiverFixture) nacks(t *testing.T, kind wire.Kind) [][]wire.Range {
	t.Helper()
	return f.nacksTo(t, kind, netip.AddrPort{})
}

// nacksTo is nacks, failing also on a request sent anywhere but to, if
// to is valid.
func (f *receiverFixture) nacksTo(t *testing.T, kind wire.Kind, to netip.AddrPort) [][]wire.Range {
	t.Helper()
	var out [][]wire.Range
	for _, u := range f.tr.sentTo() {
		if to.IsValid() && u.to != to {
			t.Fatalf("sent to %v, want %v", u.to, to)
		}
		for _, d := range u.dgrams {
			var h wire.Header
			var n wire.Nack
			if err := h.Unmarshal(d); err != nil || h.Kind != kind || h.Node != ourNode || h.Epoch != ourEpoch {
				t.Fatalf("sent %+v (%v), want kind %d from us", h, err, kind)
			}
			if err := n.Unmarshal(d[wire.HeaderSize:], h.Count); err != nil {
				t.Fatal(err)
			}
			out = append(out, n.Ranges[:n.N])
		}
	}
	return out
}

func (f *receiverFixture) value(k string) string { return f.flows.state[k] }

// One datagram lost in the middle: the next one is held back, the missing
// one requested, and when the resend arrives both are applied in order,
// so the later value of the key wins.
func TestRepairMiddleLoss(t *testing.T) {
	f := newReceiverFixture(t)
	d := make([][]byte, 5)
	for i := range d {
		d[i] = f.peerDatagram(t, 1, uint64(i+1), "key"+fmt.Sprint(i%3), fmt.Sprint(i+1))
	}
	f.handle(peerA, d[0])
	f.handle(peerA, d[1])
	f.handle(peerA, d[3]) // 3 lost
	f.handle(peerA, d[4])
	if got := f.nacks(t, wire.KindNack); len(got) != 1 || got[0][0] != (wire.Range{First: 3, Last: 3}) || len(got[0]) != 1 {
		t.Fatalf("requests %v, want one for [3,3]", got)
	}
	if s := f.stats.Snapshot(); s.Held != 2 || s.GapsSeen != 1 {
		t.Fatalf("held %d gaps %d, want 2, 1", s.Held, s.GapsSeen)
	}
	if got := f.value("key0"); got != "       1" {
		t.Fatalf("key0 = %q before the gap is filled: datagram 4 was applied before 3", got)
	}
	f.handle(peerA, retransmitted(d[2]))
	for k, want := range map[string]string{"key0": "       4", "key1": "       5", "key2": "       3"} {
		if got := f.value(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	f.handle(peerA, d[2]) // the original, late
	s := f.stats.Snapshot()
	if s.Repaired != 1 || s.Held != 0 || s.Duplicates != 1 || s.ResyncNeeded != 0 || s.NacksSent != 1 || s.RangesRequested != 1 {
		t.Errorf("stats %+v, want 1 repaired, 0 held, 1 duplicate, 1 request of 1 range", s)
	}
}

// The tail of a burst is lost: only the heartbeat shows it.
func TestRepairTailByHeartbeat(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.handle(peerA, announce(t, peerNode, 1, 1))
	if got := f.nacks(t, wire.KindNack); len(got) != 0 {
		t.Fatalf("requests %v with nothing missing", got)
	}
	f.handle(peerA, announce(t, peerNode, 1, 3))
	if got := f.nacks(t, wire.KindNack); len(got) != 1 || got[0][0] != (wire.Range{First: 2, Last: 3}) {
		t.Fatalf("requests %v, want [2,3]", got)
	}
	f.handle(peerA, retransmitted(f.peerDatagram(t, 1, 2, "key1", "2")))
	f.handle(peerA, retransmitted(f.peerDatagram(t, 1, 3, "key1", "3")))
	if got := f.value("key1"); got != "       3" {
		t.Errorf("key1 = %q, want 3", got)
	}
}

// Requests are repeated with growing intervals until the gap is filled or
// the repair timeout passes; then the gap is given up, what was held
// behind it applied and a full resync from the peer requested. A gap
// behind that waits for the resync's answer, then gets its own time.
func TestRepairRetryAndGiveUp(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 3, "key3", "3"))
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 5, "key5", "5"))
	if got := f.nacks(t, wire.KindNack); len(got) != 2 {
		t.Fatalf("requests %v, want one per new gap", got)
	}
	f.n.dispatch.onTimers(t0.Add(firstRetry/2), nil)
	if got := f.nacks(t, wire.KindNack); len(got) != 0 {
		t.Fatalf("requests %v before the first retry is due", got)
	}
	f.n.dispatch.onTimers(t0.Add(firstRetry), nil)
	got := f.nacks(t, wire.KindNack)
	if len(got) != 1 || len(got[0]) != 2 || got[0][0] != (wire.Range{First: 2, Last: 2}) || got[0][1] != (wire.Range{First: 4, Last: 4}) {
		t.Fatalf("retry %v, want [2,2] [4,4]", got)
	}
	f.n.dispatch.onTimers(t0.Add(firstRetry+firstRetry), nil) // the interval doubled: not yet
	if got := f.nacks(t, wire.KindNack); len(got) != 0 {
		t.Fatalf("requests %v before the doubled interval passed", got)
	}
	t1 := t0.Add(repairTimeout)
	f.n.dispatch.onTimers(t1, nil)
	s := f.stats.Snapshot()
	if s.ResyncNeeded != 1 || f.value("key3") != "       3" {
		t.Fatalf("after the timeout: resync_needed %d, key3 %q; want 1 and datagram 3 applied", s.ResyncNeeded, f.value("key3"))
	}
	if f.value("key5") != "" {
		t.Fatal("datagram 5 applied although 4 is still being repaired")
	}
	if f.n.client.phase != syncRequested || len(f.tr.sentTo()) != 1 {
		t.Fatal("no full resync requested after giving up")
	}
	f.n.dispatch.onTimers(t1.Add(repairTimeout), nil)
	if s := f.stats.Snapshot(); s.ResyncNeeded != 1 || f.value("key5") != "" {
		t.Fatalf("the second gap was given up while the resync request waits: resync_needed %d key5 %q", s.ResyncNeeded, f.value("key5"))
	}
	// The peer read its maps after datagram 3: 4 is still missing.
	t2 := t1.Add(repairTimeout + time.Millisecond)
	f.handleAt(t2, peerA, f.syncStart(wire.SyncStart{AsOf: 3}))
	f.n.dispatch.onTimers(t2.Add(repairTimeout), nil)
	if s := f.stats.Snapshot(); s.ResyncNeeded != 2 || s.Held != 0 || f.value("key5") != "       5" {
		t.Errorf("after the second timeout: resync_needed %d held %d key5 %q; want 2, 0, applied", s.ResyncNeeded, s.Held, f.value("key5"))
	}
}

// More datagrams behind a gap than the receive window takes: those beyond
// it are dropped and counted, asked for again as soon as the gap is
// filled, and nothing is given up.
func TestRepairHoldFull(t *testing.T) {
	f := newReceiverFixture(t)
	w := f.n.dispatch.window
	f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	second := f.peerDatagram(t, 1, 2, "key1", "2") // stamped when it was sent, before 3
	for seq := uint64(3); seq <= w+1; seq++ {      // all the window takes while 2 is missing
		f.handle(peerA, f.peerDatagram(t, 1, seq, "key1", fmt.Sprint(seq)))
	}
	f.handle(peerA, f.peerDatagram(t, 1, w+2, "key1", "last"))
	if s := f.stats.Snapshot(); s.Held != w-1 || s.HoldFull != 1 || s.ResyncNeeded != 0 {
		t.Fatalf("held %d hold_full %d resync_needed %d, want %d, 1, 0", s.Held, s.HoldFull, s.ResyncNeeded, w-1)
	}
	f.nacks(t, wire.KindNack)
	f.handle(peerA, retransmitted(second))
	if got := f.value("key1"); got != fmt.Sprintf("%8d", w+1) {
		t.Fatalf("key1 = %q once the gap was filled, want %d", got, w+1)
	}
	// The window moved over w+2: it is asked for at once.
	if got := f.nacks(t, wire.KindNack); len(got) != 1 || len(got[0]) != 1 || got[0][0] != (wire.Range{First: w + 2, Last: w + 2}) {
		t.Fatalf("requests %v, want the dropped datagram %d", got, w+2)
	}
	f.handle(peerA, retransmitted(f.peerDatagram(t, 1, w+2, "key1", "last")))
	if s := f.stats.Snapshot(); s.ResyncNeeded != 0 || s.Held != 0 || f.value("key1") != "    last" {
		t.Errorf("resync_needed %d held %d key1 %q, want 0, 0, the last value", s.ResyncNeeded, s.Held, f.value("key1"))
	}
}

// A peer that restarted numbers from 1 again: whatever came before its
// first datagram we heard in the new epoch is requested.
func TestRepairNewEpochFromOne(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, f.peerDatagram(t, 1, 50, "key1", "1")) // joined mid-stream: no request
	if got := f.nacks(t, wire.KindNack); len(got) != 0 {
		t.Fatalf("requests %v for a peer first heard mid-stream", got)
	}
	f.handle(peerA, f.peerDatagram(t, 2, 4, "key1", "2"))
	got := f.nacks(t, wire.KindNack)
	if len(got) != 1 || got[0][0] != (wire.Range{First: 1, Last: 3}) {
		t.Fatalf("requests %v, want [1,3] of the new epoch", got)
	}
	// A resend of the old epoch is not applied.
	f.handle(peerA, retransmitted(f.peerDatagram(t, 1, 49, "key1", "old")))
	if f.value("key1") != "       1" {
		t.Errorf("key1 = %q, want the value of the old epoch's datagram 50, still", f.value("key1"))
	}
	// Nor is a late original of the old epoch, and it does not reset the
	// peer: the new epoch's held datagram 4 applies once 1 to 3 arrive.
	f.handle(peerA, f.peerDatagram(t, 1, 51, "key1", "late"))
	for seq := uint64(1); seq <= 3; seq++ {
		f.handle(peerA, retransmitted(f.peerDatagram(t, 2, seq, "key2", fmt.Sprint(seq))))
	}
	if f.value("key1") != "       2" || f.value("key2") != "       3" {
		t.Errorf("key1, key2 = %q, %q; want the new epoch's 2 and 3", f.value("key1"), f.value("key2"))
	}
}

// ownDatagrams returns a fixture whose resend buffer of size bytes holds
// n change datagrams of ourNode.
func ownDatagrams(t *testing.T, size, n int) (*receiverFixture, *resendBuffer) {
	t.Helper()
	f := newFixtureWith(t, Config{ResendBytes: size})
	rs := f.n.resend
	for seq := 1; seq <= n; seq++ {
		var b changesBuilder
		b.start()
		b.add(t, f.fpFlow, ops.Update, "key1", fmt.Sprintf("%8d", seq))
		rs.add(uint64(seq), b.finish(ourNode, ourEpoch, uint64(seq)))
	}
	return f, rs
}

// request hands the node a request of kind from peerNode, which has
// announced itself first: requests are answered only to known peers.
func (f *receiverFixture) request(t *testing.T, kind wire.Kind, node uint32, epoch uint64, ranges ...wire.Range) {
	if len(f.n.Peers()) == 0 {
		f.handle(peerA, announce(t, peerNode, 1, 0))
		f.prove(t, peerA)
	}
	n := wire.Nack{Node: node, Epoch: epoch, N: len(ranges)}
	copy(n.Ranges[:], ranges)
	h := wire.Header{Kind: kind, Count: uint16(n.N), Node: peerNode, Epoch: 1}
	d := make([]byte, wire.HeaderSize)
	_, _ = h.AppendTo(d[:0])
	d, err := n.AppendTo(d)
	if err != nil {
		t.Fatal(err)
	}
	f.handle(peerA, d)
}

// A request is answered by unicast with the datagrams verbatim, flagged as
// resent; one request cannot make us resend more than maxResendPerNack.
func TestServeNackLimited(t *testing.T) {
	f, rs := ownDatagrams(t, 64<<20, 3000)
	f.request(t, wire.KindNack, ourNode, ourEpoch, wire.Range{First: 2, Last: 2}, wire.Range{First: 10, Last: 1 << 40})
	total := 0
	for i, u := range f.tr.sentTo() {
		if u.to != peerA {
			t.Fatalf("resent to %s, want %s", u.to, peerA)
		}
		for j, d := range u.dgrams {
			var h wire.Header
			if err := h.Unmarshal(d); err != nil || h.Kind != wire.KindChanges || h.Flags != wire.FlagRetransmit {
				t.Fatalf("resend %+v: %v", h, err)
			}
			want := uint64(10 + total - 1)
			if i == 0 && j == 0 {
				want = 2
			}
			orig, _ := rs.copyOut(h.Seq, nil)
			d[4] &^= wire.FlagRetransmit
			if h.Seq != want || string(orig) != string(d) {
				t.Fatalf("resend %d is seq %d (same bytes: %v), want seq %d verbatim", total, h.Seq, string(orig) == string(d), want)
			}
			total++
		}
	}
	if total != maxResendPerNack || f.stats.DatagramsResent.Load() != maxResendPerNack {
		t.Errorf("resent %d (counted %d), want the limit %d", total, f.stats.DatagramsResent.Load(), maxResendPerNack)
	}
	// Not our node: dropped as malformed, nothing sent.
	f.request(t, wire.KindNack, 99, ourEpoch, wire.Range{First: 1, Last: 5})
	if u := f.tr.sentTo(); len(u) != 0 || f.stats.Malformed.Load() != 1 {
		t.Errorf("request for another node: sent %d, malformed %d; want nothing, 1", len(u), f.stats.Malformed.Load())
	}
}

// What the resend buffer no longer holds is answered as gone; the
// requester then gives up on it, counts a needed resync and goes on.
func TestNackEvictedGone(t *testing.T) {
	server, rs := ownDatagrams(t, 4*testPayload, 200) // holds only the latest few
	first, _, _ := rs.held()
	if first < 10 {
		t.Fatalf("resend buffer still holds seq %d; make it smaller", first)
	}
	server.request(t, wire.KindNack, ourNode, ourEpoch, wire.Range{First: 3, Last: first})
	var gone *wire.Nack
	resent := 0
	for _, u := range server.tr.sentTo() {
		for _, d := range u.dgrams {
			var h wire.Header
			_ = h.Unmarshal(d)
			switch h.Kind {
			case wire.KindGone:
				gone = new(wire.Nack)
				if err := gone.Unmarshal(d[wire.HeaderSize:], h.Count); err != nil {
					t.Fatal(err)
				}
			case wire.KindChanges:
				resent++
			}
		}
	}
	if gone == nil || gone.N != 1 || gone.Ranges[0] != (wire.Range{First: 3, Last: first - 1}) || gone.Node != ourNode || gone.Epoch != ourEpoch {
		t.Fatalf("gone %+v, want [3,%d] of our node and epoch", gone, first-1)
	}
	if resent != 1 {
		t.Errorf("resent %d, want 1 (seq %d)", resent, first)
	}

	// The requester's side: peerNode lost 2..4 and holds 5.
	f := newReceiverFixture(t)
	f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.handle(peerA, f.peerDatagram(t, 1, 5, "key5", "5"))
	f.nacks(t, wire.KindNack)
	h := wire.Header{Kind: wire.KindGone, Count: 1, Node: peerNode, Epoch: 1}
	d := make([]byte, wire.HeaderSize)
	_, _ = h.AppendTo(d[:0])
	n := wire.Nack{Node: peerNode, Epoch: 1, N: 1, Ranges: [wire.MaxNackRanges]wire.Range{{First: 2, Last: 4}}}
	d, _ = n.AppendTo(d)
	f.handle(peerA, d)
	if s := f.stats.Snapshot(); s.ResyncNeeded != 1 || s.Held != 0 || f.value("key5") != "       5" {
		t.Errorf("after gone: resync_needed %d held %d key5 %q; want 1, 0, applied", s.ResyncNeeded, s.Held, f.value("key5"))
	}
}

// The resend buffer finds datagrams by sequence number across wrap-arounds
// and evicts exactly the oldest.
func TestResendRing(t *testing.T) {
	rs, err := newResendBuffer(1000, 100)
	if err != nil {
		t.Fatal(err)
	}
	// The first three and every seventh seq are recorded as lost (an
	// empty datagram): they hold no bytes, and must not let the datagram
	// after them be overwritten when they are the oldest.
	lost := func(seq uint64) bool { return seq <= 3 || seq%7 == 0 }
	for seq := uint64(1); seq <= 500; seq++ {
		var d []byte
		if !lost(seq) {
			d = bytes.Repeat([]byte{byte(seq)}, int(40+seq%50))
			binary.BigEndian.PutUint64(d, seq)
		}
		rs.add(seq, d)
		first, last, _ := rs.held()
		if last != seq {
			t.Fatalf("after adding %d the buffer ends at %d", seq, last)
		}
		used := 0
		for s := first; s <= last; s++ {
			got, ok := rs.copyOut(s, nil)
			if lost(s) {
				if ok {
					t.Fatalf("after adding %d: seq %d, recorded lost, reads back as %x", seq, s, got)
				}
				continue
			}
			if !ok || binary.BigEndian.Uint64(got) != s || len(got) != int(40+s%50) || bytes.Count(got[8:], []byte{byte(s)}) != len(got)-8 {
				t.Fatalf("after adding %d: seq %d held %v, reads back as %x", seq, s, ok, got)
			}
			used += len(got)
		}
		if used > 1000 {
			t.Fatalf("after adding %d: %d bytes held in a 1000-byte arena", seq, used)
		}
		// At most one datagram's worth is skipped at the end of the arena
		// and at most one more lies free in front of the oldest (a lost
		// oldest may go early: it holds nothing).
		if used+2*90 < 1000 && first > 1 && !lost(first-1) {
			t.Fatalf("after adding %d: evicted down to %d with only %d bytes in use", seq, first, used)
		}
		if _, ok := rs.copyOut(first-1, nil); ok && first > 1 {
			t.Fatalf("seq %d still readable after eviction", first-1)
		}
	}
}

// A "gone" for a range gives up only what is missing in it: what was held
// inside the range is applied, in order. The node still serves that peer
// a resync: only the changes of other peers would make its snapshot stale.
func TestGoneKeepsHeld(t *testing.T) {
	f, _ := ownDatagrams(t, 1<<20, 0)
	f.n.ready.become("test", 0)
	t0 := time.Now().Add(-time.Hour) // the peer is long established
	f.handleAt(t0, peerA, announce(t, peerNode, 1, 0))
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 3, "key3", "3"))
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 5, "key5", "5"))
	f.handle(peerA, goneDatagram(2, 4))
	if f.value("key3") != "       3" || f.value("key5") != "       5" || f.stats.Held.Load() != 0 {
		t.Fatalf("key3 %q key5 %q held %d after gone [2,4]: want both applied, nothing held",
			f.value("key3"), f.value("key5"), f.stats.Held.Load())
	}
	f.tr.sentTo()
	f.handle(peerA, syncRequest(peerNode, 1, 7))
	st := f.sentSyncStart(t)
	if st.Status != wire.SyncOK {
		t.Errorf("sync start %+v, want OK: only the requester's own changes were given up", st)
	}
}

// Flow control: a peer's repair request for a datagram about to leave the
// resend buffer, or far behind the latest, holds the sender back while it
// is fresh; a request for a recent one does not, and neither does one past
// its bounds.
func TestResendHoldBack(t *testing.T) {
	b, err := newResendBuffer(100*testPayload, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	b.lag = 40
	d := make([]byte, testPayload)
	for seq := uint64(1); seq <= 100; seq++ {
		b.add(seq, d)
	}
	first, last, _ := b.held()
	t0 := time.Now()
	if b.pressed.Load() || b.holdBack(t0) {
		t.Fatal("held back with no request")
	}
	b.asked(1, last-5, t0)
	if !b.pressed.Load() || b.holdBack(t0) {
		t.Error("a request for a recent datagram held the sender back, or was not recorded")
	}
	b.asked(1, first+1, t0) // near eviction
	if !b.holdBack(t0.Add(needFresh - time.Millisecond)) {
		t.Error("a fresh request for a datagram about to be evicted did not hold the sender back")
	}
	if b.holdBack(t0.Add(needFresh+time.Millisecond)) || b.pressed.Load() {
		t.Error("a stale request still held the sender back")
	}
	b.asked(1, last-50, t0) // behind by more than lag
	if !b.holdBack(t0.Add(lagHold - time.Millisecond)) {
		t.Error("a request from a peer lagging behind did not hold the sender back")
	}
	if b.holdBack(t0.Add(lagHold + time.Millisecond)) {
		t.Error("a lagging peer's request held the sender back past lagHold")
	}
	for i := range maxNeed / (needFresh / 2) {
		b.asked(2, first, t0.Add(time.Duration(i)*needFresh/2)) // asked again and again
	}
	if at := t0.Add(maxNeed + time.Millisecond); b.holdBack(at) {
		t.Error("one datagram asked for again and again held the sender back past maxNeed")
	}
}

// Missing datagrams given up with nothing held behind them leave a full
// resync owed, and the claim that showed them missing forgotten, so the
// peer's lag reads 0: the status must still say the node is behind it
// until the resync has run. It did not, and `udpmapsync status` said "in
// sync" for as long as the resync could not run (a partition: simulated
// seed 121), so a failover manager could pick a node that had lost the
// peer's changes.
func TestGivenUpGapLeavesResyncOwed(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.handleAt(t0, peerA, announce(t, peerNode, 1, 3)) // 2 and 3 missing, nothing held
	f.n.dispatch.onTimers(t0.Add(repairTimeout+time.Millisecond), nil)
	if f.stats.ResyncNeeded.Load() != 1 {
		t.Fatalf("resync_needed %d, want the gap given up", f.stats.ResyncNeeded.Load())
	}
	p := f.n.Peers()
	if len(p) != 1 || !p[0].ResyncOwed {
		t.Fatalf("after the gap was given up: %+v; want a resync from node %d owed", p, peerNode)
	}
}

// The resend buffer is sized by time: a sender whose rounds of the arena
// take less than resendKeep grows into the whole arena, a slower one
// stays within resendStep, and every datagram held, across the growth,
// is the one added under its number.
func TestResendSizedByTime(t *testing.T) {
	const size = 1400
	for _, tc := range []struct {
		name      string
		each      time.Duration // between two datagrams
		min, most int           // bytes held at the end
	}{
		{"fast", time.Microsecond, 3*resendStep + resendStep/2, 4 * resendStep},
		{"slow", time.Millisecond, resendStep - resendStep/8, resendStep},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := newResendBuffer(4*resendStep, size)
			if err != nil {
				t.Fatal(err)
			}
			clock := &fixedTime{now: time.Unix(1, 0)}
			b.time = clock
			d := make([]byte, size)
			last := uint64(3 * 4 * resendStep / size)
			for seq := uint64(1); seq <= last; seq++ {
				binary.BigEndian.PutUint64(d, seq)
				b.add(seq, d)
				clock.now = clock.now.Add(tc.each)
			}
			first, top, ok := b.held()
			if !ok || top != last {
				t.Fatalf("held up to %d (%v), want %d", top, ok, last)
			}
			if held := int(top-first+1) * size; held < tc.min || held > tc.most {
				t.Errorf("holds %d bytes, want %d to %d", held, tc.min, tc.most)
			}
			for seq := first; seq <= top; seq++ {
				got, ok := b.copyOut(seq, nil)
				if !ok || len(got) != size {
					t.Fatalf("datagram %d: held %v, %d bytes; want %d", seq, ok, len(got), size)
				}
				if n := binary.BigEndian.Uint64(got); n != seq {
					t.Fatalf("datagram %d holds the bytes of %d", seq, n)
				}
			}
		})
	}
}

// A peer that keeps asking for the oldest datagram, again once its need
// expired, holds the sender back for maxNeed, then for at most
// 1/holdShare of the time: renewed, maxNeed per datagram was no bound,
// and the sender waited for it for ever. Another peer's request is
// not charged with what the first one spent.
func TestResendHoldBackShare(t *testing.T) {
	b, err := newResendBuffer(100*testPayload, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	d := make([]byte, testPayload)
	for seq := uint64(1); seq <= 100; seq++ {
		b.add(seq, d)
	}
	first, _, _ := b.held()
	t0 := time.Now()
	const span = 60 * time.Second
	const step = 10 * time.Millisecond
	held := time.Duration(0)
	for at := time.Duration(0); at < span; at += step {
		if at%(100*time.Millisecond) == 0 {
			b.asked(1, first, t0.Add(at)) // the sender waits, so the oldest stays the oldest
		}
		if b.holdBack(t0.Add(at)) {
			held += step
		}
		if at == maxNeed-step && held != maxNeed {
			t.Fatalf("held back %v of the first %v, want all of it: a request within its credit holds", held, maxNeed)
		}
	}
	if most := maxNeed + (span-maxNeed)/holdShare + time.Second; held > most {
		t.Errorf("one peer asking for the same datagram for %v held the sender back %v, more than %v", span, held, most)
	}
	if node, ok := b.takeOverShare(); !ok || node != 1 {
		t.Errorf("over its share: peer %d (%v), want 1", node, ok)
	}
	if _, ok := b.takeOverShare(); ok {
		t.Error("takeOverShare reported a peer twice")
	}
	at := t0.Add(span)
	b.asked(2, first, at)
	if !b.holdBack(at) {
		t.Error("another peer's request did not hold the sender back")
	}
}
