package replication

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"math/bits"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

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

// slot is one key's knowledge, packed into 20 bytes (slotSize), little
// endian:
//
//	0..5    the key's hash, low 48 bits (0: an empty slot); with the shard,
//	        which the hash's top 3 bits pick, 51 bits of it are kept
//	6..13   the version's stamp
//	14..17  the version's origin
//	18      flags: tombstone, applied, and the resync generation (6 bits)
//	19      when the write was applied, in 256 ms ticks, wrapping
//
// The key itself is not kept. Two keys of 51 equal hash bits (per-run
// seed; about 2·10⁻⁴ for some pair of 1M keys, 5·10⁻¹⁰ for a given new key
// against 1M) share one version.
type slot [slotSize]byte

const (
	slotSize = 20

	flagTombstone = 1 << 7 // the latest write known deleted the key
	flagApplied   = 1 << 6 // that version was set by an apply or a read of the map, not by the capture
	flagGenMask   = 0x3f   // the resync generation that last saw the key

	hashMask = 1<<48 - 1
	tickMs   = 256 // the applied-at clock's tick
)

func (s *slot) hash() uint64 {
	return uint64(binary.LittleEndian.Uint32(s[0:])) | uint64(binary.LittleEndian.Uint16(s[4:]))<<32
}

func (s *slot) version() version {
	return version{hlc.Stamp(binary.LittleEndian.Uint64(s[6:])), binary.LittleEndian.Uint32(s[14:])}
}

func (s *slot) setVersion(v version) {
	binary.LittleEndian.PutUint64(s[6:], uint64(v.stamp))
	binary.LittleEndian.PutUint32(s[14:], v.origin)
}

func (s *slot) tombstone() bool { return s[18]&flagTombstone != 0 }
func (s *slot) applied() bool   { return s[18]&flagApplied != 0 }
func (s *slot) gen() uint8      { return s[18] & flagGenMask }
func (s *slot) setGen(g uint8)  { s[18] = s[18]&^flagGenMask | g&flagGenMask }

// newSlot is an empty version for hash h (its low 48 bits, never 0).
func newSlot(h uint64) slot {
	var s slot
	binary.LittleEndian.PutUint32(s[0:], uint32(h))
	binary.LittleEndian.PutUint16(s[4:], uint16(h>>32))
	return s
}

// slotHash is what a slot keeps of hash h: its low 48 bits, never 0.
func slotHash(h uint64) uint64 { return h&hashMask | 1 }

// keyTable is the knowledge of one map: 8 open-addressing tables of
// slots, by the top bits of the key's hash, each at most maxLoad full and
// growing by a quarter on its own. The slots live outside the Go heap (in
// anonymous mappings: they hold no pointers), so the collector neither
// scans them nor lets the heap grow to twice their size, and a growth
// holds one shard twice, not the whole table.
type keyTable struct {
	shards [numShards]shard
	n      int
}

const (
	numShards  = 8
	shardShift = 61 // the hash's top 3 bits pick the shard
	maxLoad    = 0.8
	minSlots   = 4096 / slotSize // one page
	hugePage   = 2 << 20
)

// shard is one open-addressing table of slots; the hashes it compares are
// slotHash's.
type shard struct {
	slots []slot
	mem   []byte // the mapping behind slots
	n     int
}

// find returns the slot of hash h, or nil.
func (t *keyTable) find(h uint64) *slot {
	sh := &t.shards[h>>shardShift]
	if i := sh.index(slotHash(h)); i >= 0 {
		return &sh.slots[i]
	}
	return nil
}

// put returns the slot of hash h, adding an empty version for it if it
// had none; the pointer is valid until the next put or remove.
func (t *keyTable) put(h uint64) *slot {
	sh := &t.shards[h>>shardShift]
	s, added := sh.put(slotHash(h))
	if added {
		t.n++
	}
	return s
}

// remove forgets hash h.
func (t *keyTable) remove(h uint64) {
	if t.shards[h>>shardShift].remove(slotHash(h)) {
		t.n--
	}
}

