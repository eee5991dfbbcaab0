package knowledge

import "iter"

// tombstoneLog is the deletes of one map in the order they were learned,
// with their keys: what a snapshot sends so that a peer still holding a
// deleted key learns of the delete.
type tombstoneLog struct {
	keySize int
	head    int // first live entry
	stamps  []Version
	keys    []byte
}

func (l *tombstoneLog) len() int { return len(l.stamps) - l.head }

func (l *tombstoneLog) add(key []byte, v Version) {
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
func (l *tombstoneLog) at(i int) ([]byte, Version) {
	j := l.head + i
	return l.keys[j*l.keySize : (j+1)*l.keySize], l.stamps[j]
}

// Tombstones yields the remembered deletes of map index m that are still
// the latest write known of their key, oldest first: each key (aliasing
// the log, valid while the lock is held) and its entry, whose
// [Entry.Version] is the delete's. The caller must not add to the
// knowledge while it ranges.
func (h Held) Tombstones(m int) iter.Seq2[[]byte, *Entry] {
	return func(yield func([]byte, *Entry) bool) {
		k, l := h.k, &h.k.tombs[m]
		for j := range l.len() {
			key, v := l.at(j)
			if e := k.maps[m].find(k.Hash(key)); e != nil && e.Deleted() && e.Version() == v {
				if !yield(key, e) {
					return
				}
			}
		}
	}
}
