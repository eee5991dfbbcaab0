package replication

// The input boundary: datagrams an attacker on the link could craft from
// wire/FORMAT.md alone, each against the in-memory fakes of fakes_test.go.
// Every test here stood for a hang, an unbounded allocation or lost
// replication in the receiver before the receive side was restructured.

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// within fails the test if fn does not return within a few seconds: the
// bugs these tests pin down were endless loops.
func within(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return: the receiver hangs", what)
	}
}

// A change datagram numbered near 2^64 from a new node, then an announce
// of 2^64-1, made the repair loop count towards a number it could never
// pass, with the receive lock held: replication stopped and SIGTERM no
// longer ended the daemon. Both are now malformed: no sender numbers that
// high.
func TestSequenceEndOfRange(t *testing.T) {
	f := newReceiverFixture(t)
	within(t, "handling end-of-range sequence numbers", func() {
		f.handle(peerA, f.peerDatagram(t, 1, math.MaxUint64-5, "key1", "1"))
		f.handle(peerA, announce(t, peerNode, 1, math.MaxUint64))
		f.handle(peerB, announce(t, 9, 1, wire.MaxSeq+1))
		f.n.dispatch.onTimers(time.Now().Add(repairTimeout), nil)
	})
	if s := f.stats.Snapshot(); s.Malformed != 3 || s.NacksSent != 0 {
		t.Errorf("malformed %d nacks %d, want 3 and 0", s.Malformed, s.NacksSent)
	}
	f.untouched(t)
	if p := f.n.Peers(); len(p) != 0 {
		t.Errorf("peers %+v from end-of-range datagrams", p)
	}
	// The largest number a sender may use is taken (by a node that waits
	// for its initial sync, which takes a new peer's stream as it finds it).
	f = newReceiverFixture(t)
	f.handle(peerA, f.peerDatagram(t, 1, wire.MaxSeq, "key1", "max"))
	if f.value("key1") != "     max" {
		t.Errorf("key1 = %q, want the datagram numbered MaxSeq applied", f.value("key1"))
	}
}

// One datagram far ahead of a peer's stream, with the peer's own address
// (spoofed), made the receiver take everything up to it as missing, give
// it up at the repair timeout and skip past it: every real datagram of the
// peer was then dropped as a duplicate.
func TestFarAheadDatagramSkipsNothing(t *testing.T) {
	for _, forge := range []struct {
		name string
		d    func(f *receiverFixture) []byte
	}{
		{"change datagram", func(f *receiverFixture) []byte { return f.peerDatagram(t, 1, 1<<40, "key9", "forged") }},
		{"announce", func(*receiverFixture) []byte { return readyAnnounce(t, peerNode, 1, 1<<40) }},
	} {
		t.Run(forge.name, func(t *testing.T) {
			f := newReceiverFixture(t)
			t0 := time.Now()
			f.handleAt(t0, peerA, f.peerDatagram(t, 1, 10, "key1", "10"))
			f.handleAt(t0, peerA, forge.d(f))
			// The claim is not repaired in time: given up, with nothing
			// skipped, and a full resync asked of the peer, which answers.
			f.n.dispatch.onTimers(t0.Add(repairTimeout), nil)
			t1 := t0.Add(repairTimeout)
			f.handleAt(t1, peerA, f.peerDatagram(t, 1, 11, "key1", "11"))
			if f.n.client.phase != syncRequested {
				t.Fatalf("phase %d, want a resync requested", f.n.client.phase)
			}
			f.handleAt(t1, peerA, f.syncStart(wire.SyncStart{AsOf: 10}))
			f.handleAt(t1, peerA, f.snapshotDatagram(t, f.n.client.id, 1, "key1"))
			f.handleAt(t1, peerA, syncEnd(f.n.client.id, 1))
			if got := f.value("key1"); got != "      11" || f.stats.Duplicates.Load() != 0 {
				t.Errorf("key1 = %q, duplicates %d after the peer's next real datagram, want 11 and 0 (stats %+v)",
					got, f.stats.Duplicates.Load(), f.stats.Snapshot())
			}
			if f.value("key9") != "" {
				t.Error("the far-ahead datagram was applied")
			}
		})
	}
}

