package replication

import (
	"bytes"
	"context"
	"encoding/binary"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// digestNode is a node whose map is a real kernel hash map (4-byte keys,
// 8-byte values, 4096 entries: a digest tree two levels deep) on the
// in-memory network; only the capture is faked, so that a test can write
// the map behind the daemon's back, as a BPF program or an overflowing
// ring would.
type digestNode struct {
	m     *loader.Map
	src   *chanSource
	n     *Node
	stats *Stats
	logs  *logBuffer
}

func startDigestNode(t *testing.T, net *memNet, id uint32, interval time.Duration) *digestNode {
	t.Helper()
	return startDigestNodeOn(t, net, id, interval, openMap(t, "flows"))
}

// startDigestNodeOn starts a node replicating m.
func startDigestNodeOn(t testing.TB, net *memNet, id uint32, interval time.Duration, m *loader.Map) *digestNode {
	t.Helper()
	d := &digestNode{m: m, src: &chanSource{ch: make(chan loader.Change, 1<<12)}, logs: new(logBuffer)}
	tab, err := NewTable([]Map{MapFromLoader(d.m)}, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	tr := net.attach(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(id)}), 3870))
	d.n = newTestNode(t, Config{Node: id, Epoch: uint64(id) * 1000, Table: tab, Source: d.src, Transport: tr,
		AnnounceInterval: memAnnounce, DigestInterval: interval, Log: newLogger(d.logs)})
	// The writes a test plants are older than this when the round reads
	// them; the default (2 s) would only make the test slower.
	d.n.digests.settle = 200 * time.Millisecond
	d.stats = d.n.Stats()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = d.n.Run(ctx) }()
	t.Cleanup(sync.OnceFunc(func() { cancel(); <-done }))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node %d log:\n%s", id, d.logs)
		}
	})
	return d
}

// write writes the map and tells the capture, as a captured program write.
func (d *digestNode) write(t *testing.T, k uint32, v uint64) {
	t.Helper()
	d.plant(t, k, v)
	d.src.ch <- loader.Change{MapID: d.m.ID, Op: ops.Update, Key: key32(k), Value: binary.NativeEndian.AppendUint64(nil, v)}
}

// plant writes the map behind the daemon's back (v 0: deletes).
func (d *digestNode) plant(t *testing.T, k uint32, v uint64) {
	t.Helper()
	var err error
	if v == 0 {
		_, err = d.m.DeleteBatch(key32(k))
	} else {
		err = d.m.UpdateBatch(key32(k), binary.NativeEndian.AppendUint64(nil, v))
	}
	if err != nil {
		t.Fatal(err)
	}
}

func key32(k uint32) []byte { return binary.NativeEndian.AppendUint32(nil, k) }

