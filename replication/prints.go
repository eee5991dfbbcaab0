package replication

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/probe"
)

// printTable is, for every key of every scanned map, the fingerprints of
// the value this node last sent, applied or found there: a scan sends
// only the entries whose value moved since (see [scanner]). The capture
// and the applier record what they send and write, so that a scan never
// sends back a peer's value as this node's own.
//
// A key's print is 24 bytes in an open-addressing table at most 85% full
// (28 to 43 bytes per key), plus the key itself and 4 bytes for maps
// whose vanished keys are deleted on the peers. The key is not kept
// otherwise: two keys of one 64-bit hash share a print (about 3·10⁻⁸ for
// some pair of 1M keys), and a change of one may then go unsent until its
// next; the refresh fingerprint has 24 bits, so one refresh in 16
// million may wait for the next.
type printTable struct {
	mu    sync.Mutex // guards maps; taken after the knowledge's lock
	seed  maphash.Seed
	start time.Time // the origin of print.sent
	maps  []printMap
}

// printMap is the prints of one map.
type printMap struct {
	scanned bool // set once, before the node runs: read without the lock
	plan    *fieldPlan
	period  uint32 // the refresh period, in ms
	slots   []print
	n       int     // slots in use
	keyAt   []int32 // beside slots, when keys are kept: the key's index in keys
	keySize int
	keep    bool   // keys are kept: vanished keys are deleted on the peers
	keys    []byte // the kept keys, keySize each
	free    []int32
	gen     uint8 // the scan under way, or the last one
	learnt  bool  // a scan has read the whole map since the start
}

// print is what a scan compares one entry's value with.
type print struct {
	hash uint64 // the key's, never 0; 0 is an empty slot
	fp   uint64 // of the bytes a change of which is sent at once
	meta uint32 // the refresh fields' fingerprint (low 24 bits) and the scan that last saw the key (high 8)
	sent uint32 // when the value was last sent or applied, in ms since printTable.start (wraps after 49 days)
}

const (
	printMaxLoad = 0.85
	printMinLen  = 64
	rfpMask      = 1<<24 - 1
)

func (pr *print) rfp() uint32 { return pr.meta & rfpMask }
func (pr *print) gen() uint8  { return uint8(pr.meta >> 24) }
func (pr *print) setGen(g uint8) {
	pr.meta = pr.meta&rfpMask | uint32(g)<<24
}

func newPrintTable(t *Table, start time.Time) *printTable {
	p := &printTable{seed: maphash.MakeSeed(), start: start, maps: make([]printMap, len(t.maps))}
	for i := range t.maps {
		m := &t.maps[i]
		if m.plan == nil || m.plan.opts.Scan == 0 {
			continue
		}
		pm := &p.maps[i]
		*pm = printMap{scanned: true, plan: m.plan, period: uint32(m.plan.opts.RefreshPeriod.Milliseconds()),
			keySize: m.keySize, keep: m.plan.opts.Vanished == mapopt.Delete}
		pm.resize(printMinLen)
	}
	return p
}

func (p *printTable) ms(now time.Time) uint32 { return uint32(now.Sub(p.start).Milliseconds()) }

// hash is the key's hash as a print keeps it: never 0.
func (p *printTable) hash(key []byte) uint64 { return maphash.Bytes(p.seed, key) | 1 }

// scanned reports whether map index m is scanned.
func (p *printTable) scanned(m int) bool { return p != nil && p.maps[m].scanned }

// record notes that this node sent or wrote key's value (op Update), as
// its map holds it, or deleted key, at now.
func (p *printTable) record(m int, op ops.Op, key, value []byte, now time.Time) {
	if !p.scanned(m) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pm := &p.maps[m]
	h := p.hash(key)
	if op == ops.Delete {
		if i := pm.find(h); i >= 0 {
			pm.removeAt(i)
		}
		return
	}
	fp, rfp := pm.plan.prints(p.seed, value)
	pm.set(pm.put(h, key), fp, rfp, p.ms(now))
}

// set gives the print at i new fingerprints, sent at ms and seen by the
// current scan.
func (pm *printMap) set(i int, fp uint64, rfp, ms uint32) {
	pr := &pm.slots[i]
	pr.fp, pr.sent = fp, ms
	pr.meta = rfp&rfpMask | uint32(pm.gen)<<24
}

// home is where the probe run of hash h starts.
func (pm *printMap) home(h uint64) int { return probe.Home(h, len(pm.slots)) }

func (pm *printMap) next(i int) int { return probe.Next(i, len(pm.slots)) }

// find returns the index of hash h's print, or -1.
func (pm *printMap) find(h uint64) int {
	for i := pm.home(h); ; i = pm.next(i) {
		switch pm.slots[i].hash {
		case h:
			return i
		case 0:
			return -1
		}
	}
}

// put returns the index of hash h's print, adding an empty one for key
// if there is none. An index is valid until the next put or removeAt.
func (pm *printMap) put(h uint64, key []byte) int {
	if float64(pm.n+1) > printMaxLoad*float64(len(pm.slots)) {
		pm.resize(len(pm.slots) + len(pm.slots)/2)
	}
	i := pm.home(h)
	for ; pm.slots[i].hash != 0; i = pm.next(i) {
		if pm.slots[i].hash == h {
			return i
		}
	}
	pm.n++
	pm.slots[i] = print{hash: h}
	if pm.keep {
		pm.keyAt[i] = pm.keepKey(key)
	}
	return i
}

// resize moves the prints into a table of n slots.
func (pm *printMap) resize(n int) {
	old, oldKeys := pm.slots, pm.keyAt
	pm.slots = make([]print, n)
	if pm.keep {
		pm.keyAt = make([]int32, n)
	}
	for i := range old {
		if old[i].hash == 0 {
			continue
		}
		j := pm.home(old[i].hash)
		for pm.slots[j].hash != 0 {
			j = pm.next(j)
		}
		pm.slots[j] = old[i]
		if pm.keep {
			pm.keyAt[j] = oldKeys[i]
		}
	}
}

// removeAt forgets the print at i, shifting later prints of its probe run
// back so that no look-up stops early. Prints at indexes after i may move
// to i or after.
func (pm *printMap) removeAt(i int) {
	if pm.keep {
		pm.free = append(pm.free, pm.keyAt[i])
	}
	pm.n--
	for j := pm.next(i); pm.slots[j].hash != 0; j = pm.next(j) {
		if probe.MovesBack(pm.home(pm.slots[j].hash), i, j) {
			pm.slots[i] = pm.slots[j]
			if pm.keep {
				pm.keyAt[i] = pm.keyAt[j]
			}
			i = j
		}
	}
	pm.slots[i] = print{}
}

func (pm *printMap) keepKey(key []byte) int32 {
	if n := len(pm.free); n > 0 {
		i := pm.free[n-1]
		pm.free = pm.free[:n-1]
		copy(pm.keys[int(i)*pm.keySize:], key)
		return i
	}
	pm.keys = append(pm.keys, key...)
	return int32(len(pm.keys)/pm.keySize - 1)
}

// key returns the kept key of the print at i.
func (pm *printMap) key(i int) []byte {
	k := int(pm.keyAt[i])
	return pm.keys[k*pm.keySize : (k+1)*pm.keySize]
}

// size returns how many keys have prints, in every map.
func (p *printTable) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for i := range p.maps {
		n += p.maps[i].n
	}
	return n
}
