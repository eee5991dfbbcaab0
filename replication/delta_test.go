package replication

import (
	"fmt"
	"math"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/wire"
)

// A running peer that gives up some of a node's change datagrams gets a
// delta resync: only what the node's stream carried since the first one
// lost, the remembered deletes included, not the whole map; and it holds
// what it would have held had nothing been lost, deletes of keys written
// long before the loss included.
func TestDeltaResyncAfterGivenUpGap(t *testing.T) {
	var n memNet
	var dropping atomic.Bool
	n.drop = func(d []byte) bool {
		h := wire.Header{}
		return dropping.Load() && h.Unmarshal(d) == nil && h.Kind == wire.KindChanges && h.Node == 1
	}
	a := startMemNode(t, &n, 1, nil)
	a.waitReady(t)
	// Written over more datagrams than a floor's chunk (see floorChunk).
	for r := range 3 * floorChunk {
		sent := a.stats.DatagramsSent.Load()
		for i := r * 10; i < r*10+10; i++ {
			a.write(string([]byte{'o', 0, byte(i >> 8), byte(i)}), fmt.Sprintf("old%05d", i), false)
		}
		for deadline := time.Now().Add(5 * time.Second); a.stats.DatagramsSent.Load() == sent; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("a sent nothing")
			}
		}
	}
	b := startMemNode(t, &n, 2, nil)
	b.waitReady(t)
	waitSame(t, a, b)
	before := b.stats.SyncEntries.Load()

	// a's changes, resends included, are lost until b gives them up.
	dropping.Store(true)
	for i := range 20 {
		a.write(string([]byte{'o', 0, 0, byte(i)}), fmt.Sprintf("new%05d", i), false)
	}
	for i := range 5 {
		a.write(string([]byte{'o', 0, 0, byte(100 + i)}), "", false) // written long before the loss
	}
	for i := range 10 {
		a.write(string([]byte{'n', 0, 0, byte(i)}), fmt.Sprintf("add%05d", i), false)
	}
	for deadline := time.Now().Add(10 * time.Second); b.stats.ResyncNeeded.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("b gave nothing up; log:\n%s", b.logs)
		}
	}
	dropping.Store(false)
	waitSame(t, a, b)
	waitCount(t, "b's resyncs_delta", &b.stats.ResyncsDelta, 1)
	// 35 changes, and those of the datagrams before the loss in its
	// chunk: never the 485 entries and deletes a full resync carries.
	if got := b.stats.SyncEntries.Load() - before; got < 35 || got > 35+10*2*floorChunk {
		t.Errorf("the delta carried %d entries and deletes, want the 35 changed since the loss", got)
	}
	// The deletes came as the deletes a remembered.
	if got := b.stats.SyncDeleted.Load(); got != 5 {
		t.Errorf("sync_deleted %d, want the 5 deletes", got)
	}
	if t.Failed() {
		t.Logf("a:\n%s\nb:\n%s", a.logs, b.logs)
	}
}

