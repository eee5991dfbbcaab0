package knowledge

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/probe"
)

// Entry is what the knowledge holds of one key, packed into 20 bytes
// (entrySize), little endian:
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
//
// An *Entry is handed out by a [Held] and is valid only while that lock
// is held, and only until the next [Held.Put], [Held.Current] or
// [Held.Prune], which may move the slots.
type Entry struct{ b [entrySize]byte }

const (
	entrySize = 20

	flagTombstone = 1 << 7 // the latest write known deleted the key
	flagApplied   = 1 << 6 // that version was set by an apply or a read of the map, not by the capture
	flagGenMask   = 0x3f   // the resync generation that last saw the key

	hashMask = 1<<48 - 1
	tickMs   = 256 // the applied-at clock's tick
)

func (e *Entry) hash() uint64 {
	return uint64(binary.LittleEndian.Uint32(e.b[0:])) | uint64(binary.LittleEndian.Uint16(e.b[4:]))<<32
}

// Version is the version of the latest write known of the key; the zero
// Version for an unstamped entry.
func (e *Entry) Version() Version {
	return Version{hlc.Stamp(binary.LittleEndian.Uint64(e.b[6:])), binary.LittleEndian.Uint32(e.b[14:])}
}

func (e *Entry) setVersion(v Version) {
	binary.LittleEndian.PutUint64(e.b[6:], uint64(v.Stamp))
	binary.LittleEndian.PutUint32(e.b[14:], v.Origin)
}

// Deleted reports whether the latest write known deleted the key: the
// entry is a tombstone.
func (e *Entry) Deleted() bool { return e.b[18]&flagTombstone != 0 }

func (e *Entry) applied() bool { return e.b[18]&flagApplied != 0 }

// Gen is the resync generation that last marked the key (see
// [Held.NextGen]); 0 if none did.
func (e *Entry) Gen() uint8 { return e.b[18] & flagGenMask }

// SetGen marks the key as seen by resync generation g.
func (e *Entry) SetGen(g uint8) { e.b[18] = e.b[18]&^flagGenMask | g&flagGenMask }

// newEntry is an empty version for hash h (its low 48 bits, never 0).
func newEntry(h uint64) Entry {
	var e Entry
	binary.LittleEndian.PutUint32(e.b[0:], uint32(h))
	binary.LittleEndian.PutUint16(e.b[4:], uint16(h>>32))
	return e
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
}

const (
	numShards  = 8
	shardShift = 61 // the hash's top 3 bits pick the shard
	maxLoad    = 0.8
	minSlots   = 4096 / entrySize // one page
	hugePage   = 2 << 20
)

// shard is one open-addressing table of slots; the hashes it compares are
// slotHash's.
type shard struct {
	slots []Entry
	mem   []byte // the mapping behind slots
	n     int
}

// find returns the slot of hash h, or nil.
func (t *keyTable) find(h uint64) *Entry { return t.shards[h>>shardShift].find(slotHash(h)) }

// touch reads the home slot of hash h and returns its stored hash.
func (t *keyTable) touch(h uint64) uint64 {
	sh := &t.shards[h>>shardShift]
	if len(sh.slots) == 0 {
		return 0
	}
	return sh.slots[sh.home(slotHash(h))].hash()
}

// put returns the slot of hash h, adding an empty version for it if it
// had none; the pointer is valid until the next put or remove.
func (t *keyTable) put(h uint64) *Entry { return t.shards[h>>shardShift].put(slotHash(h)) }

// remove forgets hash h.
func (t *keyTable) remove(h uint64) { t.shards[h>>shardShift].remove(slotHash(h)) }

// len returns how many keys t holds.
func (t *keyTable) len() int {
	n := 0
	for i := range t.shards {
		n += t.shards[i].n
	}
	return n
}

// each calls fn with every slot in use.
func (t *keyTable) each(fn func(*Entry)) {
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

// bytes is the memory the slots of t take.
func (t *keyTable) bytes() int {
	n := 0
	for i := range t.shards {
		n += len(t.shards[i].mem)
	}
	return n
}

// home is where the probe run of h, a slotHash, starts: its 48 bits
// shifted to the top.
func (sh *shard) home(h uint64) int { return probe.Home(h<<16, len(sh.slots)) }

func (sh *shard) next(i int) int { return probe.Next(i, len(sh.slots)) }

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

// find returns the slot of hash h, or nil.
func (sh *shard) find(h uint64) *Entry {
	if i := sh.index(h); i >= 0 {
		return &sh.slots[i]
	}
	return nil
}

// put returns the slot of hash h, adding an empty one if it had none.
func (sh *shard) put(h uint64) *Entry {
	if float64(sh.n+1) > maxLoad*float64(len(sh.slots)) {
		sh.grow()
	}
	i := sh.home(h)
	for ; sh.slots[i].hash() != 0; i = sh.next(i) {
		if sh.slots[i].hash() == h {
			return &sh.slots[i]
		}
	}
	sh.n++
	sh.slots[i] = newEntry(h)
	return &sh.slots[i]
}

func (sh *shard) grow() { sh.resize(max(minSlots, len(sh.slots)+len(sh.slots)/4)) }

// resize moves the shard's slots into a table of n.
func (sh *shard) resize(n int) {
	old, oldMem := sh.slots, sh.mem
	mem := mapSlots(n * entrySize)
	// Fault every page in now, in one call: the moves below write all of
	// them anyway, and a fault per page taken from the loop was a quarter
	// of the cost of filling a table (BenchmarkKnowledgeFill). Kernels
	// before 5.14 refuse it, and fault as the pages are written.
	_ = unix.Madvise(mem, unix.MADV_POPULATE_WRITE)
	sh.mem, sh.slots = mem, unsafe.Slice((*Entry)(unsafe.Pointer(&mem[0])), n)
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
		_ = unix.MunmapPtr(unsafe.Pointer(&oldMem[0]), uintptr(len(oldMem)))
	}
}

// mapSlots maps size bytes of zeroed memory for slots. The slots are
// read at random: with 4 KiB pages nearly every look-up of a large table
// also misses the TLB, so a mapping of a huge page or more starts at a
// huge page's boundary (mapped larger, the rest given back) and asks for
// huge pages: every whole huge page of it can then be one. Unaligned, a
// mapping of less than two huge pages held none in most cases.
func mapSlots(size int) []byte {
	length := size
	if size >= hugePage {
		length += hugePage
	}
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		panic(fmt.Sprintf("knowledge: cannot map %d bytes for the knowledge of keys: %v", length, err))
	}
	if size < hugePage {
		return unsafe.Slice((*byte)(p), size)
	}
	head := (hugePage - int(uintptr(p)%hugePage)) % hugePage
	if head > 0 {
		_ = unix.MunmapPtr(p, uintptr(head))
	}
	if tail := length - head - size; tail > 0 {
		_ = unix.MunmapPtr(unsafe.Add(p, head+size), uintptr(tail))
	}
	mem := unsafe.Slice((*byte)(unsafe.Add(p, head)), size)
	_ = unix.Madvise(mem, unix.MADV_HUGEPAGE)
	return mem
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
		if probe.MovesBack(sh.home(sh.slots[j].hash()), i, j) {
			sh.slots[i] = sh.slots[j]
			i = j
		}
	}
	sh.slots[i] = Entry{}
	return true
}
