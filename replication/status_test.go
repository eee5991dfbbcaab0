package replication

import (
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/wire"
)

// Status shows each peer's progress, the gap it waits on, and the resync
// under way; every batch written is timed in ApplySeconds.
func TestStatus(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 3, "key1", "3"))
	st := f.n.Status()
	if st.Node != ourNode || st.Ready || len(st.Peers) != 1 || st.Resync != nil {
		t.Fatalf("status %+v, want node %d, not ready, one peer, no resync", st, ourNode)
	}
	p := st.Peers[0]
	if p.Node != peerNode || p.Seq != 3 || p.Applied != 1 || p.Lag() != 2 || !p.MissingSince.Equal(t0) {
		t.Errorf("peer %+v, want seq 3, applied 1, lag 2, missing since %v", p, t0)
	}
	f.n.client.begin(f.n.peers.byNode[peerNode], t0)
	if r := f.n.Status().Resync; r == nil || r.Peer != peerNode || r.Streaming {
		t.Errorf("resync %+v, want one requested of node %d", r, peerNode)
	}
	counts, sum := f.stats.ApplySeconds.Snapshot()
	var n uint64
	for _, c := range counts {
		n += c
	}
	if n != 1 || sum <= 0 {
		t.Errorf("apply histogram counted %d batches (sum %vs), want 1", n, sum)
	}
}

func TestHistogramBuckets(t *testing.T) {
	var h Histogram
	for _, d := range []time.Duration{0, 10 * time.Microsecond, 11 * time.Microsecond, time.Second, time.Hour} {
		h.Observe(d)
	}
	counts, sum := h.Snapshot()
	if counts[0] != 2 || counts[1] != 1 || counts[len(HistogramBounds)-1] != 1 || counts[len(HistogramBounds)] != 1 {
		t.Errorf("buckets %v: want 0 and 10µs in the first, 11µs in the second, 1s in the last bound, 1h above", counts)
	}
	if want := (time.Hour + time.Second + 21*time.Microsecond).Seconds(); sum != want {
		t.Errorf("sum %v, want %v", sum, want)
	}
}

// A starting node that hears a ready peer waits until the peer has been
// heard long enough to be trusted and resyncs from it, even when its own
// node id is the lowest: deciding alone would lose what the group holds.
func TestReadyPeerNotYetTrustedIsWaitedFor(t *testing.T) {
	f := newReceiverFixture(t) // ourNode 1 is lower than peerNode 2
	t0 := time.Now()
	f.n.ready.started = t0.Add(-time.Hour) // waited long enough
	d := readyAnnounce(t, peerNode, 1, 0)
	f.handleAt(t0, peerA, d)
	f.n.dispatch.onTimers(t0.Add(time.Millisecond), nil)
	if f.n.ready.isReady() || f.n.client.phase != syncIdle {
		t.Fatalf("ready %v, phase %d right after hearing a ready peer: want neither ready nor asking yet",
			f.n.ready.isReady(), f.n.client.phase)
	}
	f.handleAt(t0.Add(trustAfter*DefaultAnnounceInterval), peerA, d)
	f.n.dispatch.onTimers(t0.Add(trustAfter*DefaultAnnounceInterval), nil)
	if f.n.ready.isReady() || f.n.client.phase != syncRequested {
		t.Errorf("ready %v, phase %d once the peer is trusted: want a resync requested", f.n.ready.isReady(), f.n.client.phase)
	}
}

// A starting node asks a ready peer heard a moment ago for its initial
// sync as soon as the peer's address echoed a cookie: the round trip
// shows the peer lives there, as hearing it for two announce intervals
// would, in a fraction of the time. Without the echo it waits.
func TestReadyPeerProvenByCookieServesAtOnce(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.dispatch(peerA, readyAnnounce(t, peerNode, 1, 0), true, t0)
	f.n.dispatch.onTimers(t0.Add(time.Millisecond), nil)
	if f.n.client.phase != syncIdle {
		t.Fatal("a resync was asked of a peer heard a moment ago whose address proved nothing")
	}
	if f.stats.CookiesSent.Load() != 1 {
		t.Fatalf("%d cookies sent to the ready peer heard a moment ago, want 1", f.stats.CookiesSent.Load())
	}
	f.echoCookies(t0.Add(2 * time.Millisecond))
	f.n.dispatch.onTimers(t0.Add(3*time.Millisecond), nil)
	if f.n.client.phase != syncRequested {
		t.Errorf("phase %d once the peer's address echoed the cookie, want a resync requested", f.n.client.phase)
	}
}

// A ready node that hears a new node announces itself again at once, so
// that the starting node has the credit to prove its address without
// waiting an announce interval; a node waiting for its own initial sync
// does not.
func TestNewPeerGreeted(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, announce(t, peerNode, 1, 0))
	if f.n.sender.greet.Load() {
		t.Error("a node not ready itself greeted a new peer")
	}
	f = newReceiverFixture(t)
	f.n.ready.become("test", 0)
	f.handle(peerA, announce(t, peerNode, 1, 0))
	if !f.n.sender.greet.Load() {
		t.Error("a ready node did not greet a new peer")
	}
}

// A ready node that hears a node for the first time, or again after it
// forgot it, asks for everything of the node's run from 1: nothing else
// would bring what the node sent while it was not heard.
func TestNewPeerOfReadyNodeRepairedFromOne(t *testing.T) {
	f := newReceiverFixture(t)
	f.n.ready.become("test", 0)
	f.handle(peerA, f.peerDatagram(t, 1, 500, "key1", "500"))
	// One small datagram pays for the cookie to a new peer's address,
	// not for the request too: that goes once the peer echoed it.
	f.echoCookies(time.Now())
	got := f.nacks(t, wire.KindNack)
	if len(got) != 1 || got[0][0] != (wire.Range{First: 1, Last: 499}) {
		t.Fatalf("requests %v, want [1,499]", got)
	}
	if f.value("key1") != "" {
		t.Error("datagram 500 applied before 1 to 499")
	}
}

// The table of counters names each counter and each series once, and a
// snapshot reads every counter into its own row.
func TestCounters(t *testing.T) {
	names, series := map[string]bool{}, map[string]bool{}
	for _, c := range Counters {
		if names[c.Name] {
			t.Errorf("two counters named %s", c.Name)
		}
		names[c.Name] = true
		if s := c.Metric + "{" + c.LabelName + "=" + c.LabelValue + "}"; c.Metric != "" && series[s] {
			t.Errorf("two counters exported as %s", s)
		} else {
			series[s] = true
		}
	}
	var s Stats
	fields := reflect.ValueOf(&s.Counts).Elem()
	for i := range fields.NumField() {
		fields.Field(i).Addr().Interface().(*atomic.Uint64).Store(uint64(i + 1))
	}
	snap := s.Snapshot()
	attrs := snap.Attrs()
	if len(attrs) != len(Counters) {
		t.Fatalf("%d attributes, %d counters", len(attrs), len(Counters))
	}
	for i, c := range Counters {
		if v := c.Of(&snap); v != uint64(i+1) || attrs[i].Key != c.Name || attrs[i].Value.Uint64() != v {
			t.Errorf("counter %s reads %d (attribute %v), want %d", c.Name, v, attrs[i], i+1)
		}
	}
	if s.Captured.Load() != snap.Captured || snap.Captured != 1 {
		t.Errorf("captured %d, snapshot %d", s.Captured.Load(), snap.Captured)
	}
}
