package replication

import (
	"cmp"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// Full resync, receiving side. See "Full resync" in docs/ARCHITECTURE.md.
const (
	// syncRequestRetry is how often a request is repeated until the peer
	// answers it.
	syncRequestRetry = 200 * time.Millisecond
	// syncStall abandons a resync that made no progress for this long; it
	// is asked for again after syncRetryWait.
	syncStall     = 3 * time.Second
	syncRetryWait = 500 * time.Millisecond
	// syncAckEvery is how many snapshot datagrams arrive between two
	// acknowledgements; syncAckIdle is the longest time between two while
	// datagrams arrive or some are missing.
	syncAckEvery = 32
	syncAckIdle  = 20 * time.Millisecond
)

type syncPhase uint8

const (
	syncIdle      syncPhase = iota
	syncRequested           // the request is sent, the peer's change datagrams are held
	syncStreaming           // the snapshot arrives; live changes are applied and win
)

// resyncClient is the one full resync this node receives at a time: it
// picks a peer to ask, holds that peer's stream until the answer says
// where the snapshot stands, applies the snapshot, and acknowledges it.
// Snapshot datagram numbers are taken only within [transferWindow] of
// what has arrived in order, so no datagram can size its state.
type resyncClient struct {
	time  Time
	rand  io.Reader // request ids
	peers *peerTable
	apply *applier
	know  *knowledge.Store
	clock *hlc.Clock
	relay *relayQueue
	ctl   controlSender
	gate  *answerGate
	ready *readiness
	stats *Stats
	log   *slog.Logger
	limit *limiter
	node  uint32

	phase   syncPhase
	from    *peer
	owed    bool // from's changes were lost: this is not only the initial sync
	partial bool // from lacks changes of other peers (wire.SyncPartial)
	// delta, unless 0, asks from for a delta resync: this node applied
	// every change datagram of its before delta (see begin).
	delta   uint64
	id      uint32 // of the current request; the next is id+1
	start   wire.SyncStart
	since   time.Time // the phase began
	sent    time.Time // the last request or acknowledgement
	moved   time.Time // the last new snapshot datagram
	retryAt time.Time // while idle: do not ask before
	// doneFrom is the peer of the last resync completed, whose end
	// datagram is acknowledged again if the last acknowledgement was lost.
	doneFrom *peer

	got      snapshotWindow
	total    uint32    // the last datagram's number, from the end datagram
	ended    bool      // the end datagram arrived
	unacked  int       // datagrams since the last acknowledgement
	received uint64    // snapshot records taken
	logged   time.Time // the last progress line
	ack      wire.Nack
	// empty marks the local maps (by Table.maps index) that held nothing
	// when the snapshot began: all they hold at its end came from the peer
	// or was written, and so sent, since; they need no reading back.
	empty []bool

	// filtered: this resync repairs only the buckets of filter, which a
	// digest round found to differ (see digests); repaired is called when
	// it completes.
	filtered  bool
	filter    wire.BucketFilter
	repaired  func()
	normalize DigestNormalizer
}

// snapshotWindow is the set of snapshot datagram numbers received: every
// one up to cum, and a bitmap of the window after it.
type snapshotWindow struct {
	cum  uint32 // every datagram up to cum has arrived
	high uint32 // the highest one that has
	bits [transferWindow / 64]uint64
}

// mark records datagram n and reports whether it is new. A number past
// the window is refused as well: the server never sends one.
func (w *snapshotWindow) mark(n uint32) bool {
	if n <= w.cum || n-w.cum > transferWindow || w.has(n) {
		return false
	}
	w.bits[n/64%uint32(len(w.bits))] |= 1 << (n % 64)
	w.high = max(w.high, n)
	for w.cum < w.high && w.has(w.cum+1) {
		w.cum++
		w.bits[w.cum/64%uint32(len(w.bits))] &^= 1 << (w.cum % 64)
	}
	return true
}

func (w *snapshotWindow) has(n uint32) bool {
	if n <= w.cum {
		return true
	}
	return n-w.cum <= transferWindow && w.bits[n/64%uint32(len(w.bits))]&(1<<(n%64)) != 0
}

// missing adds the numbers after cum up to high that have not arrived.
func (w *snapshotWindow) missing(req *wire.Nack) {
	for i := uint32(1); i <= w.high-w.cum; i++ {
		n := w.cum + i
		if w.has(n) {
			continue
		}
		first := n
		for i < w.high-w.cum && !w.has(n+1) {
			i++
			n++
		}
		if !req.Add(uint64(first), uint64(n)) {
			return
		}
	}
}

// ResyncStatus is the full resync this node is receiving.
type ResyncStatus struct {
	Peer      uint32    // the node serving it
	Streaming bool      // the snapshot arrives; false while the request waits for an answer
	Since     time.Time // the request, or the start of the snapshot
	Entries   uint64    // snapshot entries applied so far
	Datagrams uint32    // snapshot datagrams received in order so far
}

// status reports the full resync under way, if any: a digest repair is
// none.
func (c *resyncClient) status() *ResyncStatus {
	if !c.busy() {
		return nil
	}
	return &ResyncStatus{Peer: c.from.node, Streaming: c.phase == syncStreaming, Since: c.since,
		Entries: c.received, Datagrams: c.got.cum}
}

// busy reports whether a full resync is under way: a node that is itself
// catching up serves no snapshots. A repair of a few buckets is no
// catching up.
func (c *resyncClient) busy() bool { return c.phase != syncIdle && !c.filtered }

// onTimers drives the resync from the timers: it asks for a snapshot when one
// is needed, repeats requests and acknowledgements, abandons a stalled
// transfer, and decides readiness when no peer can serve the initial sync.
func (c *resyncClient) onTimers(now time.Time) {
	switch c.phase {
	case syncRequested:
		if now.Sub(c.since) >= syncStall {
			c.from.passOver = now.Add(syncSourceBackoff)
			c.abandon(now, "the peer did not answer the request")
		} else if now.Sub(c.sent) >= syncRequestRetry {
			c.sendRequest(now)
		}
		return
	case syncStreaming:
		if now.Sub(c.moved) >= syncStall {
			c.abandon(now, "the snapshot stopped arriving")
		} else if now.Sub(c.sent) >= syncAckIdle && (c.unacked > 0 || c.got.cum < c.got.high || !c.ended) {
			c.sendAck(now)
		}
		return
	}
	if now.Before(c.retryAt) {
		return
	}
	if p := c.source(now); p != nil {
		c.begin(p, now)
		return
	}
	if !c.ready.isReady() {
		c.prove(now)
	}
	if !c.ready.isReady() && c.ready.waited(now) {
		switch {
		case len(c.peers.byNode) == 0:
			c.ready.become("no peer heard: this node's maps are the group's state", 0)
		case c.peers.anyReady():
			// Not trusted yet (heard too recently, or passed over): it
			// serves the initial sync once it is.
		case c.node < c.peers.lowest():
			c.ready.become("no ready peer heard; the lowest node id seeds the others", len(c.peers.byNode))
		}
	}
}

// prove sends a cookie to every ready peer that is not established yet
// for want of being heard long enough: once its address echoes it, the
// peer serves this node its initial sync at once instead of after two
// announce intervals (see [peerTable.established]).
func (c *resyncClient) prove(now time.Time) {
	for _, p := range c.peers.inOrder() {
		if p.announced && p.ready && !p.addrProven() && c.peers.settled(p, now) {
			c.gate.challenge(p, now)
		}
	}
}

// source picks the peer to resync from: one whose changes were lost
// beyond repair, else, for the initial sync, a ready one; only a peer
// established (heard for a while, see [peerTable.established]), and for
// the initial sync trusted (see [peerTable.trusted]). A peer whose
// announce says it is not ready is not asked for a resync it owes: it
// would refuse, and, asked first for ever, would starve the resyncs owed
// by the others. The lowest node id wins, so every choice is the same on
// every run.
func (c *resyncClient) source(now time.Time) *peer {
	var best *peer
	for _, p := range c.peers.byNode {
		owed := p.needSync && c.peers.established(p, now) && (p.ready || !p.announced)
		want := owed || !c.ready.isReady() && c.peers.trusted(p, now)
		if want && (best == nil || p.needSync && !best.needSync || p.needSync == best.needSync && p.node < best.node) {
			best = p
		}
	}
	return best
}

// begin asks p for a snapshot of its maps. From now on p's change
// datagrams are held until the answer says where the snapshot stands.
// A ready node that gave up p's datagrams, and owes p nothing else, asks
// for a delta: what p's stream carried from the first datagram not
// applied here on (the first given up without being applied, else the
// next), the same result as if nothing had been lost.
func (c *resyncClient) begin(p *peer, now time.Time) {
	c.prepare(p, now)
	c.owed = p.needSync
	p.needSync = false
	if c.owed && !p.full && c.ready.isReady() {
		c.delta = cmp.Or(p.stream.lostFrom, p.stream.next)
	}
	if c.delta != 0 {
		c.log.Info("requesting a delta resync", "peer", p.node, "addr", p.addr, "request", c.id, "from", c.delta)
	} else {
		c.log.Info("requesting a full resync", "peer", p.node, "addr", p.addr, "request", c.id)
	}
	c.sendRequest(now)
}

// beginFiltered asks p for the entries under the buckets of f only: the
// same two-way merge as a full resync, of a part of one map. A full
// resync p owes stays owed.
func (c *resyncClient) beginFiltered(p *peer, f wire.BucketFilter, now time.Time) {
	c.prepare(p, now)
	c.filtered, c.filter, c.apply.comparing = true, f, true
	c.sendRequest(now)
}

// prepare starts a new request to p: from now on p's change datagrams
// are held until the answer says where the snapshot stands.
func (c *resyncClient) prepare(p *peer, now time.Time) {
	if c.id == 0 {
		var b [4]byte
		_, _ = io.ReadFull(c.rand, b[:]) // a short read leaves zeros: ids still differ by one a request
		c.id = binary.BigEndian.Uint32(b[:])
	}
	c.id++
	if c.id == 0 {
		c.id = 1
	}
	c.reset()
	c.phase, c.from, c.since = syncRequested, p, now
	p.stream.paused = true
}

// reset clears the state of one resync, keeping the request id.
func (c *resyncClient) reset() {
	if c.from != nil {
		c.apply.reasm.forget(c.from.node, true) // what a snapshot left incomplete, it never completes
	}
	c.phase, c.from, c.owed, c.partial, c.delta = syncIdle, nil, false, false, 0
	c.start, c.got, c.total, c.ended, c.unacked, c.received = wire.SyncStart{}, snapshotWindow{}, 0, false, 0, 0
	c.apply.marking, c.apply.comparing, c.apply.taken = 0, false, 0
	for i := range c.apply.same {
		c.apply.same[i].reset()
	}
	c.filtered = false
}

func (c *resyncClient) sendRequest(now time.Time) {
	c.sent = now
	var body func([]byte) ([]byte, error)
	size := wire.HeaderSize
	switch {
	case c.filtered:
		body, size = c.filter.AppendTo, wire.HeaderSize+wire.BucketFilterSize
	case c.delta != 0:
		body = func(b []byte) ([]byte, error) { return wire.AppendSyncDelta(b, c.delta), nil }
		size = wire.HeaderSize + wire.SyncDeltaSize
	}
	if c.gate.ask(c.from, size, now) {
		_ = c.ctl.send(c.from.addr, wire.KindSyncRequest, 0, wire.SyncSeq(c.id, 0), body)
	}
}

// again sends the request again at once if p is the peer it waits for:
// p sent a cookie instead of an answer, or its address proved itself.
func (c *resyncClient) again(p *peer, now time.Time) {
	if c.phase == syncRequested && c.from == p {
		c.sendRequest(now)
	}
}

// started takes p's answer to the request.
func (c *resyncClient) started(p *peer, h *wire.Header, body []byte, now time.Time) error {
	id, _ := wire.SplitSyncSeq(h.Seq)
	if c.phase != syncRequested || c.from != p || id != c.id {
		return nil // an answer to a request given up on
	}
	var st wire.SyncStart
	if err := st.Unmarshal(body); err != nil {
		return err
	}
	if st.Status != wire.SyncOK && st.Status != wire.SyncPartial {
		if st.Status == wire.SyncNotReady {
			p.ready = false
		}
		c.abandon(now, map[uint8]string{wire.SyncNotReady: "the peer is not ready itself", wire.SyncBusy: "the peer is busy"}[st.Status])
		return nil
	}
	if !p.stream.plausibleAsOf(st.AsOf) || st.AsOf > wire.MaxSeq {
		c.abandon(now, "the peer's answer names a sequence number it cannot have sent")
		return errImplausible
	}
	// The stamp dates the deletes inferred at the end (see pushBack): one
	// from the future would make them beat every later write.
	if hlc.Stamp(st.Stamp) > c.clock.Limit() {
		c.abandon(now, "the peer's answer is stamped further ahead of this node's clock than hlc.MaxSkew")
		return errImplausible
	}
	// A delta only if one was asked for, from no later than the answer.
	if st.Since != 0 && (c.delta == 0 || st.Since > st.Stamp) {
		c.abandon(now, "the peer's answer is a delta that was not asked for, or from after its own stamp")
		return errImplausible
	}
	c.phase, c.start, c.since, c.moved, c.logged = syncStreaming, st, now, now, now
	c.partial = st.Status == wire.SyncPartial
	// From here on, p's records mark the keys p knows (see finish).
	c.apply.applyRuns()
	kh := c.know.Lock()
	c.apply.marking, c.apply.gen = p.node, kh.NextGen()
	c.empty = c.empty[:0]
	for i := range c.apply.table.maps {
		m := &c.apply.table.maps[i]
		c.empty = append(c.empty, !loader.ArrayType(ebpf.MapType(m.Desc.Type)) && isEmpty(m))
		// Room for what the snapshot brings, at once rather than growing
		// through it; at most the map's size, whatever the peer claims.
		if !c.filtered && st.Since == 0 {
			kh.Reserve(i, int(min(st.Entries, uint64(m.Desc.MaxEntries))))
		}
	}
	kh.Unlock()
	// The snapshot holds every change up to AsOf: the held datagrams up to
	// there are dropped, the later ones applied, as live changes.
	p.stream.resume(st.AsOf)
	return nil
}

// snapshot applies one datagram of the snapshot: the records newer than
// what this node knows of their keys.
func (c *resyncClient) snapshot(p *peer, h *wire.Header, body []byte, now time.Time) error {
	id, n := wire.SplitSyncSeq(h.Seq)
	if c.phase != syncStreaming || c.from != p || id != c.id || n == 0 {
		return nil
	}
	if c.got.has(n) {
		c.stats.Duplicates.Add(1)
		return nil
	}
	if n-c.got.cum > transferWindow {
		return errImplausible
	}
	got, err := c.apply.collect(p.node, body, h.Count, true)
	if err != nil {
		return err
	}
	c.got.mark(n)
	c.received += uint64(got)
	c.moved = now
	c.unacked++
	if c.unacked >= syncAckEvery || n > c.got.cum+1 && now.Sub(c.sent) >= syncAckIdle {
		c.sendAck(now)
	}
	c.progress(now)
	c.finish(now)
	return nil
}

// progressEvery is the period of a long resync's progress lines.
const progressEvery = 5 * time.Second

// progress logs how far a long resync came.
func (c *resyncClient) progress(now time.Time) {
	if now.Sub(c.logged) < progressEvery {
		return
	}
	c.logged = now
	took := now.Sub(c.since)
	rate := float64(c.received) / took.Seconds()
	attrs := []any{"peer", c.from.node, "entries", c.received, "rate_per_s", int64(rate), "took", took.Round(time.Second)}
	if c.start.Entries > c.received && rate > 0 {
		left := time.Duration(float64(c.start.Entries-c.received) / rate * float64(time.Second))
		attrs = append(attrs, "of_about", c.start.Entries, "left", left.Round(time.Second))
	}
	c.log.Info("full resync in progress", attrs...)
}

// end takes the number of the snapshot's last datagram.
func (c *resyncClient) end(p *peer, h *wire.Header, body []byte, now time.Time) error {
	if len(body) > 0 || h.Count > 0 {
		return wire.ErrBadLength
	}
	id, n := wire.SplitSyncSeq(h.Seq)
	if c.phase == syncIdle && c.doneFrom == p && id == c.id {
		if c.gate.ask(p, wire.HeaderSize, now) {
			_ = c.ctl.send(p.addr, wire.KindSyncAck, 0, wire.SyncSeq(id, n+1), nil)
		}
		return nil
	}
	if c.phase != syncStreaming || c.from != p || id != c.id {
		return nil
	}
	if n < c.got.high || n-c.got.cum > transferWindow {
		return errImplausible
	}
	c.total, c.ended, c.moved = n, true, now
	c.got.high = n
	c.sendAck(now)
	c.finish(now)
	return nil
}

// sendAck tells the peer how far the snapshot arrived, and which
// datagrams after that are missing.
func (c *resyncClient) sendAck(now time.Time) {
	c.sent, c.unacked = now, 0
	c.ack = wire.Nack{Node: c.from.node, Epoch: c.from.epoch}
	c.got.missing(&c.ack)
	// Once the end has arrived too, the acknowledgement counts it as one
	// more datagram, so the peer can tell "all of it" from "all so far".
	cum := c.got.cum
	if c.ended && c.got.cum >= c.total {
		cum = c.total + 1
	}
	if c.gate.ask(c.from, nackSize(&c.ack), now) {
		_ = c.ctl.nack(c.from.addr, wire.KindSyncAck, wire.SyncSeq(c.id, cum), &c.ack)
	}
}

// finish completes the resync once every datagram up to the last has
// arrived. The snapshot was merged record by record; what is left is the
// other direction: every entry and delete this node holds that the peer
// did not carry, or carried older, goes back to the group in this node's
// change stream. Nothing is deleted that the peer did not delete later.
func (c *resyncClient) finish(now time.Time) {
	if !c.ended || c.got.cum < c.total {
		return
	}
	p := c.from
	c.sendAck(now)
	c.apply.applyRuns()
	pushed := c.pushBack(p)
	c.stats.SyncPushed.Add(uint64(pushed))
	if c.filtered {
		healed := uint64(pushed + c.reconcile(p, now) + c.apply.taken)
		c.stats.DigestRepairs.Add(1)
		c.stats.DigestHealed.Add(healed)
		c.log.Info("digest repair complete", "peer", p.node, "map", c.apply.table.byFP[c.filter.Map].Desc.Name,
			"entries", c.received, "healed", healed, "took", now.Sub(c.since).Round(time.Millisecond))
		c.reset()
		c.doneFrom = p
		c.repaired()
		return
	}
	c.stats.ResyncsReceived.Add(1)
	c.stats.SyncEntries.Add(c.received)
	p.resyncs++
	kind := "full"
	if c.start.Since != 0 {
		kind = "delta"
		c.stats.ResyncsDelta.Add(1)
	} else {
		p.full = false
	}
	c.log.Info(kind+" resync complete", "peer", p.node, "entries", c.received, "sent_back", pushed,
		"datagrams", c.total, "took", now.Sub(c.since).Round(time.Millisecond), "partial", c.partial)
	if c.partial {
		// What p lacked of the others, each of them holds: their streams
		// here began after it, so only a full resync from each brings it.
		for _, q := range c.peers.byNode {
			if q != p {
				q.needSync, q.full = true, true
			}
		}
	}
	c.reset()
	c.doneFrom = p
	if !c.ready.isReady() {
		c.ready.become("received a full resync from a ready peer", len(c.peers.byNode))
	}
}

// pushBack completes the merge with p once its snapshot is in: every
// local entry p did not carry goes to the sender with its version, an
// unstamped one stamped now as a write of this node's, and so do the
// entries and deletes p carried in an older version. A key p did not
// carry whose latest write known here is p's own, p deleted: it is
// deleted here as p's delete at the start's stamp. It returns how many
// entries it sent back.
//
// After a delta, only what p carried older goes back, and the deletes
// remembered here since the delta's stamp that p did not carry: what p's
// stream would have met here had nothing been lost. Nothing is deleted
// but by the deletes p carried: it sent only what changed since.
func (c *resyncClient) pushBack(p *peer) int {
	k, gen, pushed := c.know, c.apply.gen, 0
	for i := range c.apply.table.maps {
		m := &c.apply.table.maps[i]
		if c.filtered && m.fp != c.filter.Map {
			continue
		}
		if c.empty[i] || c.start.Since != 0 {
			pushed += c.pushTombstones(i, gen)
			pushed += c.pushNewer(m)
			continue
		}
		var deleted []byte
		err := k.ReadMap(m.Target, m.keySize, m.valueSize, func(h knowledge.Held, ks, vs []byte) {
			now := c.time.Now()
			for o := 0; o*m.keySize < len(ks); o++ {
				key, val := ks[o*m.keySize:(o+1)*m.keySize], vs[o*m.valueSize:(o+1)*m.valueSize]
				if c.filtered && !inFilter(&c.filter, digestKeyHash(key)) {
					continue
				}
				e := h.Lookup(i, key)
				switch {
				case e != nil && (e.Gen() == gen || e.Deleted()):
					continue // carried; or a local write not yet read recreated it
				case e != nil && e.Version().Origin == p.node && e.Version().Stamp < hlc.Stamp(c.start.Stamp):
					deleted = append(deleted, key...)
					continue
				}
				v := h.Current(i, key, val, now)
				if h.Blank(i, v, val) {
					continue // an array's zeros nobody wrote: nothing to send
				}
				if v.Stamp == 0 { // unknown to the peer and unstamped here: this node's write
					v = knowledge.Version{Stamp: c.clock.At(now), Origin: c.node}
					h.Set(h.Put(i, key), i, key, v, false, true, now) // read from the map: see knowledge.Held.Set
				}
				c.relay.add(i, ops.Update, v, key, val)
				pushed++
			}
		}, nil)
		pushed += c.pushTombstones(i, gen)
		if err != nil {
			c.stats.ApplyErrors.Add(1)
			if n, ok := c.limit.allow(reasonSync); ok {
				c.log.Error("full resync: cannot read the local map to send back what the peer lacks", "peer", p.node,
					"map", m.Desc.Name, "error", err, "suppressed", n)
			}
		}
		pushed += c.pushNewer(m)
		c.deleteAs(p, m, deleted)
	}
	return pushed
}

// isEmpty reports whether m holds no entry; a map it cannot read counts
// as not empty.
func isEmpty(m *localMap) bool {
	empty := true
	keys, vals := make([]byte, m.keySize), make([]byte, m.valueSize) // one entry
	err := m.Target.Dump(keys, vals, func(ks, _ []byte) error {
		empty = len(ks) == 0
		return errStopDump
	})
	return empty && (err == nil || errors.Is(err, errStopDump))
}

var errStopDump = errors.New("stop")

// pushNewer sends back the entries of m that p carried in an older
// version than this node's, as noted while the snapshot arrived. An
// entry's value goes at its current version: after a capture loss, one
// recorded before it is stamped anew, since the map may hold a lost
// write of this node's over another's value (see [knowledge.Held.Current]).
func (c *resyncClient) pushNewer(m *localMap) int {
	k, keys, pushed := c.know, c.apply.newerHere[m.index], 0
	c.apply.newerHere[m.index] = keys[:0]
	val := make([]byte, m.valueSize)
	now := c.time.Now()
	h := k.Lock()
	defer h.Unlock()
	for o := 0; o < len(keys); o += m.keySize {
		key := keys[o : o+m.keySize]
		e := h.Lookup(m.index, key)
		if e == nil || e.Version().Stamp == 0 {
			continue // unstamped: never newer than what the peer carried
		}
		if e.Deleted() {
			c.relay.add(m.index, ops.Delete, e.Version(), key, nil)
			pushed++
			continue
		}
		// Read under the lock, so the value is at least as new as the
		// version; a failed read leaves it to the next write, and so does
		// an empty one (a delete the capture has yet to deliver), unless
		// changes were lost since the version: then the delete may be
		// among them, and is sent as a new one.
		found, err := m.Target.Lookup(key, val)
		switch {
		case err != nil:
		case found:
			c.relay.add(m.index, ops.Update, h.Current(m.index, key, val, now), key, val)
			pushed++
		case digested(m) && e.Version().Stamp < h.SuspectBefore():
			c.deletedUnseen(h, m, e, key, now)
			pushed++
		}
	}
	return pushed
}

// deletedUnseen records and sends a delete of key, which the knowledge
// holds (in e) and the map of m no longer does, as a new write of this
// node's: no capture saw the delete, or the capture lost it. Never for
// a map that evicts (see [digested]), where keys vanish unseen by design.
func (c *resyncClient) deletedUnseen(h knowledge.Held, m *localMap, e *knowledge.Entry, key []byte, now time.Time) {
	w := knowledge.Version{Stamp: c.clock.At(now), Origin: c.node}
	h.Set(e, m.index, key, w, true, true, now) // read from the map: see knowledge.Held.Set
	c.relay.add(m.index, ops.Delete, w, key, nil)
}

// deleteAs applies the deletes of keys of m that p made before its
// answer's stamp, found missing from its snapshot.
func (c *resyncClient) deleteAs(p *peer, m *localMap, keys []byte) {
	v := knowledge.Version{Stamp: hlc.Stamp(c.start.Stamp), Origin: p.node}
	for o := 0; o < len(keys); o += m.keySize {
		c.apply.add(p.node, m, ops.Delete, v, keys[o:o+m.keySize], nil, true)
	}
	c.apply.applyRuns()
}

// pushTombstones queues the remembered deletes of map index i that the
// snapshot did not mark (of a delta, those stamped since it).
func (c *resyncClient) pushTombstones(i int, gen uint8) int {
	pushed := 0
	h := c.know.Lock()
	defer h.Unlock()
	for key, e := range h.Tombstones(i) {
		if e.Gen() != gen && (!c.filtered || inFilter(&c.filter, digestKeyHash(key))) && e.Version().Stamp >= hlc.Stamp(c.start.Since) {
			c.relay.add(i, ops.Delete, e.Version(), key, nil)
			pushed++
		}
	}
	return pushed
}

// abandon gives up on the current resync; it is asked for again, of the
// same or another peer, after syncRetryWait. What the peer had sent and
// was held is applied.
func (c *resyncClient) abandon(now time.Time, why string) {
	p := c.from
	// Ask this peer again, unless this was a request for the initial
	// sync that the peer did not take up: another ready peer may. A
	// repair of buckets is the digest round's to ask for again.
	if c.filtered {
		c.log.Debug("digest repair abandoned; the digest round asks again", "peer", p.node, "reason", why)
		c.reset()
		c.retryAt = now.Add(syncRetryWait)
		p.stream.paused = false
		return
	}
	p.needSync = c.owed || c.ready.isReady() || c.phase != syncRequested
	if n, ok := c.limit.allow(reasonSync); ok {
		c.log.Warn("full resync abandoned; asking again", "peer", p.node, "reason", why,
			"retry_in", syncRetryWait, "suppressed", n)
	}
	c.reset()
	c.retryAt = now.Add(syncRetryWait)
	p.stream.paused = false
}

// forget drops a resync from p, which restarted or is gone.
func (c *resyncClient) forget(p *peer, now time.Time) {
	if c.phase != syncIdle && c.from == p {
		c.abandon(now, "the peer restarted or went silent")
		p.needSync = false
	}
	if c.doneFrom == p {
		c.doneFrom = nil
	}
}
