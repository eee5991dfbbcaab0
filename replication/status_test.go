package replication

import (
	"testing"
	"time"
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