// The stamp floors reach back further than the datagrams held, and a
// request from any number, forged or not, gets either a floor no later
// than every record sent since, or none (a full resync).
func TestResendFloors(t *testing.T) {
	b, err := newResendBuffer(4096, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.floor(1); ok {
		t.Error("floor(1) of an empty buffer is known")
	}
	// Datagrams 5.. with stamps 10 times their number, but for one
	// relayed record of stamp 7 at the end of the third chunk.
	const relayed, last = 3*floorChunk - 1, 4*floorChunk + 5
	for seq := uint64(5); seq <= last; seq++ {
		f := hlc.Stamp(seq * 10)
		if seq == relayed {
			f = 7
		}
		b.note(seq, f)
	}
	for _, c := range []struct {
		from uint64
		want hlc.Stamp
		ok   bool
	}{
		{0, 0, false},
		{4, 0, false},
		{5, 7, true},
		{relayed - 1, 7, true},
		{relayed, 7, true},
		{relayed + 1, 10 * (relayed + 1), true},
		{last, 10 * (last / floorChunk * floorChunk), true}, // the chunk's oldest
		{last + 1, math.MaxUint64, true},                    // nothing sent since
		{math.MaxUint64, math.MaxUint64, true},
	} {
		if got, ok := b.floor(c.from); got != c.want || ok != c.ok {
			t.Errorf("floor(%d) = %d, %v; want %d, %v", c.from, got, ok, c.want, c.ok)
		}
	}
	// A lost datagram makes every delta from before it full.
	b.note(last+1, 0)
	if got, ok := b.floor(last); !ok || got != 0 {
		t.Errorf("floor across a lost datagram = %d, %v; want 0 (full)", got, ok)
	}
	// Once the chunks are reused, the oldest are no longer known.
	for seq := uint64(last + 2); seq <= last+floorChunk*floorChunks; seq++ {
		b.note(seq, hlc.Stamp(seq*10))
	}
	if _, ok := b.floor(5); ok {
		t.Error("floor(5) is known after its chunk was reused")
	}
	if got, ok := b.floor(last + floorChunk*floorChunks); !ok || got > hlc.Stamp((last+floorChunk*floorChunks)*10) {
		t.Errorf("floor of the latest = %d, %v", got, ok)
	}
}

// An answer that makes a resync a delta is refused unless a delta was
// asked for, and from no later than the answer's own stamp: the requester
// infers no delete from a delta, so a forged one could keep keys the peer
// deleted.
func TestDeltaAnswerChecked(t *testing.T) {
	for _, tc := range []struct {
		name  string
		full  bool // a full resync is owed
		since func(stamp uint64) uint64
		taken bool
	}{
		{"full owed, delta answered", true, func(uint64) uint64 { return 1 }, false},
		{"delta asked, from after the answer", false, func(s uint64) uint64 { return s + 1 }, false},
		{"delta asked, from the top of its range", false, func(uint64) uint64 { return math.MaxUint64 }, false},
		{"delta asked, full answered", false, func(uint64) uint64 { return 0 }, true},
		{"delta asked and answered", false, func(s uint64) uint64 { return s }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newReceiverFixture(t)
			t0 := time.Now()
			f.handleAt(t0, peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
			p := f.n.peers.byNode[peerNode]
			f.n.client.ready.become("test", 1)
			p.needSync, p.full = true, tc.full
			f.n.client.begin(p, t0)
			if asked := f.n.client.delta != 0; asked == tc.full {
				t.Fatalf("delta asked from %d; full owed %v", f.n.client.delta, tc.full)
			}
			stamp := uint64(f.n.client.clock.Now())
			f.handleAt(t0, peerA, f.syncStart(wire.SyncStart{AsOf: 1, Stamp: stamp, Since: tc.since(stamp)}))
			if taken := f.n.client.phase == syncStreaming; taken != tc.taken {
				t.Errorf("answer taken %v, want %v", taken, tc.taken)
			}
		})
	}
}

// A delta request from any number, the ends of its range included, gets
// a snapshot no larger than a full one: from before what the stamp floors
// know, a full one; from after the latest datagram, only what is stamped
// from now on; and a forgotten delete or a capture loss since makes it
// full.
func TestDeltaSinceBounds(t *testing.T) {
	f := newReceiverFixture(t)
	s := &f.n.server
	now := s.clock.Now()
	if got := s.deltaSince(1, now); got != 0 {
		t.Errorf("deltaSince(1) with nothing sent = %d, want 0 (full)", got)
	}
	for seq := uint64(1); seq <= 40; seq++ {
		f.n.resend.note(seq, now-hlc.Stamp(100-seq))
	}
	for _, c := range []struct {
		from uint64
		want hlc.Stamp
	}{
		{1, now - 99},
		{floorChunk + 1, now - hlc.Stamp(100-floorChunk)},
		{41, now},
		{math.MaxUint64, now},
	} {
		if got := s.deltaSince(c.from, now); got != c.want {
			t.Errorf("deltaSince(%d) = %d, want %d", c.from, got, c.want)
		}
	}
	h := f.n.know.Lock()
	h.SuspectSince(now - 50)
	h.Unlock()
	if got := s.deltaSince(1, now); got != 0 {
		t.Errorf("deltaSince(1) across a capture loss = %d, want 0 (full)", got)
	}
	if got := s.deltaSince(41, now); got != now {
		t.Errorf("deltaSince(41) after a capture loss = %d, want %d", got, now)
	}
}
