package replication

import (
	"context"
	"math/bits"
	"slices"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/wire"
)

// Digest defaults and limits.
const (
	// DefaultDigestInterval is the period of digest rounds: how often each
	// node reads its maps into digests and compares them with one peer.
	DefaultDigestInterval = 30 * time.Second
	// digestSettle is how long a bucket must have seen no write, on
	// either side, before a difference there counts: a write younger than
	// that may still be on its way (see docs/ARCHITECTURE.md, "Digest
	// rounds").
	digestSettle = 2 * time.Second
	// maxDigestQueries bounds the digests one round sends a peer: 64 kB
	// of a tree's inner buckets, whatever the peer's answers claim.
	maxDigestQueries = 64
	// maxDigestRepairs bounds the bucket repairs one round queues;
	// differences beyond them are found again by the next round.
	maxDigestRepairs = 8
	// repairTries is how often a repair is asked for before it is given
	// up to the next round.
	repairTries = 3
	// digestLeafEntries is about how many entries a leaf bucket of a
	// full map holds (the tree is at most MaxDigestDepth deep).
	digestLeafEntries = 4
	// digestReadBatch is how many entries one read of a map takes (one
	// BPF_MAP_LOOKUP_BATCH).
	digestReadBatch = 1024
)

// DigestNormalizer returns the bytes of a value of the named map that a
// digest compares: value itself, or a copy in dst (of the value's
// length) with the bytes that legitimately differ from node to node
// masked. The fields a map's options name (clock, refresh, local, lock)
// are masked before it is called; nil compares the rest whole.
type DigestNormalizer func(mapName string, dst, value []byte) []byte

// digestValue returns the bytes of a value of m that digests compare:
// without the bytes m's options say differ from node to node by design
// (clock, refresh, local and lock fields: see fields.go), then through
// user's normalizer, if any. dst, of the value's size, may be used.
func digestValue(m *localMap, user DigestNormalizer, dst, v []byte) []byte {
	if p := m.plan; p != nil {
		v = dst[:copy(dst, v)]
		zero(v, p.refresh)
		zero(v, p.local)
		zero(v, p.lock)
		for _, c := range p.clocks {
			clear(v[c.Offset : c.Offset+c.Size])
		}
	}
	if user != nil {
		return user(m.Desc.Name, dst, v)
	}
	return v
}

// digestKeyHash is the hash that places a key in the digest tree: the
// same on every node and in every run (FNV-1a 64, then mixed, since the
// tree is addressed by its high bits).
func digestKeyHash(key []byte) uint64 { return mix64(knowledge.ValueHash(key)) }

// mix64 is SplitMix64's finalizer: every input bit moves every output bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	return x ^ x>>31
}

// entryHash is what one entry adds to its bucket's sum: its key, the
// version known of it and its value, each mixed, so that a change of any
// of them changes the sum.
func entryHash(kh uint64, v knowledge.Version, vh uint64) uint64 {
	return mix64(kh ^ mix64(uint64(v.Stamp)^0x9e3779b97f4a7c15) ^ mix64(uint64(v.Origin)+0x632be59bd9b4e019) ^ mix64(vh+0x2545f4914f6cdd1d))
}

// digestDepth is the depth of the leaves of the digest tree of a map of
// maxEntries: the shallowest with about digestLeafEntries entries a leaf
// when the map is full, at most [wire.MaxDigestDepth].
func digestDepth(maxEntries uint32) int {
	d := 1
	for d < wire.MaxDigestDepth && uint64(maxEntries) > digestLeafEntries<<(wire.DigestBits*d) {
		d++
	}
	return d
}

// digested reports whether a map takes part in digest rounds: not LRU
// maps, which evict by local use (see "LRU evictions"), nor scanned maps
// whose vanished keys stay on the peers: on both, which keys a node holds
// differs by design. A sum map's contribution map does, whatever its
// counters' map: every node holds every contribution; and so does an
// array, whose keys never vanish, whatever its scan's rule.
func digested(m *localMap) bool {
	t := ebpf.MapType(m.Desc.Type)
	switch {
	case m.plan != nil && m.plan.opts.Merge == mapopt.Sum, loader.ArrayType(t):
		return true
	case t == ebpf.LRUHash || t == ebpf.LRUCPUHash:
		return false
	}
	return m.plan == nil || m.plan.opts.Scan == 0 || m.plan.opts.Vanished == mapopt.Delete
}

