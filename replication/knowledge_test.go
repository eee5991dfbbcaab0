package replication

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
)

func TestVersionOrder(t *testing.T) {
	a := version{stamp: hlc.Make(1000, 0), origin: 1}
	b := version{stamp: hlc.Make(1000, 0), origin: 2}
	c := version{stamp: hlc.Make(1000, 1), origin: 1}
	for _, tc := range []struct {
		v, w  version
		newer bool
	}{
		{b, a, true},          // equal stamps: the higher node id wins
		{a, b, false},         //
		{c, b, true},          // a later stamp wins whatever the node
		{a, version{}, true},  // any stamped write beats an unstamped entry
		{version{}, a, false}, //
		{a, a, false},         // the same write is not newer than itself
	} {
		if got := tc.v.newer(tc.w); got != tc.newer {
			t.Errorf("%v newer than %v = %v, want %v", tc.v, tc.w, got, tc.newer)
		}
	}
}

// TestKeyTableAgainstMap puts, finds and removes random hashes, many
// sharing home slots, and checks every step against a Go map.
func TestKeyTableAgainstMap(t *testing.T) {
	var kt keyTable
	want := map[uint64]uint32{}
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 200_000 {
		// Few distinct values, so removes hit; at the table's load,
		// probe runs are long and wrap at a shard's end.
		h := r.Uint64N(20_000)*0x9e3779b97f4a7c15 | 1
		switch r.IntN(3) {
		case 0, 1:
			kt.put(h).setVersion(version{stamp: 1, origin: uint32(i)})
			want[h] = uint32(i)
		case 2:
			kt.remove(h)
			delete(want, h)
		}
	}
	if kt.n != len(want) {
		t.Fatalf("table holds %d, want %d", kt.n, len(want))
	}
	for h, o := range want {
		if s := kt.find(h); s == nil || s.version().origin != o {
			t.Fatalf("hash %#x: slot %+v, want origin %d", h, s, o)
		}
	}
	for i := range uint64(20_000) {
		h := i*0x9e3779b97f4a7c15 | 1
		if _, ok := want[h]; !ok && kt.find(h) != nil {
			t.Fatalf("removed hash %#x still found", h)
		}
	}
	for i := range kt.shards {
		if sh := &kt.shards[i]; len(sh.slots) > 0 && float64(sh.n)/float64(len(sh.slots)) > maxLoad {
			t.Fatalf("shard %d: load %.2f over %.2f", i, float64(sh.n)/float64(len(sh.slots)), maxLoad)
		}
	}
}

func TestAppliedSince(t *testing.T) {
	k := newKnowledge(knowledgeTable(t), time.Minute, hlc.New(nil, 0), 1, &Stats{})
	t0 := k.started.Add(time.Hour)
	key := []byte{1, 2, 3, 4}
	k.set(0, key, version{stamp: 5, origin: 2}, false, true, t0)
	s := k.lookup(0, key)
	for _, tc := range []struct {
		after time.Duration // t - t0
		since bool
	}{
		{-time.Second, true},            // the apply came after t
		{-20 * time.Second, true},       //
		{300 * time.Millisecond, false}, // the apply was over more than a tick before t
		{20 * time.Second, false},       //
	} {
		now := t0.Add(tc.after).Add(time.Second)
		if got := k.appliedSince(s, t0.Add(tc.after), now); got != tc.since {
			t.Errorf("apply at t0, t = t0%+v: appliedSince = %v, want %v", tc.after, got, tc.since)
		}
	}
	// Within a tick of the apply: counted as after it, never before.
	if !k.appliedSince(s, t0.Add(-time.Millisecond), t0) {
		t.Error("a t just before the apply did not count it as after")
	}
	// A t more than 30 s back counts every remote apply as recent, since
	// the ticks wrap.
	if !k.appliedSince(s, t0.Add(time.Millisecond), t0.Add(2*time.Minute)) {
		t.Error("a t two minutes old did not count the apply as recent")
	}
	// A local write clears the mark.
	k.set(0, key, version{stamp: 6, origin: 1}, false, false, t0)
	if k.appliedSince(k.lookup(0, key), t0.Add(-time.Second), t0) {
		t.Error("a local write left the remote mark")
	}
}

func TestTombstonesPruned(t *testing.T) {
	stats := &Stats{}
	k := newKnowledge(knowledgeTable(t), time.Minute, hlc.New(nil, 0), 1, stats)
	now := time.UnixMilli(1_700_000_000_000)
	key := func(i int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(i)) }
	old := version{stamp: hlc.Make(now.Add(-2*time.Minute).UnixMilli(), 0), origin: 1}
	recent := version{stamp: hlc.Make(now.Add(-time.Second).UnixMilli(), 0), origin: 1}
	k.set(0, key(1), old, true, false, now)
	k.set(0, key(2), old, true, false, now)
	k.set(0, key(3), recent, true, false, now)
	// Key 2 was written again after its delete: its tombstone is stale
	// and pruning must not forget the newer write.
	k.set(0, key(2), version{stamp: old.stamp + 1, origin: 1}, false, false, now)
	if n := k.prune(now); n != 2 {
		t.Fatalf("pruned %d log entries, want 2", n)
	}
	if k.lookup(0, key(1)) != nil {
		t.Error("a delete older than the horizon is remembered")
	}
	if s := k.lookup(0, key(2)); s == nil || s.tombstone() {
		t.Error("pruning a stale tombstone forgot the key's later write")
	}
	if s := k.lookup(0, key(3)); s == nil || !s.tombstone() {
		t.Error("a delete within the horizon was forgotten")
	}
	if k.tombs[0].len() != 1 || stats.TombstonesDropped.Load() != 0 {
		t.Errorf("log holds %d, dropped %d", k.tombs[0].len(), stats.TombstonesDropped.Load())
	}
}

func TestNextGenClearsOldMarks(t *testing.T) {
	k := newKnowledge(knowledgeTable(t), time.Minute, hlc.New(nil, 0), 1, &Stats{})
	key := []byte{9, 9, 9, 9}
	k.set(0, key, version{stamp: 1, origin: 1}, false, false, time.Now())
	k.lookup(0, key).setGen(2)
	for range 0x3f - 1 {
		k.nextGen()
	}
	if g := k.nextGen(); g != 1 {
		t.Fatalf("generation after wrapping = %d", g)
	}
	for range 1 {
		if g := k.nextGen(); g != 2 {
			t.Fatalf("generation = %d", g)
		}
	}
	if k.lookup(0, key).gen() == 2 {
		t.Fatal("a mark from before the wrap reads as current")
	}
}

// BenchmarkKnowledgeBytes reports the bytes of knowledge per key at 1M
// keys: the target is 24.
func BenchmarkKnowledgeBytes(b *testing.B) {
	for b.Loop() {
		var kt keyTable
		for i := range uint64(1 << 20) {
			kt.put(i*0x9e3779b97f4a7c15 | 1)
		}
		b.ReportMetric(float64(kt.bytes())/float64(kt.n), "bytes/key")
	}
}

// knowledgeTable is a table of one map of 4-byte keys.
func knowledgeTable(t *testing.T) *Table {
	return mustTable(t, 1472, testMap("m", 1, 4, 8, newFakeTarget(4, 8)))
}

// bytes is the memory the slots of t take.
func (t *keyTable) bytes() int {
	n := 0
	for i := range t.shards {
		n += len(t.shards[i].mem)
	}
	return n
}
