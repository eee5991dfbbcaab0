package replication

// Unit tests of the convergence model: records applied by version, the
// local change that crossed an apply, the two directions of a resync's
// merge, and who may serve one. See "Convergence" in
// docs/ARCHITECTURE.md.

import (
	"fmt"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// stampedDatagram is a change datagram of the peer with one record of
// flows key k, stamped s by origin.
func (f *receiverFixture) stampedDatagram(t *testing.T, seq uint64, k, v string, s hlc.Stamp, origin uint32) []byte {
	t.Helper()
	var b changesBuilder
	b.start()
	if !b.w.Append(f.fpFlow, ops.Update, uint64(s), origin, []byte(k), []byte(fmt.Sprintf("%8s", v))) {
		t.Fatal("test datagram full")
	}
	return b.finish(peerNode, 1, seq)
}

// A record applies only if its version is newer than the key's latest
// known: arrival order does not matter, and equal stamps go to the higher
// node id on every node.
func TestRecordsApplyByVersion(t *testing.T) {
	f := newReceiverFixture(t)
	now := hlc.Make(time.Now().UnixMilli(), 0)
	f.handle(peerA, f.stampedDatagram(t, 1, "key1", "new", now+10, 5))
	f.handle(peerA, f.stampedDatagram(t, 2, "key1", "old", now, 5)) // arrives later, was made earlier
	if got := f.value("key1"); got != "     new" || f.stats.Stale.Load() != 1 {
		t.Fatalf("key1 = %q, stale %d; want the newer write kept and the older counted stale", got, f.stats.Stale.Load())
	}
	f.handle(peerA, f.stampedDatagram(t, 3, "key1", "lowid", now+10, 4))
	if got := f.value("key1"); got != "     new" {
		t.Fatalf("a tie went to the lower node id: key1 = %q", got)
	}
	f.handle(peerA, f.stampedDatagram(t, 4, "key1", "highid", now+10, 6))
	if got := f.value("key1"); got != "  highid" {
		t.Fatalf("a tie did not go to the higher node id: key1 = %q", got)
	}
}

// A record stamped further ahead of this node's clock than MaxSkew is
// dropped and counted, and does not drag the clock along: one bad clock
// or forged stamp cannot win every key for good.
func TestFutureStampDropped(t *testing.T) {
	f := newReceiverFixture(t)
	far := hlc.Make(time.Now().Add(hlc.MaxSkew+time.Minute).UnixMilli(), 0)
	f.handle(peerA, f.stampedDatagram(t, 1, "key1", "future", far, 5))
	if f.value("key1") != "" || f.stats.FutureStamps.Load() != 1 {
		t.Fatalf("key1 = %q, future_stamps %d; want nothing applied, 1 counted", f.value("key1"), f.stats.FutureStamps.Load())
	}
	if f.n.clock.Last() >= far {
		t.Fatalf("clock moved to %v", f.n.clock.Last())
	}
	if countLines(f.logs.String(), "too far ahead") == 0 {
		t.Fatal("no log line for the dropped change")
	}
}

// crossSender is a sender of the fixture's node whose table is the
// fixture's, so that it shares the node's knowledge and clock.
func crossSender(t *testing.T, f *receiverFixture) *sender {
	t.Helper()
	return newSender(senderConfig{Source: &chanSource{ch: make(chan loader.Change)}, Transport: nopTransport{},
		Table: f.tab, Node: ourNode, Epoch: ourEpoch, Knowledge: f.n.know, Clock: f.n.clock,
		Relay: &f.n.relay, Stats: f.stats, Log: f.n.log})
}

// A local write of a key and this node's apply of a peer's change of it
// cross: the capture delivers the local write after the apply. The map
// then says which came last. Without the read back, the local write
// would be stamped after the apply and win on every peer while this node
// holds the peer's value: the nodes would differ for good.
func TestCrossedApplyDecidedByTheMap(t *testing.T) {
	f := newReceiverFixture(t)
	s := crossSender(t, f)
	m := f.tab.byID(10)
	s.drained = time.Now().Add(-time.Second) // the ring was last empty before the apply
	f.handle(peerA, f.stampedDatagram(t, 1, "key1", "remote", hlc.Make(time.Now().UnixMilli(), 0), 5))

	// The local write came first: the map holds the peer's value.
	if _, ok := stampOne(s, m, ops.Update, []byte("key1"), []byte("   local"), time.Now()); ok {
		t.Fatal("a local write the apply overwrote was stamped")
	}
	if f.stats.RaceChecks.Load() != 1 {
		t.Fatalf("race_checks %d, want 1", f.stats.RaceChecks.Load())
	}
	// The local write came after the apply: the map holds it.
	f.flows.state["key1"] = "  local2"
	v, ok := stampOne(s, m, ops.Update, []byte("key1"), []byte("  local2"), time.Now())
	if !ok || v.Origin != ourNode {
		t.Fatal("a local write made after the apply was dropped")
	}
	if got, _ := knownVersion(f.n.know, m.index, "key1"); got != v {
		t.Fatalf("knowledge %+v, want the local write's %+v", got, v)
	}
	// A key no peer wrote since the ring was drained is not read back.
	checks := f.stats.RaceChecks.Load()
	s.drained = time.Now().Add(time.Second)
	if _, ok := stampOne(s, m, ops.Update, []byte("key1"), []byte("  local3"), time.Now()); !ok || f.stats.RaceChecks.Load() != checks {
		t.Fatalf("stamped %v, race_checks %d: a write after the ring was drained needs no check", ok, f.stats.RaceChecks.Load()-checks)
	}
}

// The sender stamps the changes it read a batch at a time, and checks
// each against the drained time of when it was read: a change staged
// before the ring was last found empty is stamped before that time moves.
// Checked against the later drain, the local write below, which the apply
// overwrote, would count as made after the apply, and be stamped and sent
// while this node holds the peer's value.
func TestStagedChangeCheckedAgainstItsDrain(t *testing.T) {
	f := newReceiverFixture(t)
	s := crossSender(t, f)
	now := time.Now()
	s.drained = now.Add(-time.Second) // the ring was last empty before the apply
	f.handle(peerA, f.stampedDatagram(t, 1, "key1", "remote", hlc.Make(now.UnixMilli(), 0), 5))
	s.add(&loader.Change{MapID: 10, Op: ops.Update, Key: []byte("key1"), Value: []byte("   local")}, now)
	if f.stats.RaceChecks.Load() != 0 {
		t.Fatal("one change was stamped alone: the test needs it staged")
	}
	s.setDrained(now.Add(2 * time.Second))
	checkOverwrittenDropped(t, f, s, "was not checked against the map")
}

// A peer's write of a key applied while a local change of it waits in the
// stage is the apply race, as when the change waited in the capture
// ring: the map decides. Here the apply came last: the local write is
// dropped, and every node keeps the peer's value.
func TestApplyWhileStagedDecidedByTheMap(t *testing.T) {
	f := newReceiverFixture(t)
	s := crossSender(t, f)
	now := time.Now()
	s.drained = now.Add(-time.Second)
	f.flows.state["key1"] = "   local"
	s.add(&loader.Change{MapID: 10, Op: ops.Update, Key: []byte("key1"), Value: []byte("   local")}, now)
	f.handle(peerA, f.stampedDatagram(t, 1, "key1", "remote", hlc.Make(now.UnixMilli(), 0), 5))
	if got := f.value("key1"); got != "  remote" {
		t.Fatalf("key1 = %q, want the peer's write applied", got)
	}
	s.setDrained(now.Add(time.Millisecond))
	checkOverwrittenDropped(t, f, s, "was sent")
}

// checkOverwrittenDropped fails t unless s, once its stage was stamped,
// dropped the local write of key1 that a peer's apply overwrote, after
// one race check, and left the peer's version in the knowledge; what
// says what went wrong otherwise.
func checkOverwrittenDropped(t *testing.T, f *receiverFixture, s *sender, what string) {
	t.Helper()
	if s.superseded != 1 || f.stats.RaceChecks.Load() != 1 {
		t.Fatalf("superseded %d, race checks %d: the local write the apply overwrote %s", s.superseded, f.stats.RaceChecks.Load(), what)
	}
	if v, _ := knownVersion(f.n.know, f.tab.byID(10).index, "key1"); v.Origin == ourNode {
		t.Fatalf("knowledge %+v: the overwritten local write was recorded", v)
	}
}

// After a capture overflow, an entry a snapshot reads is stamped anew, as
// read: the map may hold a lost write under its recorded version. A local
// write the capture still holds, made before a peer's write was applied
// over it, must then still lose to what the map holds: the new version
// must not make the sender take the older write as the latest. (Stamped
// as an ordinary local write, it cleared the apply's mark, and two writers
// of the same 200,000 keys then differed in 65,000 for good.)
func TestRestampKeepsTheCrossedApplyCheck(t *testing.T) {
	f := newReceiverFixture(t)
	s := crossSender(t, f)
	m := f.tab.byID(10)
	s.drained = time.Now().Add(-time.Second)
	remote := hlc.Make(time.Now().UnixMilli(), 0)
	f.handle(peerA, f.stampedDatagram(t, 1, "key1", "remote", remote, 5))
	h := f.n.know.Lock()
	h.SuspectSince(f.n.clock.Now()) // the capture overflowed
	v := h.Current(m.index, []byte("key1"), []byte("remote"), time.Now())
	again := h.Current(m.index, []byte("key1"), []byte("remote"), time.Now())
	h.Unlock()
	if v.Origin != ourNode || v.Stamp <= remote || again != v {
		t.Fatalf("read after the overflow as %+v, then %+v; want stamped anew as this node's, once", v, again)
	}
	if _, ok := stampOne(s, m, ops.Update, []byte("key1"), []byte("   local"), time.Now()); ok {
		t.Fatal("a local write made before the apply, delivered after the restamp, was stamped as the latest")
	}
}

// readyWithTwoPeers is a ready node that has heard peers a (peerNode, at
// peerA) and b (9, at peerB), neither of them ready, for an hour.
func readyWithTwoPeers(t *testing.T) (f *receiverFixture, a, b *peer) {
	f = newReceiverFixture(t)
	f.n.ready.become("test", 0)
	t0 := time.Now().Add(-time.Hour)
	f.handleAt(t0, peerA, announce(t, peerNode, 1, 0))
	f.handleAt(t0, peerB, announce(t, 9, 1, 0))
	return f, f.n.peers.byNode[peerNode], f.n.peers.byNode[9]
}

// A node that lost another peer's changes does not serve snapshots; one
// that lost only the requester's own still does, so two nodes that lost
// each other's (a healed partition) can resync from each other. A ready
// requester it serves in any case: that one asks only for this node's own
// changes. Refusing it let several nodes that each lost another's changes
// wait on each other for ever (62 of 1,000 simulated runs with capture
// overflows).
func TestServesOnlyWhenCurrent(t *testing.T) {
	f, a, b := readyWithTwoPeers(t)
	if !f.n.upToDate(a) || !f.n.upToDate(b) {
		t.Fatal("a ready node in sync does not serve")
	}
	a.stream.lostFrom = 3
	a.ready = true // else its lost changes would only make this node serve partially
	if !f.n.upToDate(a) {
		t.Error("refused the peer whose own changes were lost")
	}
	if f.n.upToDate(b) {
		t.Error("served another peer while behind on the first one's changes")
	}
	f.prove(t, peerB)
	f.handle(peerB, syncRequest(9, 1, 7))
	st := f.sentSyncStart(t)
	if st.Status != wire.SyncNotReady {
		t.Errorf("answer %+v, want not ready", st)
	}
	f.handle(peerB, readyAnnounce(t, 9, 1, 0))
	f.handle(peerB, syncRequest(9, 1, 8))
	if st := f.sentSyncStart(t); st.Status != wire.SyncOK {
		t.Errorf("answer %+v to a ready peer, want the snapshot served though this node is behind", st)
	}
}

// A node that lacks only lost changes of a peer not ready serves an
// initial sync partially: that peer serves nobody before it is ready,
// which may wait on this very sync (two nodes that joined at once and
// overflowed were never served, 42 of 1,000 simulated runs). The
// requester then resyncs from every other peer as well.
func TestPartialSnapshotLacksOnlyUnreadyPeers(t *testing.T) {
	f, a, b := readyWithTwoPeers(t)
	a.needSync = true
	if got := f.n.answer(b); got != wire.SyncPartial {
		t.Fatalf("answer %d, want partial: all this node lacks is of a peer not ready", got)
	}
	a.ready = true
	if got := f.n.answer(b); got != wire.SyncNotReady {
		t.Fatalf("answer %d, want not ready: the ready peer's changes come by a resync first", got)
	}

	g, id := snapshotFixture(t) // answered as OK; partial from here on
	g.handle(peerB, announce(t, 9, 1, 0))
	g.n.client.partial = true
	g.handle(peerA, syncEnd(id, 0))
	if !g.n.ready.isReady() || g.n.client.phase != syncIdle {
		t.Fatalf("ready %v, phase %d after the partial snapshot: want ready", g.n.ready.isReady(), g.n.client.phase)
	}
	if other := g.n.peers.byNode[9]; other == nil || !other.needSync || g.n.peers.byNode[peerNode].needSync {
		t.Fatal("after a partial snapshot, want a resync owed by every other peer, and none by the server")
	}
}

// A resync owed by a peer that is not ready is not asked for: it would be
// refused, and, asked first for ever (lowest node id), it starved the
// resyncs owed by the ready peers, which could serve.
func TestOwedResyncAskedOfReadyPeer(t *testing.T) {
	f, a, b := readyWithTwoPeers(t)
	b.ready = true
	a.needSync, b.needSync = true, true
	if got := f.n.client.source(time.Now()); got != b {
		t.Fatalf("asked node %d of the two peers owing a resync; want the ready one, %d", nodeOf(got), b.node)
	}
	b.needSync = false
	if got := f.n.client.source(time.Now()); got != nil {
		t.Fatalf("asked node %d, which is not ready, for a resync", got.node)
	}
}

// nodeOf is p's node id, 0 for none.
func nodeOf(p *peer) uint32 {
	if p == nil {
		return 0
	}
	return p.node
}

// The end of a resync merges the other way: what this node holds newer,
// or that the server did not carry, goes back; a key the server wrote
// last and no longer holds, the server deleted, and so is deleted here.
func TestResyncMergesBothWays(t *testing.T) {
	f, id := snapshotFixture(t)
	m := f.tab.byID(10)
	old := hlc.Make(1_600_000_000_000, 0)
	now := hlc.Make(time.Now().UnixMilli(), 0)
	// Known here before the snapshot: a newer write of "mine" than the
	// server's, and "gone", last written by the server, which it deleted
	// since; "was!", unstamped as an earlier snapshot of the server's
	// carried it, which the server deleted since too. "only" is unstamped
	// and unknown: this node's, never seen by the server.
	setKnown(f.n.know, m.index, "mine", knowledge.Version{Stamp: now, Origin: ourNode}, false, false)
	setKnown(f.n.know, m.index, "gone", knowledge.Version{Stamp: old, Origin: peerNode}, false, true)
	setKnown(f.n.know, m.index, "was!", knowledge.Version{Stamp: 0, Origin: peerNode}, false, true)
	f.flows.state["mine"], f.flows.state["gone"], f.flows.state["only"] = "    mine", "    gone", "    only"
	f.flows.state["was!"] = "    was!"
	f.n.client.start.Stamp = uint64(now - 1)

	var b changesBuilder
	b.start()
	b.w.Append(f.fpFlow, ops.Update, uint64(old), peerNode, []byte("mine"), []byte("theirs!!"))
	b.w.Append(f.fpFlow, ops.Update, uint64(old), peerNode, []byte("new!"), []byte("theirs!!"))
	f.handle(peerA, b.finishKind(wire.KindSnapshot, peerNode, 1, wire.SyncSeq(id, 1)))
	f.handle(peerA, syncEnd(id, 1))

	if got := f.flows.snapshot(); got["mine"] != "    mine" || got["new!"] != "theirs!!" || got["only"] != "    only" ||
		got["gone"] != "" || got["was!"] != "" {
		t.Fatalf("after the merge: %v; want mine kept, new! taken, only kept, gone and was! deleted", got)
	}
	sent := map[string]knowledge.Version{}
	f.n.relay.drain(func(_ int, op ops.Op, v knowledge.Version, key, _ []byte) { sent[string(key)] = v })
	if len(sent) != 3 || sent["mine"] != (knowledge.Version{Stamp: now, Origin: ourNode}) || sent["only"].Origin != ourNode || sent["key1"].Stamp == 0 {
		t.Fatalf("sent back %v; want mine with its version, only stamped as ours, and key1 (the snapshot lacks it)", sent)
	}
	if f.stats.SyncDeleted.Load() != 2 || f.stats.SyncPushed.Load() != 3 {
		t.Fatalf("sync_deleted %d sync_pushed %d, want 2 and 3", f.stats.SyncDeleted.Load(), f.stats.SyncPushed.Load())
	}
}

// An unstamped entry a snapshot carries is recorded as the server's, so
// that the next resync from it, if the server no longer holds it, deletes
// it. Recorded as no one's, it was sent back as this node's own write and
// brought back on the server what its datapath had deleted.
func TestUnstampedEntryRecordedAsTheServers(t *testing.T) {
	f, id := snapshotFixture(t)
	var b changesBuilder
	b.start()
	b.w.Append(f.fpFlow, ops.Update, 0, 0, []byte("unst"), []byte("unstamp!"))
	f.handle(peerA, b.finishKind(wire.KindSnapshot, peerNode, 1, wire.SyncSeq(id, 1)))
	if f.value("unst") != "unstamp!" {
		t.Fatal("an unstamped entry of the server's was not taken")
	}
	if v, _ := knownVersion(f.n.know, 0, "unst"); v != (knowledge.Version{Stamp: 0, Origin: peerNode}) {
		t.Fatalf("recorded as %+v, want unstamped from the server", v)
	}
}

// A map empty when the snapshot begins is not read back at its end, but
// the deletes this node remembers and the server did not carry still go
// back.
func TestEmptyMapStillSendsItsDeletesBack(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, announce(t, peerNode, 1, 0))
	setKnown(f.n.know, 0, "dead", knowledge.Version{Stamp: hlc.Make(time.Now().UnixMilli(), 0), Origin: ourNode}, true, false)
	p := f.n.peers.byNode[peerNode]
	f.n.client.begin(p, time.Now())
	f.handle(peerA, f.syncStart(wire.SyncStart{AsOf: 0, Stamp: uint64(f.n.clock.Now())}))
	if !f.n.client.empty[0] {
		t.Fatal("the empty map was not seen as empty")
	}
	f.handle(peerA, syncEnd(f.n.client.id, 0))
	if f.stats.ResyncsReceived.Load() != 1 {
		t.Fatal("the resync did not complete")
	}
	var sent []string
	f.n.relay.drain(func(_ int, op ops.Op, _ knowledge.Version, key, _ []byte) {
		sent = append(sent, op.String()+" "+string(key))
	})
	if len(sent) != 1 || sent[0] != ops.Delete.String()+" dead" {
		t.Fatalf("sent back %q, want the remembered delete", sent)
	}
}