// each calls fn with every slot in use.
func (t *keyTable) each(fn func(*slot)) {
	for i := range t.shards {
		for j := range t.shards[i].slots {
			if t.shards[i].slots[j].hash() != 0 {
				fn(&t.shards[i].slots[j])
			}
		}
	}
}

// reserve makes room for n keys in all, spread over the shards, so that
// adding them grows no shard.
func (t *keyTable) reserve(n int) {
	per := int(float64(n/numShards+1)/maxLoad) + 1
	for i := range t.shards {
		if sh := &t.shards[i]; len(sh.slots) < per {
			sh.resize(per)
		}
	}
}

// home is where the probe run of h, a slotHash, starts.
func (sh *shard) home(h uint64) int {
	hi, _ := bits.Mul64(h<<16, uint64(len(sh.slots)))
	return int(hi)
}

func (sh *shard) next(i int) int {
	if i++; i == len(sh.slots) {
		return 0
	}
	return i
}

// index returns the position of hash h, or -1.
func (sh *shard) index(h uint64) int {
	if len(sh.slots) == 0 {
		return -1
	}
	for i := sh.home(h); ; i = sh.next(i) {
		switch sh.slots[i].hash() {
		case h:
			return i
		case 0:
			return -1
		}
	}
}

func (sh *shard) put(h uint64) (*slot, bool) {
	if float64(sh.n+1) > maxLoad*float64(len(sh.slots)) {
		sh.grow()
	}
	i := sh.home(h)
	for ; sh.slots[i].hash() != 0; i = sh.next(i) {
		if sh.slots[i].hash() == h {
			return &sh.slots[i], false
		}
	}
	sh.n++
	sh.slots[i] = newSlot(h)
	return &sh.slots[i], true
}

func (sh *shard) grow() { sh.resize(max(minSlots, len(sh.slots)+len(sh.slots)/4)) }

// resize moves the shard's slots into a table of n.
func (sh *shard) resize(n int) {
	old, oldMem := sh.slots, sh.mem
	mem, err := unix.Mmap(-1, 0, n*slotSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		panic(fmt.Sprintf("replication: cannot map %d bytes for the knowledge of keys: %v", n*slotSize, err))
	}
	if len(mem) >= hugePage {
		// The table is read at random: with 4 KiB pages nearly every
		// look-up of a large one also misses the TLB.
		_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
	}
	sh.mem, sh.slots = mem, unsafe.Slice((*slot)(unsafe.Pointer(&mem[0])), n)
	for i := range old {
		if old[i].hash() == 0 {
			continue
		}
		j := sh.home(old[i].hash())
		for sh.slots[j].hash() != 0 {
			j = sh.next(j)
		}
		sh.slots[j] = old[i]
	}
	if oldMem != nil {
		_ = unix.Munmap(oldMem)
	}
}

// remove forgets hash h, shifting later slots of its probe run back so
// that no lookup stops early, and reports whether it held h.
func (sh *shard) remove(h uint64) bool {
	i := sh.index(h)
	if i < 0 {
		return false
	}
	sh.n--
	for j := sh.next(i); sh.slots[j].hash() != 0; j = sh.next(j) {
		home := sh.home(sh.slots[j].hash())
		// Move j back to i unless its home lies cyclically in (i, j].
		if i <= j && (home <= i || home > j) || i > j && home <= i && home > j {
			sh.slots[i] = sh.slots[j]
			i = j
		}
	}
	sh.slots[i] = slot{}
	return true
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
	// versions recorded meanwhile (see Node.startState).
	overlay overlay
	// suspectBefore is the clock when the capture last lost changes: a
	// version recorded before it may sit under a lost write (see current).
	suspectBefore hlc.Stamp
	clock         *hlc.Clock
	node          uint32
}

