// Package knowledge is a node's per-key version store: for every key of
// every replicated map, the version of the latest write the node knows,
// and the deletes it remembers (tombstones) for a horizon.
//
// The store owns its lock and hides its layout. Everything it holds is
// read and written through a [Held], which only [Store.Lock] hands out:
//
//	h := k.Lock()
//	defer h.Unlock()
//	v := h.Current(m, key, val, now)
//
// Maps are named by their index in the replicated table (0..n-1), fixed
// when the store is made.
package knowledge

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
)

// Version is what decides between two writes of one key: the later stamp
// wins, and of equal stamps the higher origin node id. The zero Version
// is an unstamped entry, which every stamped write beats.
type Version struct {
	Stamp  hlc.Stamp
	Origin uint32
}

// Newer reports whether v wins over w.
func (v Version) Newer(w Version) bool {
	return v.Stamp > w.Stamp || v.Stamp == w.Stamp && v.Origin > w.Origin
}

// Knowledge defaults and limits.
const (
	// DefaultTombstoneHorizon is how long a delete is remembered, so that a
	// peer that still holds the key learns of it in a resync.
	DefaultTombstoneHorizon = 10 * time.Minute
	// maxTombstones bounds the deletes remembered per map; past it the
	// oldest are forgotten before the horizon, and counted.
	maxTombstones = 1 << 20
)

// Config describes a [Store].
type Config struct {
	// KeySizes is the key size of each map, by map index.
	KeySizes []int
	// Horizon is how long deletes are remembered (default
	// [DefaultTombstoneHorizon]).
	Horizon time.Duration
	// Clock and Node stamp the entries [Held.Current] stamps anew as this
	// node's writes.
	Clock *hlc.Clock
	Node  uint32
	// Start is the origin of the applied-at clock (see [Held.AppliedSince]):
	// the time the store is made.
	Start time.Time
	// Arrays marks, by map index, the maps that are arrays: every key
	// exists from the map's creation and holds zeros until written (see
	// [Held.Blank]).
	Arrays []bool
	// Restamped counts the entries [Held.Current] stamped anew;
	// TombstonesDropped the deletes forgotten before the horizon because
	// too many were remembered. Either may be nil.
	Restamped, TombstonesDropped *atomic.Uint64
}

// Store is the knowledge of one node. The sender, the applier, the
// snapshot server, the resync client and the state file share it, each
// holding its lock only through a [Held].
type Store struct {
	mu      sync.Mutex // held by whoever holds a Held; guards what follows
	seed    maphash.Seed
	maps    []keyTable     // by map index
	tombs   []tombstoneLog // by map index
	horizon time.Duration
	gen     uint8     // resync generation, 1..63
	started time.Time // the monotonic clock's origin for applied-at times
	// overlay, while open, collects the writes noted (see OpenOverlay).
	overlay Overlay
	// suspectBefore is the clock when the capture last lost changes: a
	// version recorded before it may sit under a lost write (see Current).
	suspectBefore hlc.Stamp
	// forgotten is the newest stamp of a delete Prune forgot: a delta
	// resync reaching back to it or before would miss that delete.
	forgotten hlc.Stamp
	clock     *hlc.Clock
	node      uint32
	arrays    []bool // by map index

	restamped, tombstonesDropped *atomic.Uint64
}

// New makes an empty store.
func New(cfg Config) *Store {
	k := &Store{seed: maphash.MakeSeed(), maps: make([]keyTable, len(cfg.KeySizes)),
		tombs: make([]tombstoneLog, len(cfg.KeySizes)), horizon: cfg.Horizon, gen: 1, started: cfg.Start,
		clock: cfg.Clock, node: cfg.Node, arrays: cfg.Arrays, restamped: cfg.Restamped, tombstonesDropped: cfg.TombstonesDropped}
	if k.horizon == 0 {
		k.horizon = DefaultTombstoneHorizon
	}
	if k.restamped == nil {
		k.restamped = new(atomic.Uint64)
	}
	if k.tombstonesDropped == nil {
		k.tombstonesDropped = new(atomic.Uint64)
	}
	for i, n := range cfg.KeySizes {
		k.tombs[i].keySize = n
	}
	return k
}

// Held is the store while its lock is held: every question and every
// change goes through it. Obtain it with [Store.Lock]; it is not to be
// used after [Held.Unlock].
type Held struct{ k *Store }

// Lock takes the store's lock and returns the handle to it.
func (k *Store) Lock() Held {
	k.mu.Lock()
	return Held{k}
}

// Unlock releases the lock; h is then no longer to be used.
func (h Held) Unlock() { h.k.mu.Unlock() }