// digestTree is one map's digests: level d holds the 64^d buckets of d ×
// DigestBits bits of the key's hash; the last level holds the leaves.
type digestTree struct {
	levels [][]wire.DigestChild
}

func newDigestTree(depth int) digestTree {
	t := digestTree{levels: make([][]wire.DigestChild, depth+1)}
	for d := range t.levels {
		t.levels[d] = make([]wire.DigestChild, 1<<(wire.DigestBits*d))
	}
	return t
}

func (t *digestTree) depth() int { return len(t.levels) - 1 }

// leaf returns the leaf of a key of hash kh.
func (t *digestTree) leaf(kh uint64) *wire.DigestChild {
	return &t.levels[t.depth()][kh>>(64-wire.DigestBits*t.depth())]
}

// sum fills the inner levels from the leaves.
func (t *digestTree) sum() {
	for d := t.depth() - 1; d >= 0; d-- {
		up, down := t.levels[d], t.levels[d+1]
		for i := range up {
			var c wire.DigestChild
			for _, x := range down[i*wire.DigestFanout : (i+1)*wire.DigestFanout] {
				c.Sum += x.Sum
				c.Newest = max(c.Newest, x.Newest)
			}
			up[i] = c
		}
	}
}

// children returns the digests of the children of bucket b.
func (t *digestTree) children(b *wire.Bucket) []wire.DigestChild {
	return t.levels[b.Depth+1][int(b.Prefix)*wire.DigestFanout : (int(b.Prefix)+1)*wire.DigestFanout]
}

// digestSet is a node's digests of its maps, from one read of them.
type digestSet struct {
	stamp hlc.Stamp     // the clock when the read began
	trees []digestTree  // by Table.maps index; no levels for a map not digested
	took  time.Duration // how long the read took
}

// digester reads the local maps into digests, once a round, outside the
// receive lock: a read of a large map takes a while.
type digester struct {
	table     *Table
	know      *knowledge.Store
	clock     *hlc.Clock
	normalize DigestNormalizer
	time      Time                      // Config.Time, for how long a read took
	latest    atomic.Pointer[digestSet] // the last complete read
}

// read reads every digested map into a new digest set and keeps it as
// the latest.
func (g *digester) read() (*digestSet, error) {
	began := g.time.Now()
	set := &digestSet{stamp: g.clock.Now(), trees: make([]digestTree, len(g.table.maps))}
	for i := range g.table.maps {
		m := &g.table.maps[i]
		if !digested(m) {
			continue
		}
		t := newDigestTree(digestDepth(m.Desc.MaxEntries))
		if err := g.readMap(m, &t); err != nil {
			return nil, err
		}
		t.sum()
		set.trees[i] = t
	}
	set.took = g.time.Now().Sub(began)
	g.latest.Store(set)
	return set, nil
}

// readMap adds every entry of m to t's leaves, with the version known of
// it, then the newest stamps of the deletes m's knowledge remembers. The
// knowledge lock is taken for the look-ups of each batch only, not over
// its read, as a snapshot's is: a write between the two makes the
// version newer than the value, and its bucket busy (see differ), which
// is all a digest needs; the datapath's writes wait on the lock less.
func (g *digester) readMap(m *localMap, t *digestTree) error {
	var vers []knowledge.Version
	norm := make([]byte, m.valueSize)
	keys, vals := make([]byte, digestReadBatch*m.keySize), make([]byte, digestReadBatch*m.valueSize)
	err := m.Target.Dump(keys, vals, func(ks, vs []byte) error {
		vers = vers[:0]
		h := g.know.Lock()
		for o := 0; o < len(ks); o += m.keySize {
			var v knowledge.Version
			if e := h.Lookup(m.index, ks[o:o+m.keySize]); e != nil && !e.Deleted() && e.Version().Stamp != 0 {
				v = e.Version()
			}
			vers = append(vers, v)
		}
		h.Unlock()
		for j, v := range vers {
			key, val := ks[j*m.keySize:(j+1)*m.keySize], vs[j*m.valueSize:(j+1)*m.valueSize]
			kh := digestKeyHash(key)
			l := t.leaf(kh)
			l.Sum += entryHash(kh, v, knowledge.ValueHash(digestValue(m, g.normalize, norm, val)))
			l.Newest = max(l.Newest, uint64(v.Stamp))
		}
		return nil
	})
	if err != nil {
		return err
	}
	h := g.know.Lock()
	defer h.Unlock()
	for key, e := range h.Tombstones(m.index) {
		l := t.leaf(digestKeyHash(key))
		l.Newest = max(l.Newest, uint64(e.Version().Stamp))
	}
	return nil
}

