package knowledge

import (
	"encoding/binary"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/hlc"
)

func TestVersionOrder(t *testing.T) {
	a := Version{Stamp: hlc.Make(1000, 0), Origin: 1}
	b := Version{Stamp: hlc.Make(1000, 0), Origin: 2}
	c := Version{Stamp: hlc.Make(1000, 1), Origin: 1}
	for _, tc := range []struct {
		v, w  Version
		newer bool
	}{
		{b, a, true},          // equal stamps: the higher node id wins
		{a, b, false},         //
		{c, b, true},          // a later stamp wins whatever the node
		{a, Version{}, true},  // any stamped write beats an unstamped entry
		{Version{}, a, false}, //
		{a, a, false},         // the same write is not newer than itself
	} {
		if got := tc.v.Newer(tc.w); got != tc.newer {
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
			kt.put(h).setVersion(Version{Stamp: 1, Origin: uint32(i)})
			want[h] = uint32(i)
		case 2:
			kt.remove(h)
			delete(want, h)
		}
	}
	if kt.len() != len(want) {
		t.Fatalf("table holds %d, want %d", kt.len(), len(want))
	}
	for h, o := range want {
		if e := kt.find(h); e == nil || e.Version().Origin != o {
			t.Fatalf("hash %#x: entry %+v, want origin %d", h, e, o)
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
	k := newStore(time.Minute, nil)
	h := k.Lock()
	defer h.Unlock()
	t0 := k.started.Add(time.Hour)
	key := []byte{1, 2, 3, 4}
	h.Set(h.Put(0, key), 0, key, Version{Stamp: 5, Origin: 2}, false, true, t0)
	e := h.Lookup(0, key)
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
		if got := h.AppliedSince(e, t0.Add(tc.after), now); got != tc.since {
			t.Errorf("apply at t0, t = t0%+v: AppliedSince = %v, want %v", tc.after, got, tc.since)
		}
	}
	// Within a tick of the apply: counted as after it, never before.
	if !h.AppliedSince(e, t0.Add(-time.Millisecond), t0) {
		t.Error("a t just before the apply did not count it as after")
	}
	// A t more than 30 s back counts every remote apply as recent, since
	// the ticks wrap.
	if !h.AppliedSince(e, t0.Add(time.Millisecond), t0.Add(2*time.Minute)) {
		t.Error("a t two minutes old did not count the apply as recent")
	}
	// A local write clears the mark.
	h.Set(e, 0, key, Version{Stamp: 6, Origin: 1}, false, false, t0)
	if h.AppliedSince(h.Lookup(0, key), t0.Add(-time.Second), t0) {
		t.Error("a local write left the remote mark")
	}
}

func TestTombstonesPruned(t *testing.T) {
	var dropped atomic.Uint64
	k := newStore(time.Minute, &dropped)
	h := k.Lock()
	defer h.Unlock()
	now := time.UnixMilli(1_700_000_000_000)
	key := func(i int) []byte { return binary.BigEndian.AppendUint32(nil, uint32(i)) }
	set := func(i int, v Version, deleted bool) { h.Set(h.Put(0, key(i)), 0, key(i), v, deleted, false, now) }
	old := Version{Stamp: hlc.Make(now.Add(-2*time.Minute).UnixMilli(), 0), Origin: 1}
	recent := Version{Stamp: hlc.Make(now.Add(-time.Second).UnixMilli(), 0), Origin: 1}
	set(1, old, true)
	set(2, old, true)
	set(3, recent, true)
	// Key 2 was written again after its delete: its tombstone is stale
	// and pruning must not forget the newer write.
	set(2, Version{Stamp: old.Stamp + 1, Origin: 1}, false)
	if f := h.Forgotten(); f != 0 {
		t.Errorf("forgotten %d before any prune, want 0", f)
	}
	if n := h.Prune(now); n != 2 {
		t.Fatalf("pruned %d log entries, want 2", n)
	}
	if h.Lookup(0, key(1)) != nil {
		t.Error("a delete older than the horizon is remembered")
	}
	if e := h.Lookup(0, key(2)); e == nil || e.Deleted() {
		t.Error("pruning a stale tombstone forgot the key's later write")
	}
	if e := h.Lookup(0, key(3)); e == nil || !e.Deleted() {
		t.Error("a delete within the horizon was forgotten")
	}
	// A delta resync from old or before would miss key 1's delete.
	if f := h.Forgotten(); f != old.Stamp {
		t.Errorf("forgotten %d, want the pruned deletes' %d", f, old.Stamp)
	}
	if k.tombs[0].len() != 1 || dropped.Load() != 0 {
		t.Errorf("log holds %d, dropped %d", k.tombs[0].len(), dropped.Load())
	}
}

// TestTombstonesLive checks that the iterator yields only the deletes
// that are still the latest write of their key, in the order learned.
func TestTombstonesLive(t *testing.T) {
	k := newStore(time.Minute, nil)
	h := k.Lock()
	defer h.Unlock()
	now := time.Now()
	v := func(s int) Version { return Version{Stamp: hlc.Stamp(s), Origin: 1} }
	set := func(key string, s int, deleted bool) {
		h.Set(h.Put(0, []byte(key)), 0, []byte(key), v(s), deleted, false, now)
	}
	set("aaaa", 1, true)
	set("bbbb", 2, true)
	set("bbbb", 3, false) // written again: its delete is no longer the latest
	set("cccc", 4, true)
	set("cccc", 5, true) // deleted twice: only the later one is live
	set("dddd", 0, true) // an unstamped delete is not remembered
	var got []string
	for key, e := range h.Tombstones(0) {
		got = append(got, string(key)+":"+e.Version().Stamp.String())
	}
	if want := []string{"aaaa:" + v(1).Stamp.String(), "cccc:" + v(5).Stamp.String()}; len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("live tombstones %v, want %v", got, want)
	}
}

