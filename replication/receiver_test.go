package replication

// These tests feed datagrams straight to the receiver and apply them to
// the in-memory fakeTarget of fakes_test.go instead of a kernel map
// (netns_test.go applies to a real one).

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

const (
	ourNode, peerNode = 1, 2
	ourEpoch          = 77
)

type receiverFixture struct {
	n      *Node
	tr     *fakeTransport
	stats  *Stats
	flows  *fakeTarget
	nat    *fakeTarget
	tab    *Table
	logs   *logBuffer
	fpFlow uint32
	fpNAT  uint32
	// replyTo and replyToSince, when set, are what the sealing transport
	// found on opening each datagram the fixture hands over: where its
	// run's freshest came from, and since when.
	replyTo      netip.AddrPort
	replyToSince time.Time
}

func newReceiverFixture(t testing.TB, peers ...netip.Addr) *receiverFixture {
	t.Helper()
	return newFixtureWith(t, Config{Peers: peers})
}

// newFixtureWith builds the fixture's node from cfg and the fixture's
// table, with more maps after its own, fake transport and log.
func newFixtureWith(t testing.TB, cfg Config, more ...Map) *receiverFixture {
	t.Helper()
	f := &receiverFixture{flows: newFakeTarget(4, 8), nat: newFakeTarget(2, 2), logs: new(logBuffer)}
	f.tab = mustTable(t, testPayload, append([]Map{testMap("flows", 10, 4, 8, f.flows), testMap("nat", 11, 2, 2, f.nat)}, more...)...)
	f.fpFlow, f.fpNAT = f.tab.byID(10).fp, f.tab.byID(11).fp
	f.tr = newFakeTransport()
	cfg.Table, cfg.Transport, cfg.Node, cfg.Epoch, cfg.Log = f.tab, f.tr, ourNode, ourEpoch, newLogger(f.logs)
	f.n = newTestNode(t, cfg)
	f.stats = f.n.Stats()
	return f
}

func (f *receiverFixture) handle(from netip.AddrPort, d []byte) {
	f.handleAt(time.Now(), from, d)
}

// handleAt hands d to the receiver as a receive batch of its own, sent
// to it alone. Before it, the fixture's peers echo the cookies sent to
// them since the last one, as real peers would have by then.
func (f *receiverFixture) handleAt(now time.Time, from netip.AddrPort, d []byte) {
	f.echoCookies(now)
	f.dispatch(from, d, true, now)
	f.n.apply.applyRuns()
}

// dispatch hands d to the dispatcher alone, with what the sealing
// transport found on opening it.
func (f *receiverFixture) dispatch(from netip.AddrPort, d []byte, unicast bool, now time.Time) {
	f.n.dispatch.handle(&transport.Packet{Data: d, From: from, Unicast: unicast, ReplyTo: f.replyTo, ReplyToSince: f.replyToSince}, now)
}

// echoCookies has the peer at each address the node sent a cookie echo it.
func (f *receiverFixture) echoCookies(now time.Time) {
	for _, u := range f.tr.sentCookies() {
		var h wire.Header
		var c wire.Cookie
		if h.Unmarshal(u.dgrams[0]) != nil || h.Kind != wire.KindCookie || c.Unmarshal(&h, nil) != nil {
			continue // an echo of the node's own
		}
		for _, p := range f.n.peers.byNode {
			if p.addr == u.to {
				e := c.Header(wire.KindCookieEcho, p.node, p.epoch)
				e.Sealed = f.n.dispatch.keyed // as the sealing transport leaves it
				d, _ := e.AppendTo(nil)
				f.dispatch(u.to, d, true, now)
			}
		}
	}
}

// prove has the peer at from prove its address now, as a real peer does
// the first time this node answers it: the node sends it a cookie and it
// echoes it.
func (f *receiverFixture) prove(t testing.TB, from netip.AddrPort) {
	t.Helper()
	for _, p := range f.n.peers.byNode {
		if p.addr == from {
			p.cookieAt = time.Time{}
			f.n.gate.challenge(p, time.Now())
			f.echoCookies(time.Now())
			if !f.n.gate.proven(p) {
				t.Fatalf("peer %d at %v did not prove its address (credit %.0f)", p.node, from, p.credit)
			}
			return
		}
	}
	t.Fatalf("no peer at %v to prove", from)
}