// differ returns the mask of the children of bucket b whose digests,
// mine and theirs, differ although neither side saw a write there within
// settleFor of the older of the two reads: a write younger than that
// may be on its way to the other side. busy counts those skipped as in
// flight.
func differ(mine, theirs []wire.DigestChild, myStamp, theirStamp hlc.Stamp, settleFor time.Duration) (mask uint64, busy int) {
	cutoff := min(myStamp, theirStamp)
	settle := uint64(settleFor.Milliseconds()) << 16
	for i := range mine {
		if mine[i].Sum == theirs[i].Sum {
			continue
		}
		if newest := max(mine[i].Newest, theirs[i].Newest); newest+settle >= uint64(cutoff) || newest+settle < newest {
			busy++
			continue
		}
		mask |= 1 << i
	}
	return mask, busy
}

// inFilter reports whether a key of hash kh lies under the children f
// selects.
func inFilter(f *wire.BucketFilter, kh uint64) bool {
	child := kh >> (64 - wire.DigestBits*(uint(f.Depth)+1))
	return child>>wire.DigestBits == uint64(f.Prefix) && f.Children&(1<<(child%wire.DigestFanout)) != 0
}

// digestRound is this node's comparison with one peer: the digests it
// sent and awaits answers to, and the buckets found to differ, which the
// resync client repairs one by one with a filtered resync from the peer.
type digestRound struct {
	id      uint32
	peer    *peer
	set     *digestSet
	asked   []wire.Bucket // sent, not answered
	queries int           // digests sent this round
	repairs []wire.BucketFilter
	tries   int // of repairs[0]
	next    uint32
}

// digests is the receive side's part of digest rounds: it starts a round
// with one peer when a new read is in, answers the peers' digests, walks
// down the buckets that differ, and hands the leaves that differ to the
// resync client. It runs under the receive lock.
type digests struct {
	table  *Table
	source *digester
	peers  *peerTable
	client *resyncClient
	gate   *answerGate // what may be sent to each peer's address
	ctl    controlSender
	stats  *Stats
	// upToDate reports whether this node may compare with p: ready and
	// holding every peer's changes (see Node.upToDate).
	upToDate func(p *peer) bool
	round    digestRound
	started  *digestSet // the set the last round started from
	buf      wire.Digest
	settle   time.Duration // digestSettle; shorter in tests
}

// onTimers starts a round when a new read of the maps is in and the last
// round's repairs are done, and the next repair once the resync client is
// free.
func (d *digests) onTimers(now time.Time) {
	r := &d.round
	repairing := len(r.repairs) > 0 || d.client.filtered && d.client.phase != syncIdle
	if set := d.source.latest.Load(); set != nil && set != d.started && !repairing {
		d.started = set
		d.begin(set, now)
	}
	// A peer serves a requester one transfer per transferEvery.
	if len(r.repairs) == 0 || d.client.phase != syncIdle || now.Before(d.client.retryAt) || now.Sub(d.client.since) < transferEvery {
		return
	}
	if r.peer == nil || d.peers.byNode[r.peer.node] != r.peer || r.tries >= repairTries || !d.upToDate(r.peer) {
		r.repairs, r.tries = r.repairs[:0], 0 // given up to the next round
		return
	}
	r.tries++
	d.client.beginFiltered(r.peer, r.repairs[0], now)
}

