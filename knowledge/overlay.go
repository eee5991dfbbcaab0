package knowledge

// Noted is what an [Overlay] keeps of one write: its version, whether it
// deleted the key, and the [ValueHash] of the value it wrote.
type Noted struct {
	Version   Version
	Deleted   bool
	ValueHash uint64
}

// Overlay collects, per map index and key, the writes noted while it is
// open: a stopping node opens one before it reads its maps for the state
// file, and adds what it collected once the node has stopped, so writes
// made after the read are not lost to the file.
type Overlay []map[string]Noted

// OpenOverlay starts collecting the writes passed to [Held.Note], until
// [Held.TakeOverlay].
func (h Held) OpenOverlay() {
	h.k.overlay = make(Overlay, len(h.k.maps))
	for i := range h.k.overlay {
		h.k.overlay[i] = map[string]Noted{}
	}
}

// TakeOverlay stops collecting and returns what was collected, nil if
// no overlay was open.
func (h Held) TakeOverlay() Overlay {
	o := h.k.overlay
	h.k.overlay = nil
	return o
}

// Note records a write of key of map index m in the overlay, if one is
// open: the applier's and the capture's writes, whose versions a state
// file read before them lacks.
func (h Held) Note(m int, key []byte, v Version, deleted bool, value []byte) {
	if h.k.overlay == nil {
		return
	}
	h.k.overlay[m][string(key)] = Noted{Version: v, Deleted: deleted, ValueHash: ValueHash(value)}
}

// ValueHash is FNV-1a 64 of a value: a hash that is the same in every
// run, unlike the knowledge's seeded one of keys.
func ValueHash(b []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for _, c := range b {
		h = (h ^ uint64(c)) * 0x100000001b3
	}
	return h
}