// An unstamped record belongs in snapshots only. In a peer's change
// stream (where a forger can put any number of them, each for a new key)
// it is skipped as stale, and adds no knowledge: such records must not
// grow the table.
func TestUnstampedLiveRecordSkipped(t *testing.T) {
	f := newReceiverFixture(t)
	var b changesBuilder
	b.start()
	b.w.Append(f.fpFlow, ops.Update, 0, 0, []byte("key1"), []byte("unstamp!"))
	f.handle(peerA, b.finish(peerNode, 1, 1))
	if f.value("key1") != "" || f.stats.Stale.Load() != 1 {
		t.Fatalf("key1 = %q, stale %d: an unstamped live record was applied", f.value("key1"), f.stats.Stale.Load())
	}
	h := f.n.know.Lock()
	entries := h.Entries()
	h.Unlock()
	if _, known := knownVersion(f.n.know, 0, "key1"); known || entries != 0 {
		t.Fatalf("an unstamped live record added knowledge (%d keys)", entries)
	}
}

// A batch syscall reports its elements only at its exit: on a busy
// machine an element can reach the sender well after the captureSlack
// it allows for a change read after the ring was last found empty. Here
// the key is written locally at t, a peer's newer write of it is applied
// at t+5ms (the map holds the peer's value), the sender finds the ring
// empty at t+30ms, then reads the local write: it must be dropped, not
// stamped newer than the peer's and sent (peers would take the local
// value while this node holds the peer's). t is placed so that an
// applied-at tick boundary falls between the apply and t+20ms, the
// bound a 10 ms slack gave: the tick's rounding up of the apply hides the
// case otherwise.
// (The likely cause of two writers of the same 200,000 keys once ending
// 3,111 keys apart.)
func TestSlowBatchElementDecidedByTheMap(t *testing.T) {
	start := time.Date(2041, 3, 4, 5, 6, 7, 0, time.UTC)
	clock := &fixedTime{now: start}
	f := newFixtureWith(t, Config{Time: clock})
	s := crossSender(t, f)
	m := f.tab.byID(10)
	// The apply is marked as ending applyBound after it began, at w+10ms:
	// before ms ahead of the tick boundary at (i+1)·256 ms, and w+20ms past it.
	for i, before := range []time.Duration{1, 5, 9} {
		key := fmt.Sprintf("k%03d", before)
		w := start.Add(time.Duration(i+1)*256*time.Millisecond - (before+10)*time.Millisecond)
		f.flows.state[key] = "   local" // the batch's element, written at w
		clock.now = w.Add(5 * time.Millisecond)
		f.handleAt(clock.now, peerA, f.stampedDatagram(t, uint64(i+1), key, "remote", hlc.Make(clock.now.UnixMilli(), 0), 5))
		if got := f.value(key); got != "  remote" {
			t.Fatalf("%s = %q after the peer's write, want it applied", key, got)
		}
		s.drained = w.Add(30 * time.Millisecond)
		clock.now = s.drained.Add(time.Millisecond)
		if v, ok := stampOne(s, m, ops.Update, []byte(key), []byte("   local"), clock.now); ok {
			t.Errorf("%s: a batch element written before the peer's write was applied, read after the ring was found empty, was stamped %+v: "+
				"the peers would take it while this node holds the peer's value", key, v)
		}
	}
}

