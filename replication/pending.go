package replication

import (
	"bytes"
	"hash/maphash"
	"math"
	"math/bits"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// pending holds the changes of the datagram being built, one entry per
// (map, key): a later change of the same key replaces the earlier one in
// place, so a datagram never carries two changes of one key.
//
// Keys and values are copied into one reusable arena and found through an
// open-addressing index, so coalescing neither allocates nor hashes
// strings through a Go map. Entries are encoded only when the datagram is
// closed; size tracks exactly what [wire.ChangeWriter] will write for them.
type pending struct {
	entries []entry
	arena   []byte
	index   []int32 // entry position + 1; 0 is an empty slot
	mask    uint64
	seed    maphash.Seed
	heads   []int32 // per map (Table.maps order): first entry, or -1
	tails   []int32 // per map: last entry, or -1
	size    int     // datagram bytes the entries encode to, headers included
	node    uint32  // this node: its entries' stamps are offsets from base
	base    hlc.Stamp
}

// entry is one pending change.
type entry struct {
	m     *localMap
	op    ops.Op
	v     knowledge.Version
	key   int   // arena offset of the key
	value int   // arena offset of the value; -1 until an update needs one
	slot  int   // index slot pointing at this entry, to clear it at reset
	next  int32 // next entry of the same map, or -1
}

// newPending sizes a pending set for the datagrams and maps of t.
func newPending(t *Table, node uint32) pending {
	payload := t.payload
	minRecord := payload
	for i := range t.maps {
		minRecord = min(minRecord, 2+t.maps[i].keySize) // a delete with a one-byte stamp
	}
	maxEntries := (payload - wire.HeaderSize - wire.SectionHeaderSize) / minRecord
	// At most half full, so probe sequences stay short.
	slots := 1 << bits.Len(uint(2*maxEntries))
	p := pending{
		entries: make([]entry, 0, maxEntries),
		arena:   make([]byte, 0, 2*payload),
		index:   make([]int32, slots),
		mask:    uint64(slots - 1),
		seed:    maphash.MakeSeed(),
		heads:   make([]int32, len(t.maps)),
		tails:   make([]int32, len(t.maps)),
		node:    node,
	}
	p.reset()
	return p
}

// recordSize is the wire size of a change record of m with version v in
// the datagram being built.
func (p *pending) recordSize(m *localMap, op ops.Op, v knowledge.Version) int {
	n := 1 + wire.StampSize(p.node, v.Origin, uint64(p.base), uint64(v.Stamp)) + m.keySize
	if op == ops.Update {
		n += m.valueSize
	}
	return n
}

func (p *pending) empty() bool { return len(p.entries) == 0 }

// hash places (m, key) in the index. Mixing in the map keeps equal key
// bytes of different maps apart.
func (p *pending) hash(m *localMap, key []byte) uint64 {
	return maphash.Bytes(p.seed, key) ^ (uint64(m.index+1) * 0x9e3779b97f4a7c15)
}

// find returns the pending entry of (m, key), or nil and the free slot
// where it belongs.
func (p *pending) find(m *localMap, key []byte, h uint64) (*entry, int) {
	for slot := h & p.mask; ; slot = (slot + 1) & p.mask {
		i := p.index[slot]
		if i == 0 {
			return nil, int(slot)
		}
		e := &p.entries[i-1]
		if e.m == m && bytes.Equal(p.arena[e.key:e.key+m.keySize], key) {
			return e, int(slot)
		}
	}
}

// growth is how many bytes adding op on (m, key) with version v adds to
// the datagram, given the pending entry of that key (nil if none).
func (p *pending) growth(e *entry, m *localMap, op ops.Op, v knowledge.Version) int {
	if p.empty() {
		p.base = v.Stamp // the datagram's base stamp: the first change's
	}
	if e != nil {
		return p.recordSize(m, op, v) - p.recordSize(m, e.op, e.v)
	}
	if p.heads[m.index] < 0 {
		return wire.SectionHeaderSize + p.recordSize(m, op, v)
	}
	return p.recordSize(m, op, v)
}

// set makes e's change op with value (ignored for deletes) and version v.
func (p *pending) set(e *entry, op ops.Op, v knowledge.Version, value []byte) {
	e.op, e.v = op, v
	if op != ops.Update {
		return
	}
	if e.value < 0 {
		e.value = len(p.arena)
		p.arena = append(p.arena, value...)
		return
	}
	copy(p.arena[e.value:e.value+e.m.valueSize], value)
}

// insert adds a new entry for (m, key) at the free slot returned by find.
func (p *pending) insert(slot int, m *localMap, op ops.Op, v knowledge.Version, key, value []byte) {
	i := int32(len(p.entries))
	p.entries = append(p.entries, entry{m: m, key: len(p.arena), value: -1, slot: slot, next: -1})
	p.arena = append(p.arena, key...)
	p.set(&p.entries[i], op, v, value)
	p.index[slot] = i + 1
	if t := p.tails[m.index]; t >= 0 {
		p.entries[t].next = i
	} else {
		p.heads[m.index] = i
	}
	p.tails[m.index] = i
}

// encode writes every entry as a datagram in buf, grouped by map so that
// each map costs one section header, and in arrival order within a map.
// It returns the oldest stamp among them.
func (p *pending) encode(w *wire.ChangeWriter, buf []byte) (floor hlc.Stamp) {
	floor = hlc.Stamp(math.MaxUint64)
	w.Reset(buf, p.node, uint64(p.base))
	for _, head := range p.heads {
		for i := head; i >= 0; i = p.entries[i].next {
			e := &p.entries[i]
			key := p.arena[e.key : e.key+e.m.keySize]
			var value []byte
			if e.op == ops.Update {
				value = p.arena[e.value : e.value+e.m.valueSize]
				if e.m.plan != nil {
					e.m.plan.toWire(value) // the entry is sent once: it is reset next
				}
			}
			if !w.Append(e.m.fp, e.op, uint64(e.v.Stamp), e.v.Origin, key, value) {
				panic("replication: pending size out of step with wire.ChangeWriter")
			}
			floor = min(floor, e.v.Stamp)
		}
	}
	return floor
}

// reset empties the set, clearing only the index slots in use.
func (p *pending) reset() {
	for i := range p.entries {
		p.index[p.entries[i].slot] = 0
	}
	p.entries = p.entries[:0]
	p.arena = p.arena[:0]
	for i := range p.heads {
		p.heads[i], p.tails[i] = -1, -1
	}
	p.size = wire.HeaderSize + wire.StampBaseSize
	p.base = 0
}