// Hash is the key's hash under this run's seed, never 0: what the store
// keeps of a key. It needs no lock.
func (k *Store) Hash(key []byte) uint64 { return maphash.Bytes(k.seed, key) | 1 }

// Horizon is how long deletes are remembered. It needs no lock.
func (k *Store) Horizon() time.Duration { return k.horizon }

// Lookup returns the entry of key in map index m, or nil if none is
// known.
func (h Held) Lookup(m int, key []byte) *Entry { return h.LookupHash(m, h.k.Hash(key)) }

// Put returns the entry of key in map index m, adding an empty
// (unstamped, never applied) one if none is known.
func (h Held) Put(m int, key []byte) *Entry { return h.PutHash(m, h.k.Hash(key)) }

// LookupHash is [Held.Lookup] of the key whose [Store.Hash] is hash.
func (h Held) LookupHash(m int, hash uint64) *Entry { return h.k.maps[m].find(hash) }

// PutHash is [Held.Put] of the key whose [Store.Hash] is hash.
func (h Held) PutHash(m int, hash uint64) *Entry { return h.k.maps[m].put(hash) }

// Touch reads the slot where the look-up of hash in map index m starts
// and returns a word of it, for the caller to keep: touching every key of
// a batch before looking any up lets the processor wait for their cache
// misses at once rather than one after the other, since no touch depends
// on another (see [Held.LookupHash]).
func (h Held) Touch(m int, hash uint64) uint64 { return h.k.maps[m].touch(hash) }

// tick is the applied-at clock at t: 256 ms ticks since the store was
// made, wrapping at 256. up rounds up, for the time of an apply, so that
// a tick never says an apply ended before it did.
func (k *Store) tick(t time.Time, up bool) uint8 {
	ms := t.Sub(k.started).Milliseconds() // negative before the start: the ticks wrap anyway
	if up {
		ms += tickMs - 1
	}
	q := ms / tickMs
	if ms < 0 && ms%tickMs != 0 {
		q-- // down, not towards zero
	}
	return uint8(q)
}

// MarkApplied records that e's version was set, by at, other than by the
// capture (see [Held.Set]).
func (h Held) MarkApplied(e *Entry, at time.Time) {
	e.b[18] |= flagApplied
	e.b[19] = h.k.tick(at, true)
}

// Set records v as the latest write of key in map index m, in its entry
// e (from [Held.Put] or [Held.Lookup] of the same key): a delete if
// deleted. applied says the version was not set by the capture but by an
// apply of a peer's write, or for a value read from the map (a restamp, a
// restart, a resync's sending back), at now: then a local change the
// capture delivers later may have been made before, and the sender checks
// it against the map (see [Held.AppliedSince]).
func (h Held) Set(e *Entry, m int, key []byte, v Version, deleted, applied bool, now time.Time) {
	e.setVersion(v)
	e.b[18] &= flagGenMask
	if deleted {
		e.b[18] |= flagTombstone
	}
	if applied {
		h.MarkApplied(e, now)
	}
	if deleted && v.Stamp != 0 {
		h.k.tombs[m].add(key, v)
	}
}

// AppliedSince reports whether e was last set other than by the capture
// at or after t (now being the present): whether a local write captured
// after t may be older than it. Applies are kept in 256 ms ticks that wrap
// after about a minute, rounded up: an apply within a tick of t counts as
// after it, which costs a map read, never a wrong answer; a t more than
// 30 s back makes every such version count as recent.
func (h Held) AppliedSince(e *Entry, t, now time.Time) bool {
	if !e.applied() {
		return false
	}
	if now.Sub(t) >= 30*time.Second {
		return true
	}
	d := h.k.tick(t, false) - e.b[19] // ticks from the apply to t, wrapping
	return d >= 128
}

// Prune forgets the deletes older than the horizon, and the oldest past
// the limit per map (counted in TombstonesDropped), and returns how many
// it forgot.
func (h Held) Prune(now time.Time) int {
	k := h.k
	oldest := hlc.Make(now.Add(-k.horizon).UnixMilli(), 0)
	n := 0
	for m := range k.tombs {
		l := &k.tombs[m]
		for l.len() > 0 {
			key, v := l.at(0)
			if v.Stamp >= oldest && l.len() <= maxTombstones {
				break
			}
			if l.len() > maxTombstones {
				k.tombstonesDropped.Add(1)
			}
			hash := k.Hash(key)
			if e := k.maps[m].find(hash); e != nil && e.Deleted() && e.Version() == v {
				k.maps[m].remove(hash)
			}
			k.forgotten = max(k.forgotten, v.Stamp)
			l.head++
			n++
		}
	}
	return n
}

// Forgotten returns the newest stamp of a delete [Held.Prune] forgot, 0 if
// none: the deletes stamped after it are all remembered, still the latest
// write of their keys or superseded by a newer one.
func (h Held) Forgotten() hlc.Stamp { return h.k.forgotten }