// An entry this node holds newer than the snapshot carried goes back at
// its version; but once the capture has lost changes, the map may hold a
// lost local write over that version (another node's, here), so it goes
// back stamped anew as this node's write, as a snapshot would send it.
// Sent at the other node's version, the local value claimed to be that
// node's write (simulated overflows, seed 1422 of -sim.faults=2).
func TestPushNewerRestampsAfterLoss(t *testing.T) {
	f, id := snapshotFixture(t)
	m := f.tab.byID(10)
	old := hlc.Make(1_600_000_000_000, 0)
	theirs := knowledge.Version{Stamp: hlc.Make(time.Now().UnixMilli()-1000, 0), Origin: 3}
	setKnown(f.n.know, m.index, "mine", theirs, false, true)
	f.flows.state["mine"] = "lostmine" // written over node 3's value; its change lost
	h := f.n.know.Lock()
	h.SuspectSince(f.n.clock.Now())
	h.Unlock()

	var b changesBuilder
	b.start()
	b.w.Append(f.fpFlow, ops.Update, uint64(old), peerNode, []byte("mine"), []byte("theirs!!"))
	f.handle(peerA, b.finishKind(wire.KindSnapshot, peerNode, 1, wire.SyncSeq(id, 1)))
	f.handle(peerA, syncEnd(id, 1))

	var got knowledge.Version
	f.n.relay.drain(func(_ int, _ ops.Op, v knowledge.Version, key, val []byte) {
		if string(key) == "mine" {
			got = v
		}
	})
	if got.Origin != ourNode || !got.Newer(theirs) {
		t.Fatalf("the local value of a key went back as %+v; want a new write of node %d, newer than node 3's %+v", got, ourNode, theirs)
	}
}

