package replication

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
)

// printTable is, for every key of every scanned map, the fingerprints of
// the value this node last sent, applied or found there: a scan sends
// only the entries whose value moved since (see [scanner]). The capture
// and the applier record what they send and write, so that a scan never
// sends back a peer's value as this node's own.
//
// A key's print costs about 50 bytes (the key's hash, the fingerprints,
// when it was last sent and the scan that last saw it, in a Go map),
// plus the key itself for maps whose vanished keys are deleted on the
// peers. Two keys of one 64-bit hash share a print (about 3·10⁻⁸ for some
// pair of 1M keys): a change of one may then go unsent until its next.
type printTable struct {
	mu    sync.Mutex // guards maps; taken after the knowledge's lock
	seed  maphash.Seed
	start time.Time // the origin of print.sent
	maps  []printMap
}

// printMap is the prints of one map; byKey is nil for a map not scanned.
type printMap struct {
	plan    *fieldPlan
	period  uint32 // the refresh period, in ms
	byKey   map[uint64]print
	keySize int
	keep    bool   // keys are kept: vanished keys are deleted on the peers
	keys    []byte // the kept keys, keySize each
	free    []int32
	gen     uint8 // the scan under way, or the last one
}

// print is what a scan compares one entry's value with.
type print struct {
	fp   uint64 // of the bytes a change of which is sent at once
	rfp  uint32 // of the refresh fields
	sent uint32 // when the value was last sent or applied, in ms since printTable.start (wraps after 49 days)
	key  int32  // index of the kept key; -1 if none
	gen  uint8  // the scan that last saw it
}

func newPrintTable(t *Table, start time.Time) *printTable {
	p := &printTable{seed: maphash.MakeSeed(), start: start, maps: make([]printMap, len(t.maps))}
	for i := range t.maps {
		m := &t.maps[i]
		if m.plan == nil || m.plan.opts.Scan == 0 {
			continue
		}
		p.maps[i] = printMap{plan: m.plan, period: uint32(m.plan.opts.RefreshPeriod.Milliseconds()),
			byKey: map[uint64]print{}, keySize: m.keySize, keep: m.plan.opts.Vanished == mapopt.Delete}
	}
	return p
}

func (p *printTable) ms(now time.Time) uint32 { return uint32(now.Sub(p.start).Milliseconds()) }

// scanned reports whether map index m is scanned.
func (p *printTable) scanned(m int) bool { return p != nil && p.maps[m].byKey != nil }

// record notes that this node sent or wrote key's value (op Update), as
// its map holds it, or deleted key, at now.
func (p *printTable) record(m int, op ops.Op, key, value []byte, now time.Time) {
	if !p.scanned(m) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pm := &p.maps[m]
	h := maphash.Bytes(p.seed, key)
	if op == ops.Delete {
		pm.remove(h)
		return
	}
	fp, rfp := pm.plan.prints(p.seed, value)
	pm.put(h, key, fp, rfp, p.ms(now))
}

// put sets key's print, of hash h, as last sent at ms and seen by the
// current scan.
func (pm *printMap) put(h uint64, key []byte, fp uint64, rfp, ms uint32) {
	old, ok := pm.byKey[h]
	pr := print{fp: fp, rfp: rfp, sent: ms, key: -1, gen: pm.gen}
	switch {
	case ok:
		pr.key = old.key
	case pm.keep:
		pr.key = pm.keepKey(key)
	}
	pm.byKey[h] = pr
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

func (pm *printMap) key(i int32) []byte {
	return pm.keys[int(i)*pm.keySize : int(i+1)*pm.keySize]
}

func (pm *printMap) remove(h uint64) {
	if pr, ok := pm.byKey[h]; ok {
		if pr.key >= 0 {
			pm.free = append(pm.free, pr.key)
		}
		delete(pm.byKey, h)
	}
}

// size returns how many keys have prints, in every map.
func (p *printTable) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for i := range p.maps {
		n += len(p.maps[i].byKey)
	}
	return n
}
