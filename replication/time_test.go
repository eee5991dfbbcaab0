package replication

import (
	"math/rand/v2"
	"testing"
	"time"
)

// fixedTime is a virtual clock that moves only when told to.
type fixedTime struct{ now time.Time }

func (f *fixedTime) Now() time.Time        { return f.now }
func (f *fixedTime) Sleep(d time.Duration) { f.now = f.now.Add(d) }

// A node given a clock and a random source takes its time and its
// request ids from them and from nothing else: stamps, the start of its
// initial sync and its resync request ids follow them.
func TestConfigTimeAndRand(t *testing.T) {
	virtual := &fixedTime{now: time.Date(2041, 3, 4, 5, 6, 7, 0, time.UTC)}
	ids := func() uint32 {
		n := newFixtureWith(t, Config{Time: virtual, Rand: rand.NewChaCha8([32]byte{1, 2})}).n
		if got := n.clock.Now().Time(); !got.Equal(virtual.now) {
			t.Fatalf("the node's clock stamps at %v, not at the configured %v", got, virtual.now)
		}
		n.peers.add(peerNode, 1, peerA, virtual.now, newStream(1, 8))
		n.client.begin(n.peers.byNode[peerNode], virtual.now)
		return n.client.id
	}
	if a, b := ids(), ids(); a != b {
		t.Errorf("two nodes with the same random source asked with request ids %d and %d", a, b)
	}
	if n := newReceiverFixture(t).n; n.time != (SystemTime{}) {
		t.Errorf("a node configured without a clock runs on %T", n.time)
	}
}