// snapshotFixture is a fixture with a resync from peerNode under way: the
// request answered, snapshot datagrams expected.
func snapshotFixture(t *testing.T) (*receiverFixture, uint32) {
	f := newReceiverFixture(t)
	f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	p := f.n.peers.byNode[peerNode]
	f.n.client.begin(p, time.Now())
	f.handle(peerA, f.syncStart(wire.SyncStart{AsOf: 1}))
	if f.n.client.phase != syncStreaming {
		t.Fatalf("phase %d, want streaming", f.n.client.phase)
	}
	return f, f.n.client.id
}

// snapshotDatagram is datagram n of snapshot id, setting flows key k.
//
// Its record carries an old stamp, as a snapshot's entries do: the live
// changes after the snapshot's as-of are newer.
func (f *receiverFixture) snapshotDatagram(t testing.TB, id, n uint32, k string) []byte {
	t.Helper()
	var b changesBuilder
	b.start()
	if !b.w.Append(f.fpFlow, ops.Update, uint64(hlc.Make(1_600_000_000_000, 0)), testWriter, []byte(k), []byte("snapshot")) {
		t.Fatal("test datagram full")
	}
	return b.finishKind(wire.KindSnapshot, peerNode, 1, wire.SyncSeq(id, n))
}

// syncEnd is the end datagram of snapshot id, the last numbered n.
func syncEnd(id, n uint32) []byte {
	h := wire.Header{Kind: wire.KindSyncEnd, Node: peerNode, Epoch: 1, Seq: wire.SyncSeq(id, n)}
	d, _ := h.AppendTo(nil)
	return d
}

// Snapshot datagram numbers sized a bitmap (2^32-1 allocated 512 MiB) and
// bounded loops (an end numbered 0xFFFFFFFF looped forever). Numbers past
// the transfer window are now refused, and the window's state has a fixed
// size.
func TestSnapshotNumbersBounded(t *testing.T) {
	f, id := snapshotFixture(t)
	var before, after testingMemStats
	before.read()
	within(t, "handling far snapshot numbers", func() {
		f.handle(peerA, f.snapshotDatagram(t, id, math.MaxUint32, "big"))
		f.handle(peerA, f.snapshotDatagram(t, id, transferWindow+1, "past"))
		f.handle(peerA, syncEnd(id, math.MaxUint32))
		f.n.dispatch.onTimers(time.Now(), nil)
	})
	after.read()
	if grown := int64(after.heap) - int64(before.heap); grown > 64<<20 {
		t.Errorf("the heap grew by %d MiB", grown>>20)
	}
	if s := f.stats.Snapshot(); s.Malformed != 3 {
		t.Errorf("malformed %d, want 3", s.Malformed)
	}
	if f.value("big") != "" || f.value("past") != "" {
		t.Error("a snapshot record past the window was applied")
	}
	// The real snapshot still completes.
	f.handle(peerA, f.snapshotDatagram(t, id, 1, "key2"))
	f.handle(peerA, syncEnd(id, 1))
	if f.n.client.phase != syncIdle || f.stats.ResyncsReceived.Load() != 1 || f.value("key2") != "snapshot" {
		t.Errorf("phase %d resyncs %d key2 %q: the real snapshot did not complete", f.n.client.phase,
			f.stats.ResyncsReceived.Load(), f.value("key2"))
	}
}

// An answer to a resync request that claims the snapshot stands far past
// anything the peer sent would make the stream skip the peer's real
// datagrams; it is refused and the resync asked for again.
func TestResyncAnswerImplausible(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	p := f.n.peers.byNode[peerNode]
	f.n.client.begin(p, time.Now())
	f.handle(peerA, f.syncStart(wire.SyncStart{AsOf: 1 << 40}))
	if f.n.client.phase != syncIdle || f.stats.Malformed.Load() != 1 {
		t.Fatalf("phase %d malformed %d, want idle and 1", f.n.client.phase, f.stats.Malformed.Load())
	}
	f.handle(peerA, f.peerDatagram(t, 1, 2, "key1", "2"))
	if f.value("key1") != "       2" {
		t.Errorf("key1 = %q, want the peer's next datagram applied", f.value("key1"))
	}
}