// repaired takes the repair of repairs[0] as done.
func (d *digests) repaired() {
	r := &d.round
	if len(r.repairs) > 0 {
		r.repairs, r.tries = r.repairs[1:], 0
	}
}

// begin starts a round from set with the next peer in node id order that
// can take part, by sending it the digests of each map's root.
func (d *digests) begin(set *digestSet, now time.Time) {
	r := &d.round
	p := d.pick(r.next, now)
	if p == nil {
		return
	}
	*r = digestRound{id: r.id + 1, peer: p, set: set, asked: r.asked[:0], repairs: r.repairs[:0], next: p.node}
	d.stats.DigestRounds.Add(1)
	for i := range d.table.maps {
		if _, differs := p.mismatch[d.table.maps[i].Desc.Name]; set.trees[i].levels != nil && !differs {
			d.ask(wire.Bucket{Map: d.table.maps[i].fp}, now)
		}
	}
}

// pick returns the peer after node id after that can take part in a
// round, wrapping around; nil if none can.
func (d *digests) pick(after uint32, now time.Time) *peer {
	var first, next *peer
	for _, p := range d.peers.byNode {
		if !p.announced || !p.ready || !d.peers.settled(p, now) || p.needSync || p.stream.paused || !d.upToDate(p) {
			continue
		}
		if first == nil || p.node < first.node {
			first = p
		}
		if p.node > after && (next == nil || p.node < next.node) {
			next = p
		}
	}
	if next != nil {
		return next
	}
	return first
}

// ask sends the round's peer the digests of the children of b: a
// request, within what the gate lets this node send to an address that
// has not proved itself.
func (d *digests) ask(b wire.Bucket, now time.Time) {
	r := &d.round
	m := d.table.byFP[b.Map]
	if r.queries >= maxDigestQueries || m == nil || !d.gate.ask(r.peer, wire.HeaderSize+wire.DigestSize, now) {
		return
	}
	r.queries++
	r.asked = append(r.asked, b)
	g := &d.buf
	g.Bucket, g.Round, g.Stamp = b, r.id, uint64(r.set.stamp)
	copy(g.Children[:], r.set.trees[m.index].children(&b))
	if d.ctl.send(r.peer.addr, wire.KindDigest, 0, 0, g.AppendTo) == nil {
		d.stats.DigestBytes.Add(wire.HeaderSize + wire.DigestSize)
	}
}

// answer compares a peer's digest with this node's latest read and
// tells it which children differ. The answer is smaller than the digest,
// so it cannot be used to amplify; it is paid from the credit the digest
// earned p's address. Without a read of its own yet, or while it is not
// up to date, this node does not answer.
func (d *digests) answer(p *peer, g *wire.Digest) error {
	m := d.table.byFP[g.Map]
	if m == nil || !digested(m) || int(g.Depth) >= digestDepth(m.Desc.MaxEntries) {
		return wire.ErrBadBucket
	}
	d.stats.DigestBytes.Add(wire.HeaderSize + wire.DigestSize)
	set := d.source.latest.Load()
	if set == nil || !d.upToDate(p) {
		return nil
	}
	mask, busy := differ(set.trees[m.index].children(&g.Bucket), g.Children[:], set.stamp, hlc.Stamp(g.Stamp), d.settle)
	d.stats.DigestBusy.Add(uint64(busy))
	diff := wire.DigestDiff{Bucket: g.Bucket, Round: g.Round, Differ: mask}
	if d.gate.spend(p, wire.HeaderSize+wire.DigestDiffSize) && d.ctl.send(p.addr, wire.KindDigestDiff, 0, 0, diff.AppendTo) == nil {
		d.stats.DigestBytes.Add(wire.HeaderSize + wire.DigestDiffSize)
	}
	return nil
}

