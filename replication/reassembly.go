package replication

import (
	"cmp"
	"errors"
	"log/slog"
	"slices"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/wire"
)

// Reassembly bounds, see [Config.ReassemblyBytes].
const (
	// DefaultReassemblyBytes is what a node holds at most of incomplete
	// records, from all peers together.
	DefaultReassemblyBytes = 32 << 20
	// MinReassemblyBytes is the least bound a daemon takes: a quarter of
	// it holds a record of the largest map the capture takes (a 512-byte
	// key, a 16383-byte value) several times over.
	MinReassemblyBytes = 1 << 20
	// reassemblyPeerShare is the part of the bound one peer may hold: a
	// quarter, so that a peer that never completes its records leaves
	// room for three others.
	reassemblyPeerShare = 4
	// reassemblyTimeout is how long an incomplete record waits for its
	// missing chunks. A chunk lost from a change stream comes back when
	// the gap is repaired, and one lost from a snapshot when the serving
	// node sends it again, both well within it.
	reassemblyTimeout = 30 * time.Second
	// partialOverhead is what a partial record costs besides its value
	// and key: its bookkeeping and its slot in the index. Every partial
	// is charged it, so that tiny values cannot hold many.
	partialOverhead = 256
)

// errFragmentsRefused refuses a snapshot datagram whose fragment would
// pass the reassembly bound: the serving node sends it again.
var errFragmentsRefused = errors.New("fragment refused: reassembly memory full")

// reassembly puts the fragment records of updates too large for one
// datagram back together (see "Fragments" in wire/FORMAT.md). A record is
// held as a partial, keyed by its sender, its stream, its map, its key
// and its version, until every chunk arrived; nothing of it reaches a map
// before then. What it holds is bounded, per sending node and in all,
// and in time; every fragment it drops is counted.
//
// It belongs to the [applier] and runs under the receive lock.
type reassembly struct {
	limit, peerLimit int // bytes of partials in all, and of one sending node's
	timeout          time.Duration
	held             int            // bytes of partials
	byNode           map[uint32]int // bytes of partials per sending node
	partials         map[partialKey]*partial
	// streams is each node's partial of its change stream: a sender
	// never interleaves two records' fragments there, so another record
	// beginning ends the hope of the one before.
	streams map[uint32]partialKey
	// refused is each node's record of its change stream whose fragment
	// was refused for lack of memory: its later fragments are dropped as
	// well, and the receiver asks the node for a delta resync from the
	// refused one's datagram on (see [reassembly.takeRefused]). It holds
	// at most a record per node.
	refused map[uint32]refusal
	swept   time.Time // when expired partials were last dropped
	spare   []byte    // a completed partial's value, for the next one

	stats *Stats
	log   *slog.Logger
	lim   *limiter
}

// partialKey names one record in one stream of one sender.
type partialKey struct {
	node     uint32
	snapshot bool
	fp       uint32
	version  knowledge.Version
	key      string
}

// refusal is the record of a change stream whose fragment was refused,
// and whether the receiver has yet to act on it.
type refusal struct {
	k   partialKey
	new bool
}

// partial is an incomplete record: its value so far, and which chunks
// arrived.
type partial struct {
	value []byte
	have  [(wire.MaxFragments + 63) / 64]uint64
	got   int // chunks arrived
	count int // chunks of the record
	began time.Time
	cost  int
}

func newReassembly(limit int, stats *Stats, log *slog.Logger, lim *limiter) reassembly {
	return reassembly{limit: limit, peerLimit: limit / reassemblyPeerShare, timeout: reassemblyTimeout,
		byNode: map[uint32]int{}, partials: map[partialKey]*partial{}, streams: map[uint32]partialKey{}, refused: map[uint32]refusal{},
		stats: stats, log: log, lim: lim}
}

// fragmentOutcome is what became of one fragment.
type fragmentOutcome uint8

const (
	fragmentHeld      fragmentOutcome = iota // held, its record still incomplete
	fragmentCompleted                        // the last chunk of its record: the value is whole
	fragmentDropped                          // dropped and counted
)