// A ready peer that died kept being the resync source, so a node started
// after it never became ready. Silent peers are now forgotten, and the
// starting node decides alone once no ready peer is left.
func TestSilentPeerForgotten(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.n.ready.started = t0
	f.handleAt(t0, peerA, readyAnnounce(t, peerNode, 1, 0))
	silence := max(peerSilence*DefaultAnnounceInterval, minPeerSilence)
	f.n.dispatch.onTimers(t0.Add(silence-time.Millisecond), nil)
	if len(f.n.Peers()) != 1 {
		t.Fatal("peer forgotten before its silence ran out")
	}
	f.n.dispatch.onTimers(t0.Add(silence), nil)
	if len(f.n.Peers()) != 0 || f.stats.PeersExpired.Load() != 1 {
		t.Fatalf("peers %+v expired %d after the silence, want none and 1", f.n.Peers(), f.stats.PeersExpired.Load())
	}
	// It was asked for the initial sync, which was abandoned with it.
	f.n.dispatch.onTimers(t0.Add(silence+syncRetryWait), nil)
	if !f.n.ready.isReady() {
		t.Error("not ready with no peer left")
	}
}

// A stream of datagrams from ever new node ids grew the peer table without
// bound; the table holds maxPeers, and the log says so once a second.
func TestPeersBounded(t *testing.T) {
	f := newReceiverFixture(t)
	for node := uint32(100); node < 100+maxPeers+50; node++ {
		f.handle(peerB, announce(t, node, 1, 0))
	}
	if n, dropped := len(f.n.Peers()), f.stats.PeerLimit.Load(); n != maxPeers || dropped != 50 {
		t.Errorf("%d peers, %d dropped; want %d and 50", n, dropped, maxPeers)
	}
	if n := countLines(f.logs.String(), "new peer"); n > burst(reasonPeer)+1 {
		t.Errorf("%d lines about new peers from one burst of %d, want them rate-limited", n, maxPeers+50)
	}
}

// Requests from an address that never announced itself are not answered:
// a forged source address cannot make this node send to a third party.
func TestRequestsOnlyFromKnownPeers(t *testing.T) {
	f, _ := ownDatagrams(t, 1<<20, 100)
	victim := netip.MustParseAddrPort("10.0.0.99:3870")
	nack := wire.Nack{Node: ourNode, Epoch: ourEpoch, N: 1, Ranges: [wire.MaxNackRanges]wire.Range{{First: 1, Last: 100}}}
	h := wire.Header{Kind: wire.KindNack, Count: 1, Node: 77, Epoch: 1}
	d, _ := h.AppendTo(nil)
	d, _ = nack.AppendTo(d)
	f.handle(victim, d)
	f.handle(victim, syncRequest(77, 1, 5))
	// A known node id from another address is forged, whatever it asks.
	f.handle(peerA, announce(t, peerNode, 1, 0))
	h.Node = peerNode
	d, _ = h.AppendTo(d[:0])
	d, _ = nack.AppendTo(d)
	f.handle(victim, d)
	if u := f.tr.sentTo(); len(u) != 0 {
		t.Errorf("sent %d answers to addresses that never announced themselves", len(u))
	}
	if s := f.stats.Snapshot(); s.Unsolicited != 2 || s.Forged != 1 {
		t.Errorf("unsolicited %d forged %d, want 2 and 1", s.Unsolicited, s.Forged)
	}
}

// A transfer still streaming when the node stops is joined before Run
// returns, so the caller can close the maps it reads.
func TestRunJoinsTransfers(t *testing.T) {
	var dumping atomic.Int32
	slow := &slowTarget{fakeTarget: newFakeTarget(4, 8), dumping: &dumping}
	for i := range 5000 {
		slow.state[fmt.Sprintf("%04d", i)] = "valuevalue"[:8]
	}
	tab := mustTable(t, testPayload, testMap("flows", 10, 4, 8, slow))
	tr := newFakeTransport()
	n := newTestNode(t, Config{Table: tab, Transport: tr, AnnounceInterval: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	<-n.Ready()
	tr.in <- packet(peerA, announce(t, peerNode, 1, 0))
	tr.in <- packet(peerA, syncRequest(peerNode, 1, 5))
	// Answered with a cookie: echo it, and ask again.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if c := tr.sentCookies(); len(c) > 0 {
			tr.in <- packet(peerA, echoOf(t, c[0].dgrams[0], peerNode, 1))
			tr.in <- packet(peerA, syncRequest(peerNode, 1, 5))
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no cookie for the request")
		}
	}
	for deadline := time.Now().Add(5 * time.Second); dumping.Load() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no transfer started")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if dumping.Load() != 0 {
		t.Error("Run returned while a transfer still read the map")
	}
}