func TestNextGenClearsOldMarks(t *testing.T) {
	k := newStore(time.Minute, nil)
	h := k.Lock()
	defer h.Unlock()
	key := []byte{9, 9, 9, 9}
	h.Set(h.Put(0, key), 0, key, Version{Stamp: 1, Origin: 1}, false, false, time.Now())
	h.Lookup(0, key).SetGen(2)
	for range 0x3f - 1 {
		h.NextGen()
	}
	if g := h.NextGen(); g != 1 {
		t.Fatalf("generation after wrapping = %d", g)
	}
	if g := h.NextGen(); g != 2 {
		t.Fatalf("generation = %d", g)
	}
	if h.Lookup(0, key).Gen() == 2 {
		t.Fatal("a mark from before the wrap reads as current")
	}
}

// TestCurrentRestampsSuspects checks that after a capture loss an entry
// recorded before it is read as a new write of this node's, once.
func TestCurrentRestampsSuspects(t *testing.T) {
	var restamped atomic.Uint64
	clock := hlc.New(nil, 0)
	k := New(Config{KeySizes: []int{4}, Clock: clock, Node: 7, Start: time.Now(), Restamped: &restamped})
	h := k.Lock()
	defer h.Unlock()
	now := time.Now()
	key, val := []byte("key1"), []byte("val1")
	old := Version{Stamp: clock.At(now), Origin: 3}
	h.Set(h.Put(0, key), 0, key, old, false, true, now)
	if v := h.Current(0, key, val, now); v != old {
		t.Fatalf("current %v, want %v", v, old)
	}
	h.SuspectSince(clock.At(now))
	v := h.Current(0, key, val, now)
	if v.Origin != 7 || !v.Newer(old) || h.Current(0, key, val, now) != v || restamped.Load() != 1 {
		t.Fatalf("after a loss: current %v then %v, restamped %d; want one new write of node 7", v, h.Current(0, key, val, now), restamped.Load())
	}
	if v := h.Current(0, []byte("new!"), val, now); v.Origin != 7 || v.Stamp == 0 {
		t.Fatalf("an entry unknown after a loss reads as %v, want a new write of node 7", v)
	}
}