// differs takes the peer's answer to one of this round's digests: the
// differing children are asked about in turn, down to the leaves, whose
// differences are queued for repair.
func (d *digests) differs(p *peer, g *wire.DigestDiff, now time.Time) error {
	d.stats.DigestBytes.Add(wire.HeaderSize + wire.DigestDiffSize)
	r := &d.round
	i := slices.Index(r.asked, g.Bucket)
	if r.peer != p || g.Round != r.id || i < 0 {
		d.stats.Unsolicited.Add(1) // an answer to an earlier round, or to nothing
		return nil
	}
	r.asked = slices.Delete(r.asked, i, i+1)
	if g.Differ == 0 {
		return nil
	}
	m := d.table.byFP[g.Map]
	leaves := r.set.trees[m.index].depth()
	if int(g.Depth)+1 < leaves {
		// A repair covers at most one bucket two levels above the
		// leaves (see queue), and a round queues at most
		// maxDigestRepairs: asking about more of those buckets would
		// spend the round's digests before any reached the parents of
		// the leaves, and a map differing under all of them was never
		// repaired.
		asks := wire.DigestFanout
		if int(g.Depth)+1 <= leaves-2 {
			asks = maxDigestRepairs
		}
		for mask := g.Differ; mask != 0 && asks > 0; mask &= mask - 1 {
			c := uint32(bits.TrailingZeros64(mask))
			d.ask(wire.Bucket{Map: g.Map, Depth: g.Depth + 1, Prefix: g.Prefix<<wire.DigestBits | c}, now)
			asks--
		}
		return nil
	}
	d.stats.DigestFound.Add(uint64(bits.OnesCount64(g.Differ)))
	d.queue(wire.BucketFilter{Bucket: g.Bucket, Children: g.Differ}, leaves)
	return nil
}

// queue adds a repair of f, of a map whose leaves are at depth leaves,
// to the round's: into a queued one of the same map if both fit under
// one bucket two levels above the leaves (at most 4,096 leaves, about
// 16,000 entries of a full map), since every repair reads the whole map
// on both sides whatever it covers; else as one more, up to
// maxDigestRepairs. The repair under way is left as it is.
func (d *digests) queue(f wire.BucketFilter, leaves int) {
	r := &d.round
	first := 0
	if d.client.phase != syncIdle && d.client.filtered {
		first = 1
	}
	for i := first; i < len(r.repairs); i++ {
		if w, ok := widen(r.repairs[i], f); ok && int(w.Depth) >= leaves-2 {
			r.repairs[i] = w
			return
		}
	}
	if len(r.repairs) < maxDigestRepairs {
		r.repairs = append(r.repairs, f)
	}
}

// widen returns the narrowest filter that selects all a and b select: of
// the deepest bucket both lie under; false for filters of two maps.
func widen(a, b wire.BucketFilter) (wire.BucketFilter, bool) {
	if a.Map != b.Map {
		return wire.BucketFilter{}, false
	}
	up := func(f wire.BucketFilter) wire.BucketFilter {
		return wire.BucketFilter{Bucket: wire.Bucket{Map: f.Map, Depth: f.Depth - 1, Prefix: f.Prefix >> wire.DigestBits},
			Children: 1 << (f.Prefix % wire.DigestFanout)}
	}
	for a.Depth > b.Depth {
		a = up(a)
	}
	for b.Depth > a.Depth {
		b = up(b)
	}
	for a.Prefix != b.Prefix {
		a, b = up(a), up(b)
	}
	return wire.BucketFilter{Bucket: a.Bucket, Children: a.Children | b.Children}, true
}

// filter decodes the bucket filter of a sync request into f, refusing a
// map without a digest tree here and a bucket below its leaves.
func (d *digests) filter(f *wire.BucketFilter, body []byte) error {
	if err := f.Unmarshal(body); err != nil {
		return err
	}
	if m := d.table.byFP[f.Map]; m == nil || !digested(m) || int(f.Depth) >= digestDepth(m.Desc.MaxEntries) {
		return wire.ErrBadBucket
	}
	return nil
}

// readDigests reads the maps into digests every digest interval, once
// the node is ready, until ctx is done; the timers start a round with
// each new read (see digests.onTimers).
func (n *Node) readDigests(ctx context.Context) error {
	if n.digestEvery <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(n.digestEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		n.ReadDigests()
	}
}