// startCost is what a fragment of node's snapshot of map fp would be
// charged: 0 if it continues a partial, else what a new partial of its
// record costs. A snapshot datagram is refused whole, before anything of
// it is taken, unless the sum of its fragments' fits (see [reassembly.fits]).
func (r *reassembly) startCost(node uint32, fp uint32, rec *wire.Record) int {
	if _, ok := r.partials[r.keyOf(node, true, fp, rec)]; ok {
		return 0
	}
	return r.costOf(rec)
}

// add takes one fragment record of node's change stream or snapshot of
// the map with fingerprint fp. Once the record is whole it returns
// fragmentCompleted and the value, valid until the next call.
func (r *reassembly) add(node uint32, snapshot bool, fp uint32, rec *wire.Record, now time.Time) (fragmentOutcome, []byte) {
	r.stats.FragmentsReceived.Add(1)
	k := r.keyOf(node, snapshot, fp, rec)
	p := r.partials[k]
	if p == nil {
		if !snapshot {
			if prev, ok := r.streams[node]; ok {
				r.drop(prev, &r.stats.FragmentsAbandoned, "dropping an incomplete record: its sender's change stream moved on to another")
			}
			if rf, ok := r.refused[node]; ok && rf.k == k {
				r.stats.FragmentsRefused.Add(1) // the rest of a record refused
				return fragmentDropped, nil
			} else if ok && !rf.new {
				delete(r.refused, node) // the stream moved on
			}
		}
		cost := r.costOf(rec)
		if !r.fits(node, cost, now) {
			r.stats.FragmentsRefused.Add(1)
			if !snapshot {
				r.refused[node] = refusal{k: k, new: true}
				r.stats.RecordsRefused.Add(1)
			}
			if s, ok := r.lim.allow(reasonFragment); ok {
				r.log.Warn("dropping a fragment: the memory for incomplete records is full; raise --reassembly-memory if peers send this many large records at once",
					"peer", node, "snapshot", snapshot, "held", r.held, "peer_held", r.byNode[node], "limit", r.limit, "suppressed", s)
			}
			return fragmentDropped, nil
		}
		p = &partial{value: r.buffer(rec.Fragment.Size), count: rec.Fragment.Count, began: now, cost: cost}
		r.partials[k] = p
		r.held += cost
		r.byNode[node] += cost
		r.stats.ReassemblyBytes.Store(uint64(r.held))
		if !snapshot {
			r.streams[node] = k
		}
	}
	f := &rec.Fragment
	switch {
	case f.Count != p.count:
		r.bad(&r.stats.FragmentsInconsistent, node, "dropping a fragment whose count differs from its record's other fragments", f)
		return fragmentDropped, nil
	case p.have[f.Index/64]&(1<<(f.Index%64)) != 0:
		r.bad(&r.stats.FragmentsDuplicate, node, "dropping a fragment already held", f)
		return fragmentDropped, nil
	}
	p.have[f.Index/64] |= 1 << (f.Index % 64)
	p.got++
	copy(p.value[f.Offset:], rec.Value)
	if p.got < p.count {
		return fragmentHeld, nil
	}
	r.release(k, p)
	r.spare = p.value
	r.stats.RecordsReassembled.Add(1)
	return fragmentCompleted, p.value
}

// takeRefused reports whether a record of node's change stream was
// refused since the last call: the receiver then has not applied that
// node's stream from the datagram just collected on.
func (r *reassembly) takeRefused(node uint32) bool {
	rf, ok := r.refused[node]
	if !ok || !rf.new {
		return false
	}
	rf.new = false
	r.refused[node] = rf
	return true
}

// forget drops what node's change stream (snapshot false) or snapshots
// (snapshot true) left incomplete: the node restarted, went silent, or
// begins a new snapshot.
func (r *reassembly) forget(node uint32, snapshot bool) {
	if !snapshot {
		delete(r.refused, node)
	}
	if r.byNode[node] == 0 {
		return
	}
	for k := range r.partials {
		if k.node == node && k.snapshot == snapshot {
			r.drop(k, &r.stats.FragmentsAbandoned, "")
		}
	}
}