func (f *receiverFixture) untouched(t *testing.T) {
	t.Helper()
	if len(f.flows.calls)+len(f.nat.calls) != 0 {
		t.Errorf("targets touched: %v %v", f.flows.calls, f.nat.calls)
	}
}

// Runs of one operation become one batch each, in datagram order, so the
// last change of every key wins exactly as it did on the sender.
func TestApplyRunsKeepPerKeyOrder(t *testing.T) {
	f := newReceiverFixture(t)
	var b changesBuilder
	b.start()
	b.add(t, f.fpFlow, ops.Update, "key1", "value--1")
	b.add(t, f.fpFlow, ops.Update, "key2", "value--2")
	b.add(t, f.fpFlow, ops.Update, "key1", "value-1b") // duplicate in one run
	b.add(t, f.fpFlow, ops.Delete, "key1", "")
	b.add(t, f.fpFlow, ops.Delete, "key3", "")
	b.add(t, f.fpFlow, ops.Update, "key1", "value--3")
	b.add(t, f.fpNAT, ops.Update, "n1", "v1")
	b.add(t, f.fpFlow, ops.Delete, "key2", "")
	f.handle(peerA, b.finish(peerNode, 1, 1))

	want := []call{
		{ops.Update, []byte("key1key2key1"), []byte("value--1value--2value-1b")},
		{ops.Delete, []byte("key1key3"), nil},
		{ops.Update, []byte("key1"), []byte("value--3")},
		{ops.Delete, []byte("key2"), nil},
	}
	if !slices.EqualFunc(f.flows.calls, want, func(a, b call) bool {
		return a.op == b.op && string(a.keys) == string(b.keys) && string(a.vals) == string(b.vals)
	}) {
		t.Errorf("flows batches:\n got %q\nwant %q", f.flows.calls, want)
	}
	if got := f.flows.state; len(got) != 1 || got["key1"] != "value--3" {
		t.Errorf("flows holds %q, want only key1=value--3", got)
	}
	if got := f.nat.state; len(got) != 1 || got["n1"] != "v1" {
		t.Errorf("nat holds %q, want only n1=v1", got)
	}
	s := f.stats.Snapshot()
	if s.ChangesApplied != 7 || s.DeletesMissing != 1 || s.DatagramsReceived != 1 {
		t.Errorf("stats %+v, want 7 applied (8 less the missing key3), 1 missing, 1 datagram", s)
	}
}

// A peer's LPM trie key with bits set after its prefix length is the
// trie's entry for that prefix: it is applied, and its version kept, as
// the canonical key, so a later write of the canonical spelling is no
// other key.
func TestTrieKeysCanonical(t *testing.T) {
	trie := newFakeTarget(8, 8)
	m := testMap("blocks", 12, 8, 8, trie)
	m.Desc.Type = uint32(ebpf.LPMTrie)
	f := newFixtureWith(t, Config{}, m)
	fp := f.tab.byID(12).fp
	key := func(plen byte, addr string) string { return string([]byte{plen, 0, 0, 0}) + addr } // little-endian prefix length
	var b changesBuilder
	b.start()
	b.add(t, fp, ops.Update, key(16, "\x0a\x01\x09\x09"), "value--1")
	b.add(t, fp, ops.Update, key(12, "\xac\x1f\xff\xff"), "value--2")
	f.handle(peerA, b.finish(peerNode, 1, 1))
	want := map[string]string{key(16, "\x0a\x01\x00\x00"): "value--1", key(12, "\xac\x10\x00\x00"): "value--2"}
	if got := trie.snapshot(); !maps.Equal(got, want) {
		t.Errorf("trie holds %q, want %q", got, want)
	}
	if _, ok := knownVersion(f.n.know, 2, key(16, "\x0a\x01\x00\x00")); !ok {
		t.Error("no version kept for the canonical key")
	}
}