// NextGen starts a resync generation: the keys a snapshot carries are
// marked with it ([Entry.SetGen]), to find those it did not carry.
func (h Held) NextGen() uint8 {
	k := h.k
	if k.gen++; k.gen > flagGenMask {
		// A mark 63 resyncs old would read as current: clear them all.
		k.gen = 1
		for m := range k.maps {
			k.maps[m].each(func(e *Entry) { e.SetGen(0) })
		}
	}
	return k.gen
}

// Reserve makes room for n keys in map index m, so that adding them
// grows no table.
func (h Held) Reserve(m, n int) { h.k.maps[m].reserve(n) }

// Entries returns how many keys the store holds, tombstones included.
func (h Held) Entries() int {
	n := 0
	for i := range h.k.maps {
		n += h.k.maps[i].len()
	}
	return n
}

// Bytes returns the memory the entries of map index m take.
func (h Held) Bytes(m int) int { return h.k.maps[m].bytes() }

// SuspectSince records that the capture lost changes, by the clock at s:
// every version recorded before s may sit under a lost write, and
// [Held.Current] stamps such entries anew.
func (h Held) SuspectSince(s hlc.Stamp) { h.k.suspectBefore = s }

// SuspectBefore is the clock when the capture last lost changes (see
// [Held.SuspectSince]); 0 if it never did.
func (h Held) SuspectBefore() hlc.Stamp { return h.k.suspectBefore }

// Current returns the version of an entry read from the map, key in map
// index m holding val, to send with its value: the version known,
// unstamped if none. After a capture overflow, an entry whose version is
// older than the overflow, or that the knowledge has as deleted or not at
// all, may hold a write that was lost: it is stamped anew, as a write of
// this node's read from the map, so that the value read wins where it has
// to; but not a blank one (see [Held.Blank]). Call it with the value read
// under the same lock.
func (h Held) Current(m int, key, val []byte, now time.Time) Version {
	k := h.k
	e := h.Lookup(m, key)
	known := Version{}
	if e != nil {
		known = e.Version()
	}
	if k.suspectBefore != 0 && (e == nil || e.Deleted() || known.Stamp < k.suspectBefore) && !h.Blank(m, known, val) {
		v := Version{Stamp: k.clock.At(now), Origin: k.node}
		if e == nil {
			e = h.Put(m, key)
		}
		h.Set(e, m, key, v, false, true, now) // read from the map: see Set
		k.restamped.Add(1)
		return v
	}
	if e == nil || e.Deleted() || e.Version().Stamp == 0 {
		return Version{}
	}
	return e.Version()
}

// Blank reports whether val, the value of an entry of map index m known
// at v (the zero Version if not known), holds nothing: zeros in an
// array, unstamped. The array held them from its creation: they are its
// counterpart of a key a hash map does not hold, never a write. Stamped
// as one, or taken over another unstamped value, the zeros nobody wrote
// would win over the writes of the key that nodes made before.
func (h Held) Blank(m int, v Version, val []byte) bool {
	if m >= len(h.k.arrays) || !h.k.arrays[m] || v.Stamp != 0 {
		return false
	}
	for _, b := range val {
		if b != 0 {
			return false
		}
	}
	return true
}

// Dumper reads a map a batch at a time: [replication.Target] is one.
type Dumper interface {
	// Dump calls fn with every entry of the map, a batch at a time,
	// packed into prefixes of keys and values; it stops at fn's first
	// error.
	Dump(keys, values []byte, fn func(keys, values []byte) error) error
}

// readBatch is how many entries one read of a map takes (one
// BPF_MAP_LOOKUP_BATCH).
const readBatch = 1024

// ReadMap reads every entry of map d, with keys and values of the sizes
// given, a batch at a time, and calls locked with each batch, packed keys
// and values, with the lock held over the read and the call: no version
// locked finds for an entry is newer than the value it is given. Then,
// unless nil, it calls unlocked with the same batch and the lock
// released, for work that may wait. Call it without the lock.
func (k *Store) ReadMap(d Dumper, keySize, valueSize int, locked func(h Held, ks, vs []byte), unlocked func(ks, vs []byte) error) error {
	keys, vals := make([]byte, readBatch*keySize), make([]byte, readBatch*valueSize)
	h := k.Lock()
	held := true
	defer func() {
		if held {
			h.Unlock()
		}
	}()
	return d.Dump(keys, vals, func(ks, vs []byte) error {
		locked(h, ks, vs)
		h.Unlock()
		held = false
		if unlocked != nil {
			if err := unlocked(ks, vs); err != nil {
				return err
			}
		}
		h = k.Lock()
		held = true
		return nil
	})
}
