// Package counter is the sum merge rule of udpmapsync (`merge=sum`): the
// state one node keeps of one key of a counter map, and how a peer's
// contribution or a reset is merged into it. It decides; the caller
// writes the map. It knows nothing of maps, datagrams or peers; see
// "Counters" in docs/ARCHITECTURE.md.
//
// A key's value is a vector of 64-bit words, added modulo 2^64. Each node
// (origin) owns one contribution per key, a register only it writes, each
// time with a larger stamp; a receiver keeps the contribution with the
// latest (reset, stamp), so applying one twice, late or out of order
// changes nothing. A reset (a delete of the key, by any node) clears every
// contribution counted from an older reset.
package counter

import (
	"errors"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
)

// ErrOriginsFull is a contribution of one origin more than a key holds.
var ErrOriginsFull = errors.New("the key holds contributions of as many origins as it may")

// Contribution is what one origin's datapath added to one key since the
// reset it counts from: a record of a counter map on the wire.
type Contribution struct {
	Reset  knowledge.Version // the reset it counts from; zero: none yet
	Origin uint32
	Stamp  hlc.Stamp // the origin's clock when it read the contribution
	Words  []uint64
}

// Key is one node's state of one key: the last reset it applied, and the
// contributions counted from it that it holds, its own among them.
type Key struct {
	reset knowledge.Version
	slots []slot
}

type slot struct {
	origin uint32
	stamp  hlc.Stamp
	words  []uint64
}

// Reset returns the version of the last reset applied.
func (k *Key) Reset() knowledge.Version { return k.reset }

// ApplyReset applies a reset of version v: if it is newer than the last
// one, every contribution is cleared and it reports true, and the caller
// deletes the key from its map.
func (k *Key) ApplyReset(v knowledge.Version) bool {
	if !v.Newer(k.reset) {
		return false
	}
	k.reset = v
	k.slots = k.slots[:0]
	return true
}

// Merge merges a peer's contribution c into k. A contribution counted
// from a newer reset applies that reset first (reset true: the caller
// deletes the key before it adds). It writes into delta, which has as
// many words as c, what the caller adds to its map's value, and reports
// whether there is anything to add. A contribution from an older reset,
// or not newer than the origin's held one, changes nothing. origins is
// the most contributions the key may hold; a new origin beyond it is
// refused with [ErrOriginsFull].
func (k *Key) Merge(c Contribution, origins int, delta []uint64) (reset, add bool, err error) {
	if c.Reset.Newer(k.reset) {
		reset = k.ApplyReset(c.Reset)
	} else if k.reset.Newer(c.Reset) {
		return false, false, nil
	}
	s := k.find(c.Origin)
	if s == nil {
		if len(k.slots) >= origins {
			return reset, false, ErrOriginsFull
		}
		k.slots = append(k.slots, slot{origin: c.Origin, words: make([]uint64, len(c.Words))})
		s = &k.slots[len(k.slots)-1]
	} else if c.Stamp <= s.stamp || below(c.Words, s.words) {
		// Below the held one in some word, from the same reset: the
		// origin lost counts it had sent (it crashed without its state
		// file) and counts anew. Taking it would subtract what the map
		// may no longer hold, the datapath having deleted the key, and
		// wrap the value below zero; the origin gets its sent counts
		// back from its peers ([Key.Regain]) and sends them again.
		return reset, false, nil
	}
	for i, w := range c.Words {
		delta[i] = w - s.words[i]
		add = add || delta[i] != 0
	}
	s.stamp = c.Stamp
	copy(s.words, c.Words)
	return reset, add, nil
}

// Local reads the contribution of node self from its map's value: the
// value less every other origin's contribution added to it, word by
// word, into local. A key the map does not hold has a value of zeros.
func (k *Key) Local(self uint32, value, local []uint64) {
	copy(local, value)
	for _, s := range k.slots {
		if s.origin == self {
			continue
		}
		for i, w := range s.words {
			local[i] -= w
		}
	}
}

// WentDown reports whether value, the map's value of the key on node
// self, is less in some word than what the key's contributions account
// for: than the peers' contributions added to it, or than the
// contribution self last read from it plus them. Increments and the adds
// of peers' contributions only ever raise it, so it went down in place:
// the datapath deleted the key and counted anew before the scan saw the
// delete, or wrote a smaller value into it. That is read as a reset.
func (k *Key) WentDown(self uint32, value []uint64) bool {
	for i, v := range value {
		var others, own uint64
		for _, s := range k.slots {
			if s.origin == self {
				own = s.words[i]
			} else {
				others += s.words[i]
			}
		}
		if v < others || v-others < own {
			return true
		}
	}
	return false
}

// SetOwn records local as node self's contribution, stamped stamp, if it
// differs from the one held; it reports whether it did, and then the
// caller sends [Key.Own]. It is refused with [ErrOriginsFull] like a
// peer's when the key is full.
func (k *Key) SetOwn(self uint32, stamp hlc.Stamp, local []uint64, origins int) (bool, error) {
	s := k.find(self)
	if s == nil {
		zero := true
		for _, w := range local {
			zero = zero && w == 0
		}
		if zero {
			return false, nil
		}
		if len(k.slots) >= origins {
			return false, ErrOriginsFull
		}
		k.slots = append(k.slots, slot{origin: self, words: make([]uint64, len(local))})
		s = &k.slots[len(k.slots)-1]
	} else if equal(s.words, local) {
		return false, nil
	}
	s.stamp = max(stamp, s.stamp+1)
	copy(s.words, local)
	return true, nil
}

// Regain merges into k, on node self, self's own contribution c as a
// peer held it, counted from k's reset: one sent before this node lost
// its counts in a crash, which its peers keep and may hold above what
// self counted since (they refuse a contribution below it: see
// [Key.Merge]). Each word of self's contribution becomes the larger of
// the two, stamped stamp (later than both), and delta gets what it grew
// by, for the caller to add to its map; it reports whether it grew. An
// echo of a contribution self sent in this run is never above the one
// it holds, and changes nothing.
func (k *Key) Regain(self uint32, c Contribution, stamp hlc.Stamp, delta []uint64) bool {
	s := k.find(self)
	if s == nil || c.Reset != k.reset || !below(s.words, c.Words) {
		return false
	}
	for i, w := range c.Words {
		delta[i] = max(w, s.words[i]) - s.words[i]
		s.words[i] += delta[i]
	}
	s.stamp = max(stamp, s.stamp+1, c.Stamp+1)
	return true
}

// Own returns node self's contribution as held, to send; ok is false if
// it holds none.
func (k *Key) Own(self uint32) (c Contribution, ok bool) {
	s := k.find(self)
	if s == nil {
		return Contribution{}, false
	}
	return Contribution{Reset: k.reset, Origin: self, Stamp: s.stamp, Words: s.words}, true
}

// Contributions calls fn with every contribution held, in the order they
// were first held: what a resync or a state file carries. Words are k's
// own; fn copies what it keeps.
func (k *Key) Contributions(fn func(Contribution)) {
	for _, s := range k.slots {
		fn(Contribution{Reset: k.reset, Origin: s.origin, Stamp: s.stamp, Words: s.words})
	}
}

// Origins returns how many contributions the key holds.
func (k *Key) Origins() int { return len(k.slots) }

func (k *Key) find(origin uint32) *slot {
	for i := range k.slots {
		if k.slots[i].origin == origin {
			return &k.slots[i]
		}
	}
	return nil
}

// below reports whether a is less than b in some word.
func below(a, b []uint64) bool {
	for i := range a {
		if a[i] < b[i] {
			return true
		}
	}
	return false
}

func equal(a, b []uint64) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