func newKnowledge(t *Table, horizon time.Duration, clock *hlc.Clock, node uint32, stats *Stats) *knowledge {
	k := &knowledge{seed: maphash.MakeSeed(), maps: make([]keyTable, len(t.maps)),
		tombs: make([]tombstoneLog, len(t.maps)), horizon: horizon, gen: 1, started: time.Now(), stats: stats,
		clock: clock, node: node}
	for i := range t.maps {
		k.tombs[i].keySize = t.maps[i].keySize
	}
	return k
}

// hash is the key's hash, never 0.
func (k *knowledge) hash(key []byte) uint64 { return maphash.Bytes(k.seed, key) | 1 }

// lookup returns the slot of key in map index m, or nil.
func (k *knowledge) lookup(m int, key []byte) *slot { return k.maps[m].find(k.hash(key)) }

// tick is the applied-at clock at t: 256 ms ticks since the knowledge was
// made, wrapping at 256. up rounds up, for the time of an apply, so that
// a tick never says an apply ended before it did.
func (k *knowledge) tick(t time.Time, up bool) uint8 {
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

// markApplied records that s's version was set, by at, other than by the
// capture (see knowledge.set).
func (k *knowledge) markApplied(s *slot, at time.Time) {
	s[18] |= flagApplied
	s[19] = k.tick(at, true)
}

// set records v as the latest write of key: a delete if tomb. applied says
// the version was not set by the capture but by an apply of a peer's
// write, or for a value read from the map (a restamp, a restart, a
// resync's sending back), at now: then a local change the capture
// delivers later may have been made before, and the sender checks it
// against the map (see sender.stamp).
func (k *knowledge) set(m int, key []byte, v version, tomb, applied bool, now time.Time) *slot {
	s := k.maps[m].put(k.hash(key))
	k.setSlot(s, m, key, v, tomb, applied, now)
	return s
}

// setSlot is set for the slot of key, found already.
func (k *knowledge) setSlot(s *slot, m int, key []byte, v version, tomb, applied bool, now time.Time) {
	s.setVersion(v)
	s[18] &= flagGenMask
	if tomb {
		s[18] |= flagTombstone
	}
	if applied {
		k.markApplied(s, now)
	}
	if tomb && v.stamp != 0 {
		k.tombs[m].add(key, v)
	}
}

// appliedSince reports whether s was last set other than by the capture
// at or after t (now being the present): whether a local write captured
// after t may be older than it. Applies are kept in 256 ms ticks that wrap
// after about a minute, rounded up: an apply within a tick of t counts as
// after it, which costs a map read, never a wrong answer; a t more than
// 30 s back makes every such version count as recent.
func (k *knowledge) appliedSince(s *slot, t, now time.Time) bool {
	if !s.applied() {
		return false
	}
	if now.Sub(t) >= 30*time.Second {
		return true
	}
	d := k.tick(t, false) - s[19] // ticks from the apply to t, wrapping
	return d >= 128
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
			k.maps[m].each(func(sl *slot) { sl.setGen(0) })
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

// current returns the version of an entry read from the map, key in map
// index m, to send with its value: the version known, unstamped if none.
// After a capture overflow, an entry whose version is older than the
// overflow, or that the knowledge has as deleted or not at all, may hold
// a write that was lost: it is stamped anew, as a write of this node's
// read from the map, so that the value read wins where it has to. Called
// with the lock held, with the value read under it.
func (k *knowledge) current(m int, key []byte, now time.Time) version {
	sl := k.lookup(m, key)
	if k.suspectBefore != 0 && (sl == nil || sl.tombstone() || sl.version().stamp < k.suspectBefore) {
		v := version{stamp: k.clock.At(now), origin: k.node}
		if sl == nil {
			sl = k.maps[m].put(k.hash(key))
		}
		k.setSlot(sl, m, key, v, false, true, now) // read from the map: see knowledge.set
		k.stats.Restamped.Add(1)
		return v
	}
	if sl == nil || sl.tombstone() || sl.version().stamp == 0 {
		return version{}
	}
	return sl.version()
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