// TestCurrentLeavesBlanks checks that after a capture loss an array's
// zeros that no stamped write is known of stay unstamped: they are what
// the array held from its creation, and stamped anew as this node's
// write they won over other nodes' earlier writes of the key (simulated
// array maps with capture overflows: 147 of 1,500 seeds). A value other
// than zeros, or zeros known from a stamped write, is still stamped anew,
// and a hash map's zeros are a value like any other.
func TestCurrentLeavesBlanks(t *testing.T) {
	clock := hlc.New(nil, 0)
	k := New(Config{KeySizes: []int{4, 4}, Arrays: []bool{true, false}, Clock: clock, Node: 7, Start: time.Now()})
	h := k.Lock()
	defer h.Unlock()
	now := time.Now()
	zeros, zeroed := make([]byte, 8), []byte("zeroed")
	old := Version{Stamp: clock.At(now), Origin: 3}
	h.Set(h.Put(0, zeroed), 0, zeroed, old, false, true, now)
	h.Set(h.Put(0, []byte("unst")), 0, []byte("unst"), Version{Origin: 3}, false, true, now) // from a snapshot, unstamped
	h.SuspectSince(clock.At(now))
	if !h.Blank(0, Version{Origin: 3}, zeros) || !h.Blank(0, Version{}, zeros) {
		t.Errorf("array zeros, unknown or unstamped, are not blank")
	}
	if h.Blank(0, Version{}, []byte("a value")) {
		t.Errorf("an array's value other than zeros is blank")
	}
	for _, key := range []string{"none", "unst"} {
		if v := h.Current(0, []byte(key), zeros, now); v != (Version{}) {
			t.Errorf("array key %q of zeros, unknown or unstamped, reads after a loss as %v; want unstamped", key, v)
		}
		if v := h.Current(0, []byte(key), []byte("a value"), now); v.Origin != 7 || v.Stamp == 0 {
			t.Errorf("array key %q holding a value reads after a loss as %v; want a new write of node 7", key, v)
		}
	}
	if h.Blank(0, old, zeros) {
		t.Error("array key of zeros known from a stamped write is blank")
	}
	if v := h.Current(0, zeroed, zeros, now); v.Origin != 7 || !v.Newer(old) {
		t.Errorf("array key of zeros known from a stamped write reads after a loss as %v; want a new write of node 7", v)
	}
	if h.Blank(1, Version{}, zeros) {
		t.Error("a hash map's key of zeros is blank")
	}
	if v := h.Current(1, []byte("hash"), zeros, now); v.Origin != 7 || v.Stamp == 0 {
		t.Errorf("a hash map's key of zeros reads after a loss as %v; want a new write of node 7", v)
	}
}

// TestOverlayCollectsNotes checks that only writes noted while an
// overlay is open are collected, per map.
func TestOverlayCollectsNotes(t *testing.T) {
	k := newStore(time.Minute, nil)
	h := k.Lock()
	defer h.Unlock()
	h.Note(0, []byte("gone"), Version{Stamp: 1}, false, []byte("x"))
	h.OpenOverlay()
	h.Note(0, []byte("kept"), Version{Stamp: 2, Origin: 1}, true, nil)
	o := h.TakeOverlay()
	h.Note(0, []byte("late"), Version{Stamp: 3}, false, nil)
	if len(o) != 1 || len(o[0]) != 1 || o[0]["kept"] != (Noted{Version{2, 1}, true, ValueHash(nil)}) || h.TakeOverlay() != nil {
		t.Fatalf("overlay %v", o)
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
		b.ReportMetric(float64(kt.bytes())/float64(kt.len()), "bytes/key")
	}
}