// A run continues across the datagrams of one receive batch, so a batch of
// small datagrams costs one syscall per run, not one per datagram. The
// runs are applied, in order, at the end of the batch, or before a
// datagram of another kind that may read the maps or report how far they
// were written.
func TestApplyRunsSpanDatagrams(t *testing.T) {
	f := newReceiverFixture(t)
	now := time.Now()
	f.dispatch(peerA, f.peerDatagram(t, 1, 1, "key1", "1"), true, now)
	f.dispatch(peerA, f.peerDatagram(t, 1, 2, "key2", "2"), true, now)
	var b changesBuilder
	b.start()
	b.add(t, f.fpFlow, ops.Update, "key3", "       3")
	b.add(t, f.fpFlow, ops.Delete, "key1", "")
	f.dispatch(peerA, b.finish(peerNode, 1, 3), true, now)
	if len(f.flows.calls) != 0 {
		t.Fatalf("batches applied in the middle of a receive batch: %q, want none yet", f.flows.calls)
	}
	// The sync request reads what was applied: the pending runs go first.
	f.dispatch(peerA, syncRequest(peerNode, 1, 9), true, now)
	if len(f.flows.calls) != 2 {
		t.Fatalf("batches when the sync request was handled: %q, want the update run and the delete run", f.flows.calls)
	}
	f.dispatch(peerA, f.peerDatagram(t, 1, 4, "key4", "4"), true, now)
	f.n.apply.applyRuns()

	want := []call{
		{ops.Update, []byte("key1key2key3"), []byte("       1       2       3")},
		{ops.Delete, []byte("key1"), nil},
		{ops.Update, []byte("key4"), []byte("       4")},
	}
	if !slices.EqualFunc(f.flows.calls, want, func(a, b call) bool {
		return a.op == b.op && string(a.keys) == string(b.keys) && string(a.vals) == string(b.vals)
	}) {
		t.Errorf("flows batches:\n got %q\nwant %q", f.flows.calls, want)
	}
	if s := f.stats.Snapshot(); s.ChangesApplied != 5 {
		t.Errorf("changes_applied %d, want 5", s.ChangesApplied)
	}
}

// syncRequest is node's request, in epoch, for a snapshot of our maps.
func syncRequest(node uint32, epoch uint64, id uint32) []byte {
	h := wire.Header{Kind: wire.KindSyncRequest, Node: node, Epoch: epoch, Seq: wire.SyncSeq(id, 0)}
	d := make([]byte, wire.HeaderSize)
	_, _ = h.AppendTo(d[:0])
	return d
}

func TestUnknownMapSkipped(t *testing.T) {
	f := newReceiverFixture(t)
	var b changesBuilder
	b.start()
	b.add(t, 0xdeadbeef, ops.Update, "whatever-size", "x")
	b.add(t, 0xdeadbeef, ops.Delete, "whatever-size", "")
	b.add(t, f.fpFlow, ops.Update, "key1", "value--1")
	f.handle(peerA, b.finish(peerNode, 1, 1))
	if s := f.stats.Snapshot(); s.UnknownMap != 2 || s.ChangesApplied != 1 {
		t.Errorf("unknown_map %d changes_applied %d, want 2 and 1", s.UnknownMap, s.ChangesApplied)
	}
	if f.flows.state["key1"] != "value--1" {
		t.Error("the known map's section was not applied")
	}
	if !strings.Contains(f.logs.String(), "0xdeadbeef") {
		t.Errorf("log does not name the unknown fingerprint:\n%s", f.logs)
	}
}

func TestApplyErrorCounted(t *testing.T) {
	f := newReceiverFixture(t)
	f.flows.fail = errors.New("no space")
	var b changesBuilder
	b.start()
	b.add(t, f.fpFlow, ops.Update, "key1", "value--1")
	f.handle(peerA, b.finish(peerNode, 1, 1))
	if s := f.stats.Snapshot(); s.ApplyErrors != 1 || s.ChangesApplied != 0 {
		t.Errorf("apply_errors %d changes_applied %d, want 1 and 0", s.ApplyErrors, s.ChangesApplied)
	}
	if l := f.logs.String(); !strings.Contains(l, "map=flows") || !strings.Contains(l, "no space") {
		t.Errorf("log does not name the map and error:\n%s", l)
	}
}

