package replication

import (
	"hash/maphash"
	"math/bits"
	"sync"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
)

// version is what decides between two writes of one key: the later stamp
// wins, and of equal stamps the higher origin node id. The zero version
// is an unstamped entry, which every stamped write beats.
type version struct {
	stamp  hlc.Stamp
	origin uint32
}

// newer reports whether v wins over w.
func (v version) newer(w version) bool {
	return v.stamp > w.stamp || v.stamp == w.stamp && v.origin > w.origin
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

// meta bits of a knowledge slot.
const (
	metaTombstone = 1 << 31 // the latest write known deleted the key
	metaRemote    = 1 << 30 // that write came from a peer and was applied here
	metaGenShift  = 24      // 6 bits: the resync generation that last saw the key
	metaGenMask   = 0x3f << metaGenShift
	metaTimeMask  = 1<<24 - 1 // monotonic ms after the remote apply, wrapping
)

// slot is one key's knowledge: 24 bytes. The key itself is not kept, only
// a 64-bit hash of it under a per-run random seed (1M keys collide with a
// probability of about 3e-8; a collision makes two keys share a version).
type slot struct {
	hash   uint64 // 0: empty
	stamp  hlc.Stamp
	origin uint32
	meta   uint32
}

func (s *slot) version() version { return version{s.stamp, s.origin} }
func (s *slot) tombstone() bool  { return s.meta&metaTombstone != 0 }
func (s *slot) gen() uint8       { return uint8(s.meta & metaGenMask >> metaGenShift) }
func (s *slot) setGen(g uint8) {
	s.meta = s.meta&^metaGenMask | uint32(g&0x3f)<<metaGenShift
}

// keyTable is the knowledge of one map: an open-addressing table of slots,
// at most maxLoad full. It grows by half, not doubling, to stay near the
// 24 bytes per key it costs.
type keyTable struct {
	slots []slot
	n     int
}

const maxLoad = 0.8

func (t *keyTable) home(h uint64) int {
	hi, _ := bits.Mul64(h, uint64(len(t.slots)))
	return int(hi)
}

// find returns the slot of hash h, or nil.
func (t *keyTable) find(h uint64) *slot {
	if i := t.index(h); i >= 0 {
		return &t.slots[i]
	}
	return nil
}

// index returns the position of hash h, or -1.
func (t *keyTable) index(h uint64) int {
	if len(t.slots) == 0 {
		return -1
	}
	for i := t.home(h); ; i = t.next(i) {
		switch t.slots[i].hash {
		case h:
			return i
		case 0:
			return -1
		}
	}
}

func (t *keyTable) next(i int) int {
	if i++; i == len(t.slots) {
		return 0
	}
	return i
}

// put returns the slot of hash h, adding an empty version for it if it
// had none; the pointer is valid until the next put or remove.
func (t *keyTable) put(h uint64) *slot {
	if float64(t.n+1) > maxLoad*float64(len(t.slots)) {
		t.grow()
	}
	i := t.home(h)
	for ; t.slots[i].hash != 0; i = t.next(i) {
		if t.slots[i].hash == h {
			return &t.slots[i]
		}
	}
	t.n++
	t.slots[i] = slot{hash: h}
	return &t.slots[i]
}

func (t *keyTable) grow() {
	old := t.slots
	t.slots = make([]slot, max(64, len(old)+len(old)/2))
	for i := range old {
		if old[i].hash == 0 {
			continue
		}
		j := t.home(old[i].hash)
		for t.slots[j].hash != 0 {
			j = t.next(j)
		}
		t.slots[j] = old[i]
	}
}

// remove forgets hash h, shifting later slots of its probe run back so
// that no lookup stops early.
func (t *keyTable) remove(h uint64) {
	i := t.index(h)
	if i < 0 {
		return
	}
	t.n--
	for j := t.next(i); t.slots[j].hash != 0; j = t.next(j) {
		home := t.home(t.slots[j].hash)
		// Move j back to i unless its home lies cyclically in (i, j].
		if i <= j && (home <= i || home > j) || i > j && home <= i && home > j {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = slot{}
}

// tombstoneLog is the deletes of one map in the order they were learned,
// with their keys: what a snapshot sends so that a peer still holding a
// deleted key learns of the delete.
type tombstoneLog struct {
	keySize int
	head    int // first live entry
	stamps  []version
	keys    []byte
}

func (l *tombstoneLog) len() int { return len(l.stamps) - l.head }

func (l *tombstoneLog) add(key []byte, v version) {
	if l.head > 0 && l.head >= len(l.stamps)/2 {
		n := copy(l.stamps, l.stamps[l.head:])
		l.stamps = l.stamps[:n]
		m := copy(l.keys, l.keys[l.head*l.keySize:])
		l.keys = l.keys[:m]
		l.head = 0
	}
	l.stamps = append(l.stamps, v)
	l.keys = append(l.keys, key...)
}

// at returns entry i after head.
func (l *tombstoneLog) at(i int) ([]byte, version) {
	j := l.head + i
	return l.keys[j*l.keySize : (j+1)*l.keySize], l.stamps[j]
}

// knowledge is, for every key of every replicated map, the version of the
// latest write this node knows, and the deletes it remembers. The sender,
// the applier and the snapshot server share it under mu.
type knowledge struct {
	mu      sync.Mutex // held by whoever reads or writes what follows
	seed    maphash.Seed
	maps    []keyTable     // by Table.maps index
	tombs   []tombstoneLog // by Table.maps index
	horizon time.Duration
	gen     uint8     // resync generation, 1..63
	started time.Time // the monotonic clock's origin for applied-at times
	stats   *Stats
	// overlay, while a stopping node saves its state, collects the
	// versions recorded meanwhile (see Node.saveState).
	overlay overlay
}

func newKnowledge(t *Table, horizon time.Duration, stats *Stats) *knowledge {
	k := &knowledge{seed: maphash.MakeSeed(), maps: make([]keyTable, len(t.maps)),
		tombs: make([]tombstoneLog, len(t.maps)), horizon: horizon, gen: 1, started: time.Now(), stats: stats}
	for i := range t.maps {
		k.tombs[i].keySize = t.maps[i].keySize
	}
	return k
}

// hash is the key's hash, never 0.
func (k *knowledge) hash(key []byte) uint64 { return maphash.Bytes(k.seed, key) | 1 }

// lookup returns the slot of key in map index m, or nil.
func (k *knowledge) lookup(m int, key []byte) *slot { return k.maps[m].find(k.hash(key)) }

// millis is the wrapping monotonic milliseconds of now, for applied-at.
func (k *knowledge) millis(now time.Time) uint32 {
	return uint32(max(now.Sub(k.started).Milliseconds(), 0)) & metaTimeMask
}

// set records v as the latest write of key: a delete if tomb. remote marks
// a peer's write applied at now.
func (k *knowledge) set(m int, key []byte, v version, tomb, remote bool, now time.Time) {
	s := k.maps[m].put(k.hash(key))
	s.stamp, s.origin = v.stamp, v.origin
	meta := s.meta & metaGenMask
	if tomb {
		meta |= metaTombstone
	}
	if remote {
		meta |= metaRemote | k.millis(now)
	}
	s.meta = meta
	if tomb && v.stamp != 0 {
		k.tombs[m].add(key, v)
	}
}

// appliedSince reports whether s was last set by a peer's write applied at
// or after t (now being the present): whether a local write captured
// after t may be older than it. Times are kept in 24 wrapping bits, so an
// apply more than 2.3 hours before t can look recent: that costs a map
// read, never a wrong answer; a t that far back makes every remote apply
// count as recent.
func (k *knowledge) appliedSince(s *slot, t, now time.Time) bool {
	if s.meta&metaRemote == 0 {
		return false
	}
	if now.Sub(t) >= time.Hour {
		return true
	}
	d := (k.millis(t) - s.meta&metaTimeMask) & metaTimeMask
	return d == 0 || d >= 1<<23 // applied at or after t
}

// prune forgets the deletes older than the horizon, and the oldest past
// maxTombstones, and returns how many it forgot.
func (k *knowledge) prune(now time.Time) int {
	oldest := hlc.Make(now.Add(-k.horizon).UnixMilli(), 0)
	n := 0
	for m := range k.tombs {
		l := &k.tombs[m]
		for l.len() > 0 {
			key, v := l.at(0)
			if v.stamp >= oldest && l.len() <= maxTombstones {
				break
			}
			if l.len() > maxTombstones {
				k.stats.TombstonesDropped.Add(1)
			}
			h := k.hash(key)
			if s := k.maps[m].find(h); s != nil && s.tombstone() && s.version() == v {
				k.maps[m].remove(h)
			}
			l.head++
			n++
		}
	}
	return n
}

// nextGen starts a resync generation: the keys a snapshot carries are
// marked with it, to find those it did not carry.
func (k *knowledge) nextGen() uint8 {
	if k.gen++; k.gen > 0x3f {
		// A mark 63 resyncs old would read as current: clear them all.
		k.gen = 1
		for m := range k.maps {
			for i := range k.maps[m].slots {
				k.maps[m].slots[i].setGen(0)
			}
		}
	}
	return k.gen
}

// entries returns how many keys the knowledge holds, tombstones included.
func (k *knowledge) entries() int {
	n := 0
	for i := range k.maps {
		n += k.maps[i].n
	}
	return n
}

// eachBatch reads every entry of m, a batch at a time, and calls locked
// with each batch, packed keys and values, with the lock held over the
// read and the call: no version locked finds for an entry is newer than
// the value it is given. Then, unless nil, it calls unlocked with the same
// batch and the lock released, for work that may wait. Call it without
// the lock.
func (k *knowledge) eachBatch(m *localMap, locked func(ks, vs []byte), unlocked func(ks, vs []byte) error) error {
	keys, vals := make([]byte, dumpBatch*m.keySize), make([]byte, dumpBatch*m.valueSize)
	k.mu.Lock()
	held := true
	defer func() {
		if held {
			k.mu.Unlock()
		}
	}()
	return m.Target.Dump(keys, vals, func(ks, vs []byte) error {
		locked(ks, vs)
		k.mu.Unlock()
		held = false
		if unlocked != nil {
			if err := unlocked(ks, vs); err != nil {
				return err
			}
		}
		k.mu.Lock()
		held = true
		return nil
	})
}
