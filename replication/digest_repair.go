package replication

import (
	"bytes"
	"time"

	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/ops"
)

// sameRecords are a peer's snapshot records of one map whose version
// equals the one known here, kept during a repair of buckets: keys and
// values packed, and the versions.
type sameRecords struct {
	keys, vals []byte
	vers       []knowledge.Version
}

func (s *sameRecords) add(key, val []byte, v knowledge.Version) {
	s.keys, s.vals, s.vers = append(s.keys, key...), append(s.vals, val...), append(s.vers, v)
}

func (s *sameRecords) reset() { s.keys, s.vals, s.vers = s.keys[:0], s.vals[:0], s.vers[:0] }

// reconcile ends a repair of buckets where versions cannot: of the keys
// the peer carried in the version known here, those whose contents here
// differ anyway (a write no capture saw, two keys sharing one version)
// get a new write of this node's, so that every node takes it by the
// ordinary path. A key the map no longer holds was deleted here unseen:
// the new write is a delete. A differing value is decided by node id, the
// higher one's value winning, so both ends of a repair agree whichever
// asked. It returns how many keys it wrote.
func (c *resyncClient) reconcile(p *peer, now time.Time) int {
	m := c.apply.table.byFP[c.filter.Map]
	s := &c.apply.same[m.index]
	defer s.reset()
	mine, a, b := make([]byte, m.valueSize), make([]byte, m.valueSize), make([]byte, m.valueSize)
	var theirs []int // records whose value this node takes
	written := 0
	h := c.know.Lock()
	for j, v := range s.vers {
		key, val := s.keys[j*m.keySize:(j+1)*m.keySize], s.vals[j*m.valueSize:(j+1)*m.valueSize]
		e := h.Lookup(m.index, key)
		if e == nil || e.Deleted() || e.Version() != v {
			continue // written since
		}
		found, err := m.Target.Lookup(key, mine)
		switch {
		case err != nil:
			continue
		case !found:
			c.deletedUnseen(h, m, e, key, now)
			written++
			continue
		}
		if bytes.Equal(digestValue(m, c.normalize, a, mine), digestValue(m, c.normalize, b, val)) {
			continue
		}
		if c.node > p.node {
			w := knowledge.Version{Stamp: c.clock.At(now), Origin: c.node}
			h.Set(e, m.index, key, w, false, true, now)
			c.relay.add(m.index, ops.Update, w, key, mine)
			written++
			continue
		}
		theirs = append(theirs, j)
	}
	h.Unlock()
	for _, j := range theirs {
		key, val := s.keys[j*m.keySize:(j+1)*m.keySize], s.vals[j*m.valueSize:(j+1)*m.valueSize]
		w := knowledge.Version{Stamp: c.clock.At(now), Origin: c.node}
		c.apply.add(c.node, m, ops.Update, w, key, val, false)
		c.relay.add(m.index, ops.Update, w, key, val)
		written++
	}
	c.apply.applyRuns()
	return written
}