func TestMalformedDropped(t *testing.T) {
	var b changesBuilder
	valid := func(f *receiverFixture) []byte {
		b.start()
		b.add(t, f.fpFlow, ops.Update, "key1", "value--1")
		b.add(t, f.fpNAT, ops.Update, "n1", "v1")
		return b.finish(peerNode, 1, 1)
	}
	for _, tc := range []struct {
		name    string
		corrupt func(f *receiverFixture, d []byte) []byte
	}{
		{"empty", func(_ *receiverFixture, d []byte) []byte { return nil }},
		{"short header", func(_ *receiverFixture, d []byte) []byte { return d[:wire.HeaderSize-1] }},
		{"bad magic", func(_ *receiverFixture, d []byte) []byte { d[0] ^= 0xff; return d }},
		{"bad version", func(_ *receiverFixture, d []byte) []byte { d[2] = 99; return d }},
		{"count too high", func(_ *receiverFixture, d []byte) []byte { d[7]++; return d }},
		// The first section is fine, the second is cut: nothing is applied.
		{"truncated last section", func(_ *receiverFixture, d []byte) []byte { return d[:len(d)-1] }},
		{"trailing garbage", func(_ *receiverFixture, d []byte) []byte { return append(d, 0) }},
		// The last record: op, a relayed stamp (12), key "n1", value "v1".
		{"bad op in last section", func(_ *receiverFixture, d []byte) []byte { d[len(d)-17] = 9; return d }},
		{"sequence zero", func(_ *receiverFixture, d []byte) []byte { clear(d[20:28]); return d }},
		{"record size not the map's", func(f *receiverFixture, _ []byte) []byte {
			b.start()
			b.add(t, f.fpFlow, ops.Update, "key1", "value--1-too-long")
			return b.finish(peerNode, 1, 1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newReceiverFixture(t)
			f.handle(peerA, tc.corrupt(f, valid(f)))
			if s := f.stats.Snapshot(); s.Malformed != 1 || s.DatagramsReceived != 0 {
				t.Errorf("malformed %d received %d, want 1 and 0", s.Malformed, s.DatagramsReceived)
			}
			f.untouched(t)
			if len(f.n.Peers()) != 0 {
				t.Error("a malformed datagram created peer state")
			}
		})
	}
}

func TestForgedDropped(t *testing.T) {
	datagram := func(f *receiverFixture, epoch, seq uint64) []byte {
		var b changesBuilder
		b.start()
		b.add(t, f.fpFlow, ops.Update, "key1", "value--1")
		return b.finish(peerNode, epoch, seq)
	}
	t.Run("known node from another address", func(t *testing.T) {
		f := newReceiverFixture(t)
		f.handle(peerA, datagram(f, 1, 1))
		f.flows.calls = nil
		f.handle(peerB, datagram(f, 1, 2))
		if s := f.stats.Snapshot(); s.Forged != 1 || s.DatagramsReceived != 1 {
			t.Errorf("forged %d received %d, want 1 and 1", s.Forged, s.DatagramsReceived)
		}
		f.untouched(t)
		if l := f.logs.String(); !strings.Contains(l, "from="+peerB.String()) || !strings.Contains(l, "known_addr="+peerA.String()) {
			t.Errorf("log does not name both addresses:\n%s", l)
		}
	})
	// A restart is taken only from the address the node is bound to:
	// anyone else claiming a later epoch is an impostor (a hijack would
	// make the real node's datagrams look like duplicates).
	t.Run("new epoch from another address", func(t *testing.T) {
		f := newReceiverFixture(t)
		f.handle(peerA, datagram(f, 1, 1))
		f.handle(peerB, datagram(f, 2, 1))
		if s := f.stats.Snapshot(); s.Forged != 1 || s.DatagramsReceived != 1 {
			t.Errorf("forged %d received %d, want 1 and 1", s.Forged, s.DatagramsReceived)
		}
		f.handle(peerA, datagram(f, 1, 2))
		if p := f.n.Peers(); len(p) != 1 || p[0].Addr != peerA || p[0].Epoch != 1 || p[0].Applied != 2 {
			t.Errorf("peers %+v, want node %d at %s in epoch 1 with 2 applied", p, peerNode, peerA)
		}
	})
	t.Run("new epoch from its address is a restart", func(t *testing.T) {
		f := newReceiverFixture(t)
		f.handle(peerA, datagram(f, 1, 1))
		f.handle(peerA, datagram(f, 2, 1))
		if s := f.stats.Snapshot(); s.Forged != 0 || s.DatagramsReceived != 2 {
			t.Errorf("forged %d received %d, want 0 and 2", s.Forged, s.DatagramsReceived)
		}
		if p := f.n.Peers(); len(p) != 1 || p[0].Epoch != 2 {
			t.Errorf("peers %+v, want node %d in epoch 2", p, peerNode)
		}
	})
	t.Run("not in --peers", func(t *testing.T) {
		f := newReceiverFixture(t, peerA.Addr())
		f.handle(peerB, datagram(f, 1, 1))
		if s := f.stats.Snapshot(); s.Forged != 1 {
			t.Errorf("forged %d, want 1", s.Forged)
		}
		f.untouched(t)
		f.handle(peerA, datagram(f, 1, 1))
		if s := f.stats.Snapshot(); s.DatagramsReceived != 1 {
			t.Errorf("received %d from a listed peer, want 1", s.DatagramsReceived)
		}
	})
	t.Run("own node id", func(t *testing.T) {
		f := newReceiverFixture(t)
		var b changesBuilder
		b.start()
		b.add(t, f.fpFlow, ops.Update, "key1", "value--1")
		f.handle(peerA, b.finish(ourNode, 1, 1))
		if s := f.stats.Snapshot(); s.OwnDropped != 1 || s.DatagramsReceived != 0 {
			t.Errorf("own_dropped %d received %d, want 1 and 0", s.OwnDropped, s.DatagramsReceived)
		}
		f.untouched(t)
	})
}

func announce(t testing.TB, node uint32, epoch, seq uint64, descs ...wire.Descriptor) []byte {
	t.Helper()
	b := make([]byte, wire.HeaderSize)
	for i := range descs {
		var err error
		if b, err = descs[i].AppendTo(b); err != nil {
			t.Fatal(err)
		}
	}
	h := wire.Header{Kind: wire.KindAnnounce, Count: uint16(len(descs)), Node: node, Epoch: epoch, Seq: seq}
	if _, err := h.AppendTo(b[:0]); err != nil {
		t.Fatal(err)
	}
	return b
}

// readyAnnounce is announce with [wire.FlagReady]: from a peer that
// completed its initial sync and serves snapshots.
func readyAnnounce(t testing.TB, node uint32, epoch, seq uint64, descs ...wire.Descriptor) []byte {
	t.Helper()
	d := announce(t, node, epoch, seq, descs...)
	d[4] |= wire.FlagReady
	return d
}

func TestSchemaMismatch(t *testing.T) {
	f := newReceiverFixture(t)
	theirs := f.tab.byID(10).Desc
	theirs.KeySize = 8
	theirs.Type = uint32(ebpf.LRUHash)
	same := f.tab.byID(11).Desc
	other := wire.Descriptor{Name: "only_theirs", Type: uint32(ebpf.Hash), KeySize: 4, ValueSize: 4, MaxEntries: 8}

	f.handle(peerA, announce(t, peerNode, 1, 0, theirs, same, other))
	logs := f.logs.String()
	for _, want := range []string{"level=ERROR", "map=flows", "peer=2", "the peer's type is LRUHash, this node's Hash",
		"the peer's key size is 8, this node's 4", "fix=\"create the map alike"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	for _, unwanted := range []string{"the peer's value size", "the peer's max entries", "map=nat", "only_theirs"} {
		if strings.Contains(logs, unwanted) {
			t.Errorf("log mentions %q, which matches or is not ours:\n%s", unwanted, logs)
		}
	}

	// Reported once per peer and schema, not every announce.
	time.Sleep(logInterval) // past the rate limit, so only the dedup holds it back
	f.handle(peerA, announce(t, peerNode, 1, 0, theirs, same))
	if n := strings.Count(f.logs.String(), "map differs"); n != 1 {
		t.Errorf("mismatch logged %d times, want once", n)
	}
	if s := f.stats.Snapshot(); s.MapMismatches != 1 {
		t.Errorf("map_mismatches %d, want 1", s.MapMismatches)
	}

	// Their changes to that map carry their fingerprint: unknown here.
	var b changesBuilder
	b.start()
	b.add(t, theirs.Fingerprint(), ops.Update, "key-key1", "value--1")
	f.handle(peerA, b.finish(peerNode, 1, 1))
	if s := f.stats.Snapshot(); s.UnknownMap != 1 {
		t.Errorf("unknown_map %d, want 1", s.UnknownMap)
	}
	f.untouched(t)
}

// Run hands every received packet to handle and returns cleanly once the
// transport is closed after cancellation.
func TestReceiverRun(t *testing.T) {
	f := newReceiverFixture(t)
	tr := f.tr
	var b changesBuilder
	b.start()
	b.add(t, f.fpFlow, ops.Update, "key1", "value--1")
	tr.in <- transport.Packet{Data: b.finish(peerNode, 1, 1), From: peerA}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.n.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for f.stats.ChangesApplied.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if f.stats.ChangesApplied.Load() != 1 {
		t.Error("the change was not applied")
	}
}

// Decoding and applying a datagram allocates nothing.
func TestReceiverAllocs(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 10, 4, 8, nopTarget{}))
	n := newTestNode(t, Config{Table: tab})
	stats := n.Stats()
	d := benchDatagram(t, tab.byID(10).fp)
	seq := uint64(1)
	now := time.Now()
	pkt := transport.Packet{Data: d, From: peerA, Unicast: true}
	step := func() {
		setSeq(d, seq)
		seq++
		n.dispatch.handle(&pkt, now)
		n.apply.applyRuns()
	}
	step() // the first datagram creates the peer
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	if a := testing.AllocsPerRun(1000, step); a != 0 {
		t.Errorf("%v allocations per datagram, want 0", a)
	}
	if s := stats.Snapshot(); s.Malformed != 0 || s.ChangesApplied == 0 {
		t.Errorf("stats %+v: datagrams not applied", s)
	}
}