// A key known here in a version newer than the snapshot's, but gone from
// the map, was deleted by a write whose change the capture lost: once
// the loss is known, it goes back as a delete stamped now as this node's
// write. Left to "the next write", the peer's older value stayed on the
// peer for good, each digest repair between them finding the same
// difference (simulated overflows with clean stops, seed 318).
func TestPushNewerSendsALostDelete(t *testing.T) {
	f, id := snapshotFixture(t)
	m := f.tab.byID(10)
	mine := knowledge.Version{Stamp: hlc.Make(time.Now().UnixMilli()-1000, 0), Origin: ourNode}
	setKnown(f.n.know, m.index, "gone", mine, false, false) // its delete lost to the capture
	h := f.n.know.Lock()
	h.SuspectSince(f.n.clock.Now())
	h.Unlock()

	var b changesBuilder
	b.start()
	b.w.Append(f.fpFlow, ops.Update, uint64(hlc.Make(1_600_000_000_000, 0)), peerNode, []byte("gone"), []byte("theirs!!"))
	f.handle(peerA, b.finishKind(wire.KindSnapshot, peerNode, 1, wire.SyncSeq(id, 1)))
	f.handle(peerA, syncEnd(id, 1))

	var op ops.Op
	var got knowledge.Version
	f.n.relay.drain(func(_ int, o ops.Op, v knowledge.Version, key, _ []byte) {
		if string(key) == "gone" {
			op, got = o, v
		}
	})
	if op != ops.Delete || got.Origin != ourNode || !got.Newer(mine) || f.value("gone") != "" {
		t.Fatalf("a key gone from the map after a loss went back as %v %+v (map: %q); want a new delete of node %d, newer than %+v",
			op, got, f.value("gone"), ourNode, mine)
	}
	if v, _ := knownVersion(f.n.know, m.index, "gone"); v != got {
		t.Fatalf("known as %+v after sending %+v", v, got)
	}
}