// waitEqual waits until both nodes' maps hold the same entries.
func waitEqual(t *testing.T, a, b *digestNode, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		x, y := mapContents(t, a.m.ID), mapContents(t, b.m.ID)
		if x != nil && y != nil && maps.Equal(x, y) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("maps differ after %v: %d and %d entries", within, len(x), len(y))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDigestHealsPlantedDivergence plants, on one of two converged
// nodes, what no capture reports: a value changed in place, a delete, and
// a knowledge version that a colliding key's write would have left. The
// digest rounds find each, and the repair of the differing buckets heals
// them, without a full resync.
func TestDigestHealsPlantedDivergence(t *testing.T) {
	var net memNet
	a := startDigestNode(t, &net, 1, 250*time.Millisecond)
	b := startDigestNode(t, &net, 2, 250*time.Millisecond)
	for k := range uint32(300) {
		a.write(t, k, uint64(k)+1000)
	}
	waitEqual(t, a, b, 10*time.Second)
	time.Sleep(300 * time.Millisecond) // older than the settle time

	a.plant(t, 7, 77777)  // changed in place on a
	b.plant(t, 8, 0)      // deleted on b, unseen
	b.plant(t, 9, 99999)  // changed in place on b, the higher node id
	a.plant(t, 500, 5000) // added on a, unseen
	// On a, key 10's version is that of a newer write of a key sharing
	// its hash: a's knowledge says 10 is newer than it is.
	setKnown(a.n.know, 0, string(key32(10)), knowledge.Version{Stamp: a.n.clock.Now(), Origin: 1}, false, true)

	waitEqual(t, a, b, 15*time.Second)
	got := mapContents(t, a.m.ID)
	if got[7] != 1007 && got[7] != 77777 || got[9] != 99999 {
		t.Errorf("key 7 = %d, key 9 = %d; want 7 agreed on, 9 as b (the higher id) holds it", got[7], got[9])
	}
	if _, ok := got[8]; ok {
		t.Error("key 8, deleted on b unseen, came back instead of being deleted everywhere")
	}
	if got[500] != 5000 {
		t.Errorf("key 500, added on a unseen, = %d", got[500])
	}
	for _, n := range []*digestNode{a, b} {
		if s := n.stats.Snapshot(); s.ResyncsReceived > 1 || s.ResyncNeeded != 0 {
			t.Errorf("node: %d full resyncs received, %d needed: the digest should have healed it", s.ResyncsReceived, s.ResyncNeeded)
		}
	}
	found := a.stats.DigestFound.Load() + b.stats.DigestFound.Load()
	healed := a.stats.DigestHealed.Load() + b.stats.DigestHealed.Load()
	if found == 0 || healed == 0 || a.stats.DigestBytes.Load() == 0 {
		t.Errorf("digest_found %d, digest_healed %d, digest_bytes %d: want all counted", found, healed, a.stats.DigestBytes.Load())
	}
}

// TestDigestQuietWhileConverged checks that converged nodes whose writes
// keep coming find nothing to repair: the buckets written lately are
// left alone, and the others agree.
func TestDigestQuietWhileConverged(t *testing.T) {
	var net memNet
	a := startDigestNode(t, &net, 1, 100*time.Millisecond)
	b := startDigestNode(t, &net, 2, 100*time.Millisecond)
	// The daemon's own settle time: a change held up on a loaded machine
	// for longer than the tests' 200 ms is not a divergence.
	for _, n := range []*digestNode{a, b} {
		n.n.mu.Lock()
		n.n.digests.settle = digestSettle
		n.n.mu.Unlock()
	}
	for i := range uint32(3000) {
		a.write(t, i%500, uint64(i)+1)
		if i%100 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitEqual(t, a, b, 10*time.Second)
	time.Sleep(digestSettle + 500*time.Millisecond) // rounds on settled buckets too
	if r := a.stats.DigestRounds.Load() + b.stats.DigestRounds.Load(); r < 4 {
		t.Fatalf("%d digest rounds in all, want several", r)
	}
	if f := a.stats.DigestFound.Load() + b.stats.DigestFound.Load(); f != 0 {
		t.Fatalf("converged nodes found %d buckets differing", f)
	}
}

// TestDigestDiffer checks the decision of one comparison: a difference
// counts only where neither side wrote within the settle time of the
// older read.
func TestDigestDiffer(t *testing.T) {
	now := hlc.Make(1_700_000_000_000, 0)
	old := uint64(hlc.Make(1_700_000_000_000-10_000, 0))
	recent := uint64(hlc.Make(1_700_000_000_000-500, 0))
	mine := make([]wire.DigestChild, wire.DigestFanout)
	theirs := make([]wire.DigestChild, wire.DigestFanout)
	mine[1], theirs[1] = wire.DigestChild{Sum: 1, Newest: old}, wire.DigestChild{Sum: 2, Newest: old}        // differs
	mine[2], theirs[2] = wire.DigestChild{Sum: 1, Newest: old}, wire.DigestChild{Sum: 2, Newest: recent}     // in flight
	mine[3], theirs[3] = wire.DigestChild{Sum: 5, Newest: recent}, wire.DigestChild{Sum: 5, Newest: recent}  // agrees
	mine[4], theirs[4] = wire.DigestChild{Sum: 1, Newest: old}, wire.DigestChild{Sum: 2, Newest: ^uint64(0)} // forged newest
	mask, busy := differ(mine, theirs, now, now+1, 2*time.Second)
	if mask != 1<<1 || busy != 2 {
		t.Fatalf("differ = %#x, %d busy; want child 1, 2 busy", mask, busy)
	}
	// The older read decides: a write 3 s before one read and 1 s before
	// the other may have missed the older.
	late := hlc.Make(1_700_000_000_000-3_000, 0)
	theirs[1].Newest = uint64(hlc.Make(1_700_000_000_000-2_500, 0))
	if mask, _ := differ(mine, theirs, now, late, 2*time.Second); mask&(1<<1) != 0 {
		t.Fatal("a write 0.5 s before the older read counted as settled")
	}
}

// TestDigestTreeShape checks that the tree's depth follows the map's size
// and that a key's leaf, its filter, and the buckets above agree.
func TestDigestTreeShape(t *testing.T) {
	for _, tc := range []struct {
		entries uint32
		depth   int
	}{{1, 1}, {256, 1}, {257, 2}, {4096, 2}, {16384, 2}, {16385, 3}, {1 << 20, 3}, {1<<32 - 1, 3}} {
		if d := digestDepth(tc.entries); d != tc.depth {
			t.Errorf("depth for %d entries = %d, want %d", tc.entries, d, tc.depth)
		}
	}
	tr := newDigestTree(3)
	kh := digestKeyHash([]byte("some key"))
	tr.leaf(kh).Sum = 42
	tr.sum()
	leaf := kh >> (64 - 18)
	parent := wire.Bucket{Depth: 2, Prefix: uint32(leaf >> 6)}
	if c := tr.children(&parent)[leaf%64]; c.Sum != 42 || tr.levels[0][0].Sum != 42 {
		t.Fatalf("leaf sum %d, root sum %d; want 42 both", c.Sum, tr.levels[0][0].Sum)
	}
	f := wire.BucketFilter{Bucket: parent, Children: 1 << (leaf % 64)}
	if !inFilter(&f, kh) {
		t.Fatal("a key is not in the filter of its own leaf")
	}
	f.Children = ^f.Children
	if inFilter(&f, kh) {
		t.Fatal("a key is in a filter that leaves its leaf out")
	}
	if inFilter(&wire.BucketFilter{Bucket: wire.Bucket{Depth: 2, Prefix: parent.Prefix ^ 1}, Children: ^uint64(0)}, kh) {
		t.Fatal("a key is in the filter of another bucket")
	}
}

// TestDigestNotForLocalEvictions checks that LRU maps, which evict by
// local use, and scanned maps whose vanished keys stay on the peers take
// no part in digest rounds.
func TestDigestNotForLocalEvictions(t *testing.T) {
	for typ, want := range map[ebpf.MapType]bool{ebpf.Hash: true, ebpf.Array: true, ebpf.LRUHash: false, ebpf.LRUCPUHash: false} {
		m := localMap{Map: Map{Desc: wire.Descriptor{Type: uint32(typ)}}}
		if digested(&m) != want {
			t.Errorf("%v digested = %v", typ, !want)
		}
	}
	for _, tc := range []struct {
		opts mapopt.Options
		want bool
	}{
		{mapopt.Options{Scan: time.Second}, false},
		{mapopt.Options{Scan: time.Second, Vanished: mapopt.Delete}, true},
		{mapopt.Options{Local: []mapopt.Field{{Offset: 0, Size: 1}}}, true}, // not scanned
	} {
		p, err := newFieldPlan(tc.opts, 8, &monoClock{})
		if err != nil {
			t.Fatal(err)
		}
		m := localMap{Map: Map{Desc: wire.Descriptor{Type: uint32(ebpf.Hash)}}, plan: p}
		if digested(&m) != tc.want {
			t.Errorf("%+v: digested = %v", tc.opts, !tc.want)
		}
	}
}

// TestDigestValueMasksNodeFields checks that two values differing only
// in the fields a map names as local or clock fields digest alike, and
// that a difference anywhere else, or one the normalizer leaves, shows.
func TestDigestValueMasksNodeFields(t *testing.T) {
	opts := mapopt.Options{Local: []mapopt.Field{{Name: "ifindex", Offset: 0, Size: 4}},
		Clocks: []mapopt.Clock{{Field: mapopt.Field{Name: "lifetime", Offset: 4, Size: 8}}}}
	p, err := newFieldPlan(opts, 16, &monoClock{})
	if err != nil {
		t.Fatal(err)
	}
	m := &localMap{Map: Map{Desc: wire.Descriptor{Name: "ct"}}, valueSize: 16, plan: p}
	a := []byte{1, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 42, 0, 0, 0}
	b := []byte{2, 0, 0, 0, 7, 7, 7, 7, 7, 7, 7, 7, 42, 0, 0, 0}
	hash := func(user DigestNormalizer, v []byte) uint64 {
		return knowledge.ValueHash(digestValue(m, user, make([]byte, 16), v))
	}
	if hash(nil, a) != hash(nil, b) {
		t.Fatal("values differing in local and clock fields only digest differently")
	}
	if a[0] != 1 || a[4] != 9 {
		t.Fatal("digestValue changed the value it was given")
	}
	c := bytes.Clone(a)
	c[13] = 1
	if hash(nil, a) == hash(nil, c) {
		t.Fatal("a difference outside the node's fields does not show")
	}
	maskLast := func(_ string, dst, v []byte) []byte {
		w := dst[:copy(dst, v)]
		w[13] = 0
		return w
	}
	if hash(maskLast, a) != hash(maskLast, c) {
		t.Fatal("the normalizer's mask was not applied")
	}
}

// digestDatagram is a datagram of kind k from the fixture's peer with
// body, or with what enc appends.
func digestDatagram(t *testing.T, k wire.Kind, count uint16, enc func([]byte) ([]byte, error)) []byte {
	t.Helper()
	b, err := (&wire.Header{Kind: k, Count: count, Node: peerNode, Epoch: 1}).AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	if enc != nil {
		if b, err = enc(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// raw appends body as it is.
func raw(body []byte) func([]byte) ([]byte, error) {
	return func(b []byte) ([]byte, error) { return append(b, body...), nil }
}

// Forged and damaged digest datagrams are counted and dropped, answers to
// nothing asked are unsolicited, and however many children a forged
// answer names, a round sends at most maxDigestQueries digests.
func TestDigestHostileInput(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, announce(t, peerNode, 1, 0))
	good := wire.Digest{Bucket: wire.Bucket{Map: f.fpFlow}}
	body, _ := good.AppendTo(nil)
	deep := bytes.Clone(body)
	deep[4] = 3 // a leaf: it has no children
	for _, tc := range []struct {
		name string
		d    []byte
	}{
		{"digest below the leaves", digestDatagram(t, wire.KindDigest, 0, raw(deep))},
		{"digest of no local map", digestDatagram(t, wire.KindDigest, 0, (&wire.Digest{Bucket: wire.Bucket{Map: 0xdead}}).AppendTo)},
		{"digest of the map's leaves' level", digestDatagram(t, wire.KindDigest, 0, (&wire.Digest{Bucket: wire.Bucket{Map: f.fpFlow, Depth: 2}}).AppendTo)},
		{"digest cut short", digestDatagram(t, wire.KindDigest, 0, raw(body[:100]))},
		{"digest with a count", digestDatagram(t, wire.KindDigest, 64, raw(body))},
		{"diff too long", digestDatagram(t, wire.KindDigestDiff, 0, raw(make([]byte, wire.DigestDiffSize+1)))},
		{"filter without children", digestDatagram(t, wire.KindSyncRequest, 0, raw(make([]byte, wire.BucketFilterSize)))},
		{"filter of no local map", digestDatagram(t, wire.KindSyncRequest, 0, (&wire.BucketFilter{Bucket: wire.Bucket{Map: 0xdead}, Children: 1}).AppendTo)},
		{"filter of a short body", digestDatagram(t, wire.KindSyncRequest, 0, raw([]byte{1, 2, 3}))},
	} {
		before := f.stats.Malformed.Load()
		f.handle(peerA, tc.d)
		if f.stats.Malformed.Load() != before+1 {
			t.Errorf("%s: malformed %d, want %d", tc.name, f.stats.Malformed.Load(), before+1)
		}
	}
	if len(f.flows.calls) != 0 {
		t.Fatalf("bad digests touched the map: %v", f.flows.calls)
	}

	// An answer to no digest of this node's.
	unsolicited := f.stats.Unsolicited.Load()
	f.handle(peerA, digestDatagram(t, wire.KindDigestDiff, 0, (&wire.DigestDiff{Bucket: good.Bucket, Round: 1, Differ: ^uint64(0)}).AppendTo))
	if f.stats.Unsolicited.Load() != unsolicited+1 {
		t.Fatal("an answer to no digest was not counted unsolicited")
	}

	// A round with the peer; its answers claim that every child differs,
	// at every level, and come again.
	set, err := f.n.digester.read()
	if err != nil {
		t.Fatal(err)
	}
	f.n.mu.Lock()
	r := &f.n.digests.round
	*r = digestRound{id: 5, peer: f.n.peers.byNode[peerNode], set: set}
	f.n.digests.ask(good.Bucket, time.Now())
	f.n.mu.Unlock()
	if r.queries != 1 {
		t.Fatalf("the root digest was not sent (%d)", r.queries)
	}
	for range 3 {
		f.n.mu.Lock()
		asked := slices.Clone(r.asked)
		f.n.mu.Unlock()
		for _, b := range asked {
			f.handle(peerA, digestDatagram(t, wire.KindDigestDiff, 0, (&wire.DigestDiff{Bucket: b, Round: 5, Differ: ^uint64(0)}).AppendTo))
		}
	}
	if r.queries != maxDigestQueries || len(r.repairs) > maxDigestRepairs {
		t.Fatalf("a forged answer had %d digests sent and %d repairs queued; at most %d and %d",
			r.queries, len(r.repairs), maxDigestQueries, maxDigestRepairs)
	}
}

// A map of three levels that differs under every top-level bucket (a
// few thousand keys apart out of 200,000) still gets repairs queued each
// round: asking about all 64 top-level buckets spent the round's 64
// digests before any reached the parents of the leaves, so no round
// found a leaf, and such a divergence was never healed.
func TestDigestWideDivergenceQueuesRepairs(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, announce(t, peerNode, 1, 0))
	f.prove(t, peerA)
	m := f.tab.byID(10)
	m.Desc.MaxEntries = 1 << 16 // three levels, as for the 400,000-entry map that differed so
	set, err := f.n.digester.read()
	if err != nil {
		t.Fatal(err)
	}
	if got := set.trees[m.index].depth(); got != 3 {
		t.Fatalf("tree of %d levels, want 3", got)
	}
	f.n.mu.Lock()
	r := &f.n.digests.round
	*r = digestRound{id: 5, peer: f.n.peers.byNode[peerNode], set: set}
	f.n.digests.ask(wire.Bucket{Map: m.fp}, time.Now())
	f.n.mu.Unlock()
	for range wire.MaxDigestDepth {
		f.n.mu.Lock()
		asked := slices.Clone(r.asked)
		f.n.mu.Unlock()
		for _, b := range asked { // the peer: every child differs, at every level
			f.handle(peerA, digestDatagram(t, wire.KindDigestDiff, 0, (&wire.DigestDiff{Bucket: b, Round: 5, Differ: ^uint64(0)}).AppendTo))
		}
	}
	if len(r.repairs) == 0 || f.stats.DigestFound.Load() == 0 {
		t.Fatalf("%d digests sent, %d leaves found, %d repairs queued: a round that differs everywhere repairs nothing",
			r.queries, f.stats.DigestFound.Load(), len(r.repairs))
	}
}

// TestDigestRepairsWiden checks that differing leaves under one bucket
// two levels up are repaired together, and that the filter covers every
// key of both.
func TestDigestRepairsWiden(t *testing.T) {
	leaf := func(l uint64) uint64 { return l << (64 - 18) } // a key hash in leaf l of a 3-level tree
	at := func(l uint64) wire.BucketFilter {
		return wire.BucketFilter{Bucket: wire.Bucket{Map: 9, Depth: 2, Prefix: uint32(l >> 6)}, Children: 1 << (l % 64)}
	}
	for _, tc := range []struct {
		a, b  uint64 // leaves
		depth uint8  // of the widened filter's bucket
	}{
		{5, 6, 2},                       // siblings: one parent, two children
		{5, 64 + 6, 1},                  // cousins: one grandparent
		{5, 64*64 + 6, 0},               // under two top-level buckets: the root
		{64*64*63 + 1, 64 * 64 * 63, 2}, // siblings at the end
	} {
		w, ok := widen(at(tc.a), at(tc.b))
		if !ok || w.Depth != tc.depth || !inFilter(&w, leaf(tc.a)) || !inFilter(&w, leaf(tc.b)) {
			t.Errorf("widen(%d, %d) = %+v, %v; want depth %d holding both", tc.a, tc.b, w, ok, tc.depth)
		}
		if w.Check() != nil || w.Children == 0 {
			t.Errorf("widen(%d, %d) = %+v: not a valid filter", tc.a, tc.b, w)
		}
	}
	if _, ok := widen(at(1), wire.BucketFilter{Bucket: wire.Bucket{Map: 8, Depth: 2}, Children: 1}); ok {
		t.Error("filters of two maps widened into one")
	}
	var d digests
	d.client = &resyncClient{}
	for _, l := range []uint64{5, 64 + 6, 64*64 + 7, 64*64 + 8} {
		d.queue(at(l), 3)
	}
	if len(d.round.repairs) != 2 || d.round.repairs[0].Depth != 1 || d.round.repairs[1].Depth != 2 {
		t.Fatalf("repairs %+v; want two, one per grandparent", d.round.repairs)
	}
}

// A new read does not start a round while the last round's repairs are
// queued or one is under way: a round started then dropped them, and the
// repair under way, once done, took the new round's first repair with it.
func TestDigestRoundWaitsForRepairs(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, announce(t, peerNode, 1, 0))
	f.n.ready.become("test", 1)
	if _, err := f.n.digester.read(); err != nil {
		t.Fatal(err)
	}
	f.n.mu.Lock()
	defer f.n.mu.Unlock()
	p := f.n.peers.byNode[peerNode]
	p.ready = true
	d := &f.n.digests
	d.round = digestRound{id: 7, peer: p, repairs: []wire.BucketFilter{{Bucket: wire.Bucket{Map: f.fpFlow, Depth: 1}, Children: 1}}}
	d.onTimers(time.Now())
	if !f.n.client.filtered || d.round.id != 7 || f.stats.DigestRounds.Load() != 0 {
		t.Fatalf("round %d, %d rounds, repair under way %v: want the repair started and no round", d.round.id, f.stats.DigestRounds.Load(), f.n.client.filtered)
	}
	d.onTimers(time.Now())
	if d.round.id != 7 {
		t.Fatal("a round started while a repair was under way")
	}
	f.n.client.reset() // as at the repair's end
	p.stream.paused = false
	d.repaired()
	d.onTimers(time.Now())
	if d.round.id != 8 || f.stats.DigestRounds.Load() != 1 {
		t.Fatalf("round %d, %d rounds: want the next round once the repairs were done", d.round.id, f.stats.DigestRounds.Load())
	}
}

// A digest repair is no full resync: the status reports none while it
// runs, as it says (and a node repairing serves, see [Node.upToDate]).
func TestDigestRepairIsNoResyncInStatus(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, readyAnnounce(t, peerNode, 1, 0))
	p := f.n.peers.byNode[peerNode]
	f.n.client.beginFiltered(p, wire.BucketFilter{Bucket: wire.Bucket{Map: f.fpFlow}, Children: 1}, time.Now())
	if r := f.n.Status().Resync; r != nil {
		t.Fatalf("status reports a resync %+v during a digest repair", r)
	}
	f.n.client.abandon(time.Now(), "test")
	f.n.client.begin(p, time.Now())
	if f.n.Status().Resync == nil {
		t.Fatal("status reports no resync during a full one")
	}
}