// keyOf is the partial key of rec. It copies the key into a string, the
// one allocation of a fragment.
func (r *reassembly) keyOf(node uint32, snapshot bool, fp uint32, rec *wire.Record) partialKey {
	return partialKey{node: node, snapshot: snapshot, fp: fp, key: string(rec.Key),
		version: knowledge.Version{Stamp: hlc.Stamp(rec.Stamp), Origin: rec.Origin}}
}

// costOf is what a partial of rec's record is charged.
func (r *reassembly) costOf(rec *wire.Record) int {
	return rec.Fragment.Size + len(rec.Key) + partialOverhead
}

// fits reports whether node may begin a partial of cost bytes, after the
// expired partials are dropped (at most once a second) when that is what
// stands in the way.
func (r *reassembly) fits(node uint32, cost int, now time.Time) bool {
	over := func() bool { return r.held+cost > r.limit || r.byNode[node]+cost > r.peerLimit }
	if over() && now.Sub(r.swept) >= time.Second {
		r.expire(now)
	}
	return !over()
}

// onTimers drops the expired partials, if a quarter of the timeout passed
// since they were last looked for: an incomplete record that nothing
// follows is dropped at most 37.5 s after it began.
func (r *reassembly) onTimers(now time.Time) {
	if len(r.partials) > 0 && now.Sub(r.swept) >= r.timeout/4 {
		r.expire(now)
	}
}

// expire drops the partials older than the timeout, oldest first (and
// so in an order that does not depend on the map's, for the log line a
// simulator's replay compares).
func (r *reassembly) expire(now time.Time) {
	r.swept = now
	var old []partialKey
	for k, p := range r.partials {
		if now.Sub(p.began) >= r.timeout {
			old = append(old, k)
		}
	}
	slices.SortFunc(old, func(a, b partialKey) int {
		return cmp.Or(r.partials[a].began.Compare(r.partials[b].began), cmp.Compare(a.node, b.node),
			cmp.Compare(a.fp, b.fp), cmp.Compare(a.key, b.key), cmp.Compare(a.version.Stamp, b.version.Stamp),
			cmp.Compare(a.version.Origin, b.version.Origin), cmp.Compare(boolInt(a.snapshot), boolInt(b.snapshot)))
	})
	for _, k := range old {
		r.drop(k, &r.stats.FragmentsExpired, "dropping an incomplete record: its missing fragments did not arrive in time")
	}
}

// drop forgets the partial k, counting it in c, and logs why (unless
// why is empty) at a limited rate.
func (r *reassembly) drop(k partialKey, c interface{ Add(uint64) uint64 }, why string) {
	p := r.partials[k]
	if p == nil {
		return
	}
	r.release(k, p)
	c.Add(1)
	if why == "" {
		return
	}
	if s, ok := r.lim.allow(reasonFragment); ok {
		r.log.Warn(why, "peer", k.node, "snapshot", k.snapshot, "fingerprint", k.fp, "stamp", k.version.Stamp,
			"origin", k.version.Origin, "chunks", p.got, "of", p.count, "suppressed", s)
	}
}

// release removes the partial k and its charge.
func (r *reassembly) release(k partialKey, p *partial) {
	delete(r.partials, k)
	if r.streams[k.node] == k {
		delete(r.streams, k.node)
	}
	r.held -= p.cost
	if r.byNode[k.node] -= p.cost; r.byNode[k.node] <= 0 {
		delete(r.byNode, k.node)
	}
	r.stats.ReassemblyBytes.Store(uint64(r.held))
}

// bad counts a fragment dropped for what it says, in c, and logs it at a
// limited rate.
func (r *reassembly) bad(c interface{ Add(uint64) uint64 }, node uint32, why string, f *wire.Fragment) {
	c.Add(1)
	if s, ok := r.lim.allow(reasonFragment); ok {
		r.log.Warn(why, "peer", node, "index", f.Index, "count", f.Count, "suppressed", s)
	}
}

// boolInt orders false before true.
func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// buffer returns a value buffer of size bytes, the spare one if it is
// large enough.
func (r *reassembly) buffer(size int) []byte {
	if cap(r.spare) >= size {
		b := r.spare[:size]
		r.spare = nil
		clear(b)
		return b
	}
	return make([]byte, size)
}
