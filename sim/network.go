package sim

import (
	"bytes"
	"encoding/binary"
	"hash/fnv"
	"strconv"
	"time"

	"github.com/udpmapsync/udpmapsync/wire"
)

// network is the simulated link between the nodes: every datagram is
// lost for every destination (upstream of the receivers), and to each
// destination lost, duplicated and delayed (so reordered), by chance, and dropped while a partition or a one-way cut separates the
// two nodes. Each datagram's fate is drawn from a hash of the seed, its
// ends, its bytes and the time, not from the run's sequence of draws, so
// it does not depend on the order in which a node happened to send.
type network struct {
	// cut[a][b]: datagrams from node a+1 to node b+1 are dropped.
	cut [][]bool
}

// schedule draws the run's partitions and one-way cuts, all healed by
// the scenario's heal time.
func (net *network) schedule(s *Sim) {
	k := len(s.nodes)
	net.cut = make([][]bool, k)
	for i := range net.cut {
		net.cut[i] = make([]bool, k)
	}
	for _, c := range s.sc.cuts {
		s.after(c.from, func() { net.set(s, c, true) })
		s.after(c.to, func() { net.set(s, c, false) })
	}
}

// set applies or heals one cut.
func (net *network) set(s *Sim, c cut, on bool) {
	for a := range net.cut {
		for b := range net.cut {
			inA, inB := c.side&(1<<a) != 0, c.side&(1<<b) != 0
			if inA && !inB || !c.oneWay && !inA && inB {
				net.cut[a][b] = on
			}
		}
	}
	s.tracef("cut %+v on=%v", c, on)
}

// heal ends every cut.
func (net *network) heal() {
	for a := range net.cut {
		clear(net.cut[a])
	}
}

// send sends d from one node to another, or to every other node when to
// is nil (multicast).
func (net *network) send(s *Sim, from, to *simNode, d []byte) {
	s.observe(from, to, d)
	h := fnv.New64a()
	var b [20]byte
	binary.BigEndian.PutUint64(b[0:], s.seed)
	binary.BigEndian.PutUint32(b[8:], from.id)
	binary.BigEndian.PutUint64(b[12:], uint64(s.now.UnixNano()))
	h.Write(b[:])
	h.Write(d)
	if mix(h.Sum64())%1000 < uint64(s.sc.upstreamPermille) {
		if s.trace != nil {
			s.tracef("drop %s %d-> (upstream loss)", kindOf(d), from.id)
		}
		return
	}
	for _, n := range s.nodes {
		if n == from || to != nil && n != to {
			continue
		}
		net.carry(s, from, n, d, to != nil)
	}
}

// carry decides the fate of d from one node to another, sent to it
// alone or to the group, and schedules its arrival.
func (net *network) carry(s *Sim, from, to *simNode, d []byte, unicast bool) {
	h := fnv.New64a()
	var b [28]byte
	binary.BigEndian.PutUint64(b[0:], s.seed)
	binary.BigEndian.PutUint32(b[8:], from.id)
	binary.BigEndian.PutUint32(b[12:], to.id)
	binary.BigEndian.PutUint64(b[16:], uint64(s.now.UnixNano()))
	h.Write(b[:24])
	h.Write(d)
	fate := h.Sum64()
	kind := ""
	if s.trace != nil {
		kind = kindOf(d)
	}
	if net.cut[from.id-1][to.id-1] {
		s.tracef("drop %s %d->%d (cut)", kind, from.id, to.id)
		return
	}
	draw := func(i uint) uint64 { return mix(fate + uint64(i)*0x9e3779b97f4a7c15) }
	if draw(1)%1000 < uint64(s.sc.lossPermille) {
		s.tracef("drop %s %d->%d (loss)", kind, from.id, to.id)
		return
	}
	copies := 1
	if draw(2)%1000 < uint64(s.sc.dupPermille) {
		copies = 2
	}
	c := bytes.Clone(d)
	for i := range copies {
		delay := s.sc.delay + time.Duration(draw(3+uint(i))%uint64(s.sc.jitter+1))
		s.tracef("send %s %d->%d arrives +%v", kind, from.id, to.id, delay)
		s.at(s.now.Add(delay), fate+uint64(i), func() {
			s.tracef("deliver %s %d->%d", kind, from.id, to.id)
			to.deliver(from.addr, c, unicast)
		})
	}
}

// mix is splitmix64's finalizer.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// kindOf names a datagram for the trace: its kind and number.
func kindOf(d []byte) string {
	var h wire.Header
	if h.Unmarshal(d) != nil {
		return "malformed"
	}
	return h.Kind.String() + "#" + strconv.FormatUint(h.Seq, 10)
}