// A node just heard that says it no longer holds what was asked ("gone")
// is not asked for a resync at once: it must have been heard for a while
// first, or its address must echo a cookie. An impostor that announced
// itself a moment ago from a forged address cannot have a node hand it a
// resync request, and with it the request id.
func TestGoneFromNewPeerWaitsToBeEstablished(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	for _, d := range [][]byte{readyAnnounce(t, peerNode, 1, 0), f.peerDatagram(t, 1, 1, "key1", "1"),
		f.peerDatagram(t, 1, 3, "key3", "3"), goneDatagram(2, 2)} {
		f.dispatch(peerA, d, true, t0) // no cookie echoed: the address proves nothing
	}
	f.n.dispatch.onTimers(t0.Add(time.Millisecond), nil)
	if f.n.client.phase != syncIdle {
		t.Fatal("a resync was asked of a peer heard a moment ago")
	}
	f.n.dispatch.onTimers(t0.Add(trustAfter*DefaultAnnounceInterval), nil)
	if f.n.client.phase != syncRequested {
		t.Errorf("phase %d once the peer was heard long enough, want a resync requested", f.n.client.phase)
	}
}

func TestByteBudget(t *testing.T) {
	b := byteBudget{rate: 1000, burst: 100}
	t0 := time.Now()
	if !b.take(100, t0) || b.take(1, t0) {
		t.Fatal("a full bucket of 100 bytes did not give exactly 100")
	}
	if b.take(60, t0.Add(50*time.Millisecond)) || !b.take(50, t0.Add(50*time.Millisecond)) {
		t.Error("50 ms at 1000 B/s did not refill exactly 50 bytes")
	}
	if !b.take(100, t0.Add(time.Hour)) || b.take(1, t0.Add(time.Hour)) {
		t.Error("the bucket filled past its burst")
	}
}

// A resync answer's stamp dates the deletes the requester infers from the
// snapshot: a key whose last writer is the server and that the snapshot
// lacks is deleted at that stamp. A stamp far in the future made those
// deletes beat every later write of their keys for good; it is now
// refused like any other number the peer cannot have.
func TestResyncAnswerStampFromTheFuture(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, f.stampedDatagram(t, 1, "key1", "1", hlc.Make(time.Now().UnixMilli(), 0), peerNode))
	p := f.n.peers.byNode[peerNode]
	f.n.client.begin(p, time.Now())
	far := hlc.Make(time.Now().Add(hlc.MaxSkew+time.Hour).UnixMilli(), 0)
	f.handle(peerA, f.syncStart(wire.SyncStart{AsOf: 1, Stamp: uint64(far)}))
	if f.n.client.phase == syncStreaming || f.stats.Malformed.Load() != 1 {
		t.Fatalf("phase %d, malformed %d: an answer stamped an hour ahead was taken", f.n.client.phase, f.stats.Malformed.Load())
	}
	f.handle(peerA, syncEnd(f.n.client.id, 0))
	if f.value("key1") != "       1" {
		t.Fatal("the key was deleted on the strength of a stamp from the future")
	}
}

// However many entries a resync answer claims, the requester reserves no
// more knowledge than its own map can hold.
func TestResyncAnswerEntriesBounded(t *testing.T) {
	f, _ := snapshotFixture(t)
	h := f.n.know.Lock()
	before := h.Bytes(0)
	h.Unlock()
	f.n.client.reset()
	p := f.n.peers.byNode[peerNode]
	f.n.client.begin(p, time.Now())
	f.handle(peerA, f.syncStart(wire.SyncStart{AsOf: 1, Entries: math.MaxUint64, Stamp: uint64(f.n.clock.Now())}))
	h = f.n.know.Lock()
	after := h.Bytes(0)
	h.Unlock()
	entries := f.tab.maps[0].Desc.MaxEntries
	// At most what it held, and room for the whole map (each shard keeps
	// the larger of the two).
	full := newKnowledge(f.tab, 0, f.n.clock, ourNode, new(Stats), time.Now()).Lock()
	full.Reserve(0, int(entries))
	limit := before + full.Bytes(0)
	full.Unlock()
	if after > limit {
		t.Fatalf("knowledge of %d bytes after a claim of 2^64 entries, for a map of %d", after, entries)
	}
}