// BenchmarkKnowledgeFill is the cost per key of adding 1M keys to an
// empty table, growths included: what a node pays as its maps fill. It
// reports the CPU time too, steadier than the time taken on a busy
// machine.
func BenchmarkKnowledgeFill(b *testing.B) {
	var cpu time.Duration
	for b.Loop() {
		var r0, r1 unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_SELF, &r0)
		var kt keyTable
		for i := range uint64(1 << 20) {
			kt.put(i*0x9e3779b97f4a7c15 | 1)
		}
		_ = unix.Getrusage(unix.RUSAGE_SELF, &r1)
		cpu += time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
		for i := range kt.shards {
			_ = unix.MunmapPtr(unsafe.Pointer(&kt.shards[i].mem[0]), uintptr(len(kt.shards[i].mem)))
		}
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N<<20), "cpu-ns/key")
}

// BenchmarkKnowledgeBatchPut is how the sender and the applier use the
// table: a batch of 32 keys, every slot touched first, then each key
// found or added. Half the keys are new, half known, in a table of 3M to
// 4M keys, 60 to 75 % full: far larger than the cache, so what it
// measures is how well the touches hide the misses.
func BenchmarkKnowledgeBatchPut(b *testing.B) {
	const known, batch = 3 << 20, 32
	var kt keyTable
	kt.reserve(4 << 20)
	key := func(i uint64) uint64 { return i*0x9e3779b97f4a7c15 | 1 }
	for i := range uint64(known) {
		kt.put(key(i))
	}
	var hashes [batch]uint64
	added, hit := uint64(known), uint64(0)
	var cpu time.Duration
	var sum uint64
	for b.Loop() {
		var r0, r1 unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_SELF, &r0)
		for range 1000 {
			for j := range hashes {
				if j%2 == 0 {
					hashes[j] = key(added)
					added++
				} else {
					hashes[j] = key(hit * 7919 % known)
					hit++
				}
			}
			for _, h := range hashes {
				sum += kt.touch(h)
			}
			for _, h := range hashes {
				kt.put(h).SetGen(1)
			}
		}
		_ = unix.Getrusage(unix.RUSAGE_SELF, &r1)
		cpu += time.Duration(r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano())
		if added >= 4<<20-1000*batch {
			for i := uint64(known); i < added; i++ {
				kt.remove(key(i))
			}
			added = known
		}
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*1000*batch), "cpu-ns/key")
	touchSink = sum
}

// touchSink keeps the benchmark's touches from being compiled away.
var touchSink uint64

// newStore is a store of one map of 4-byte keys.
func newStore(horizon time.Duration, dropped *atomic.Uint64) *Store {
	return New(Config{KeySizes: []int{4}, Horizon: horizon, Clock: hlc.New(nil, 0), Node: 1, Start: time.Now(),
		TombstonesDropped: dropped})
}

// The look-ups by a hash computed before are the look-ups by key, and a
// touch of a key alone in the table reads its own slot.
func TestLookupByHash(t *testing.T) {
	k := newStore(time.Minute, nil)
	h := k.Lock()
	defer h.Unlock()
	if h.Touch(0, k.Hash([]byte("none"))) != 0 {
		t.Error("a touch of an empty table read something")
	}
	key := []byte{1, 2, 3, 4}
	hash := k.Hash(key)
	e := h.PutHash(0, hash)
	h.Set(e, 0, key, Version{Stamp: 5, Origin: 2}, false, true, k.started)
	if h.Lookup(0, key) != h.LookupHash(0, hash) || h.Put(0, key) != e {
		t.Error("the look-ups by hash and by key found different entries")
	}
	if h.Touch(0, hash) != e.hash() {
		t.Errorf("touch read %#x, want the key's own slot %#x", h.Touch(0, hash), e.hash())
	}
	if h.LookupHash(0, k.Hash([]byte{9})) != nil {
		t.Error("found an entry for a key never put")
	}
}