// benchDatagram is a full datagram of alternating runs of updates and
// deletes, stamped as a sender stamps its own changes.
func benchDatagram(t testing.TB, fp uint32) []byte {
	var b changesBuilder
	b.start()
	base := testClock.Now()
	b.w.Reset(b.buf, peerNode, uint64(base))
	for i := 0; ; i++ {
		op, v := ops.Update, []byte("value--1")
		if i%8 >= 6 {
			op, v = ops.Delete, nil
		}
		if !b.w.Append(fp, op, uint64(base)+uint64(i), peerNode, []byte(key(i)), v) {
			break
		}
	}
	return b.finish(peerNode, 1, 1)
}

func setSeq(d []byte, seq uint64) {
	var h wire.Header
	_ = h.Unmarshal(d)
	h.Seq = seq
	_, _ = h.AppendTo(d[:0])
}

func BenchmarkDecodeApply(b *testing.B) {
	tab := mustTable(b, testPayload, testMap("flows", 10, 4, 8, nopTarget{}))
	n := newTestNode(b, Config{Table: tab})
	d := benchDatagram(b, tab.byID(10).fp)
	var h wire.Header
	_ = h.Unmarshal(d)
	now := time.Now()
	seq := uint64(1)
	pkt := transport.Packet{Data: d, From: peerA, Unicast: true}
	b.ReportAllocs()
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		setSeq(d, seq)
		seq++
		n.dispatch.handle(&pkt, now)
		n.apply.applyRuns()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(uint64(b.N)*uint64(h.Count)), "ns/change")
}

// BenchmarkDecodeApplySpread is BenchmarkDecodeApply over 4M keys known
// already, each datagram's keys spread over all of them, as a busy peer's
// are: every look-up of the knowledge table misses the cache, which the
// hot-key benchmark never does. Every record is newer than the known one.
func BenchmarkDecodeApplySpread(b *testing.B) {
	const keys = 1 << 22
	tab := mustTable(b, testPayload, testMap("flows", 10, 4, 8, nopTarget{}))
	n := newTestNode(b, Config{Table: tab})
	fp := tab.byID(10).fp
	spread := func(base hlc.Stamp, j int) []byte {
		var c changesBuilder
		c.start()
		c.w.Reset(c.buf, peerNode, uint64(base))
		for i := 0; ; i++ {
			k := int(uint32(j*1000+i) * 2654435761 % keys) // Fibonacci hashing: spread, distinct within a datagram
			if !c.w.Append(fp, ops.Update, uint64(base)+uint64(i), peerNode, []byte(key(k)), []byte("value--1")) {
				break
			}
		}
		return c.finish(peerNode, 1, 1)
	}
	h := n.know.Lock()
	h.Reserve(0, keys)
	for k := range keys {
		e := h.Put(0, []byte(key(k)))
		h.Set(e, 0, []byte(key(k)), knowledge.Version{Stamp: 1, Origin: peerNode}, false, true, time.Now())
	}
	h.Unlock()
	const rounds = 256
	dgrams := make([][]byte, rounds)
	now := time.Now()
	seq := uint64(1)
	var count int
	for b.Loop() {
		j := int(seq-1) % rounds
		if j == 0 { // newer stamps each pass over the datagrams
			b.StopTimer()
			for i := range dgrams {
				dgrams[i] = spread(testClock.Now(), int(seq)+i)
			}
			b.StartTimer()
		}
		d := dgrams[j]
		setSeq(d, seq)
		seq++
		pkt := transport.Packet{Data: d, From: peerA, Unicast: true}
		n.dispatch.handle(&pkt, now)
		count += n.apply.applyRuns()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(max(count, 1)), "ns/change")
}
