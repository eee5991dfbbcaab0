package replication

import (
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/cilium/ebpf"

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
	// dumpBatch is how many entries one BPF_MAP_LOOKUP_BATCH reads.
	dumpBatch = 1024
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
	peers *peerTable
	apply *applier
	own   ownStream // this node's sealed datagrams, replayed over a snapshot
	ctl   controlSender
	ready *readiness
	stats *Stats
	log   *slog.Logger
	limit *limiter
	node  uint32

	phase   syncPhase
	from    *peer
	owed    bool   // from's changes were lost: this is not only the initial sync
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
	total    uint32 // the last datagram's number, from the end datagram
	ended    bool   // the end datagram arrived
	unacked  int    // datagrams since the last acknowledgement
	received uint64 // snapshot entries applied
	ack      wire.Nack

	// keys holds, per local map, every key the snapshot carried (false)
	// and every key a live change touched while the resync ran (true):
	// a live change is newer than the snapshot, so the snapshot's record
	// for a touched key is skipped, and neither kind is deleted at the end.
	keys []map[string]bool
}

// ownStream is this node's own sealed change datagrams, which a resync
// replays over the snapshot when the serving peer had not applied them
// yet. [*resendBuffer] implements it.
type ownStream interface {
	held() (first, last uint64, ok bool)
	copyOut(seq uint64, dst []byte) ([]byte, bool)
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

// status reports the resync under way, if any.
func (c *resyncClient) status() *ResyncStatus {
	if c.phase == syncIdle {
		return nil
	}
	return &ResyncStatus{Peer: c.from.node, Streaming: c.phase == syncStreaming, Since: c.since,
		Entries: c.received, Datagrams: c.got.cum}
}

// busy reports whether a resync is under way: a node that is itself
// catching up serves no snapshots.
func (c *resyncClient) busy() bool { return c.phase != syncIdle }

// holds reports whether p's stream waits for the answer to a request.
func (c *resyncClient) holds(p *peer) bool { return c.phase == syncRequested && c.from == p }

// tick drives the resync from the timer: it asks for a snapshot when one
// is needed, repeats requests and acknowledgements, abandons a stalled
// transfer, and decides readiness when no peer can serve the initial sync.
func (c *resyncClient) tick(now time.Time) {
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

// source picks the peer to resync from: one whose changes were lost
// beyond repair, else, for the initial sync, a ready one; only a peer
// established (heard for a while, see [peerTable.established]), and for
// the initial sync trusted (see [peerTable.trusted]). The
// lowest node id wins, so every choice is the same on every run.
func (c *resyncClient) source(now time.Time) *peer {
	var best *peer
	for _, p := range c.peers.byNode {
		want := p.needSync && c.peers.established(p, now) || !c.ready.isReady() && c.peers.trusted(p, now)
		if want && (best == nil || p.needSync && !best.needSync || p.needSync == best.needSync && p.node < best.node) {
			best = p
		}
	}
	return best
}

// begin asks p for a snapshot of its maps. From now on p's change
// datagrams are held until the answer says where the snapshot stands,
// and every live change marks its key as newer than the snapshot.
func (c *resyncClient) begin(p *peer, now time.Time) {
	if c.id == 0 {
		c.id = rand.Uint32()
	}
	c.id++
	if c.id == 0 {
		c.id = 1
	}
	c.reset()
	c.phase, c.from, c.owed, c.since = syncRequested, p, p.needSync, now
	for range c.apply.table.maps {
		c.keys = append(c.keys, make(map[string]bool))
	}
	p.needSync = false
	p.stream.paused = true
	c.log.Info("requesting a full resync", "peer", p.node, "addr", p.addr, "request", c.id)
	c.sendRequest(now)
}

// reset clears the state of one resync, keeping the request id.
func (c *resyncClient) reset() {
	c.phase, c.from, c.owed = syncIdle, nil, false
	c.start, c.got, c.total, c.ended, c.unacked, c.received = wire.SyncStart{}, snapshotWindow{}, 0, false, 0, 0
	c.keys = c.keys[:0]
}

func (c *resyncClient) sendRequest(now time.Time) {
	c.sent = now
	_ = c.ctl.send(c.from.addr, wire.KindSyncRequest, 0, wire.SyncSeq(c.id, 0), nil)
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
	if st.Status != wire.SyncOK {
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
	c.phase, c.start, c.since, c.moved = syncStreaming, st, now, now
	// The snapshot holds every change up to AsOf: the held datagrams up to
	// there are dropped, the later ones applied, as live changes.
	p.stream.resume(st.AsOf)
	return nil
}

// snapshot applies one datagram of the snapshot: its records, except for
// keys a live change touched meanwhile.
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
	got, err := c.apply.collect(p.node, body, h.Count, c)
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
	c.finish(now)
	return nil
}

// keep takes a snapshot record unless a live change touched its key, and
// marks the key as carried by the snapshot.
func (c *resyncClient) keep(m *localMap, key []byte) bool {
	keys := c.keys[m.index]
	if keys[string(key)] {
		return false
	}
	keys[string(key)] = false
	return true
}

// touch marks the keys of a live change as newer than the snapshot being
// received, if one is.
func (c *resyncClient) touch(m *localMap, keys []byte) {
	if c.phase == syncIdle {
		return
	}
	set := c.keys[m.index]
	for o := 0; o < len(keys); o += m.keySize {
		set[string(keys[o:o+m.keySize])] = true
	}
}

// end takes the number of the snapshot's last datagram.
func (c *resyncClient) end(p *peer, h *wire.Header, body []byte, now time.Time) error {
	if len(body) > 0 || h.Count > 0 {
		return wire.ErrBadLength
	}
	id, n := wire.SplitSyncSeq(h.Seq)
	if c.phase == syncIdle && c.doneFrom == p && id == c.id {
		_ = c.ctl.send(p.addr, wire.KindSyncAck, 0, wire.SyncSeq(id, n+1), nil)
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
	_ = c.ctl.nack(c.from.addr, wire.KindSyncAck, wire.SyncSeq(c.id, cum), &c.ack)
}

// finish completes the resync once every datagram up to the last has
// arrived: entries the snapshot does not hold are deleted, unless a live
// change touched them, and this node's own changes that the peer had not
// applied when it read its maps are applied again on top.
func (c *resyncClient) finish(now time.Time) {
	if !c.ended || c.got.cum < c.total {
		return
	}
	p := c.from
	c.sendAck(now)
	replayFrom, replayOK := c.ownSince(c.start.Applied)
	deleted := 0
	if replayOK {
		deleted = c.deleteAbsent(p)
	} else if n, ok := c.limit.allow(reasonSync); ok {
		c.log.Warn("not deleting entries missing from the snapshot: this node's changes since the peer last applied them "+
			"are no longer in the resend buffer, and deleting could lose them; raise the resend buffer size (--resend-buffer)",
			"peer", p.node, "peer_applied", c.start.Applied, "suppressed", n)
	}
	replayed := c.replayOwn(p, replayFrom)
	c.stats.ResyncsReceived.Add(1)
	p.resyncs++
	c.stats.SyncDeleted.Add(uint64(deleted))
	c.log.Info("full resync complete", "peer", p.node, "entries", c.received, "deleted", deleted,
		"own_changes_reapplied", replayed, "datagrams", c.total, "took", now.Sub(c.since).Round(time.Millisecond))
	c.reset()
	c.doneFrom = p
	if !c.ready.isReady() {
		c.ready.become("received a full resync from a ready peer", len(c.peers.byNode))
	}
}

// ownSince returns the first of this node's own change datagrams after
// applied, and whether the resend buffer still holds every one from
// there on.
func (c *resyncClient) ownSince(applied uint64) (uint64, bool) {
	first, last, ok := c.own.held()
	if !ok || last <= applied {
		return applied + 1, true // nothing sent since
	}
	return max(applied+1, first), applied+1 >= first
}

// replayOwn applies this node's own change datagrams from seq on again,
// and returns how many changes they held.
func (c *resyncClient) replayOwn(p *peer, seq uint64) int {
	first, last, ok := c.own.held()
	if !ok {
		return 0
	}
	start := max(seq, first)
	if start > last {
		return 0
	}
	n := 0
	var buf []byte
	for i := range last - start + 1 {
		var held bool
		if buf, held = c.own.copyOut(start+i, buf[:0]); !held {
			continue // lost to a capture overflow: the peers resync from us for it
		}
		var h wire.Header
		if h.Unmarshal(buf) != nil {
			continue // cannot happen: this node sealed it
		}
		got, _ := c.apply.collect(p.node, buf[wire.HeaderSize:], h.Count, nil)
		n += got
	}
	c.apply.flush()
	return n
}

// deleteAbsent deletes the local entries the snapshot did not carry and no
// live change touched. Array entries always exist and are left alone.
func (c *resyncClient) deleteAbsent(p *peer) int {
	c.apply.flush()
	deleted := 0
	for i := range c.apply.table.maps {
		m := &c.apply.table.maps[i]
		if ebpf.MapType(m.Desc.Type) == ebpf.Array {
			continue
		}
		keep := c.keys[i]
		var gone []byte
		keys, vals := make([]byte, dumpBatch*m.keySize), make([]byte, dumpBatch*m.valueSize)
		err := m.Target.Dump(keys, vals, func(k, _ []byte) error {
			for o := 0; o < len(k); o += m.keySize {
				if _, ok := keep[string(k[o:o+m.keySize])]; !ok {
					gone = append(gone, k[o:o+m.keySize]...)
				}
			}
			return nil
		})
		if err != nil {
			c.stats.ApplyErrors.Add(1)
			if n, ok := c.limit.allow(reasonSync); ok {
				c.log.Error("full resync: cannot read the local map to find deleted entries", "peer", p.node, "map", m.Desc.Name,
					"error", err, "suppressed", n)
			}
			continue
		}
		for o := 0; o < len(gone); o += m.keySize {
			c.apply.add(p.node, m, ops.Delete, gone[o:o+m.keySize], nil, true)
		}
		deleted += c.apply.flush()
	}
	return deleted
}

// abandon gives up on the current resync; it is asked for again, of the
// same or another peer, after syncRetryWait. What the peer had sent and
// was held is applied.
func (c *resyncClient) abandon(now time.Time, why string) {
	p := c.from
	// Ask this peer again, unless this was a request for the initial
	// sync that the peer did not take up: another ready peer may.
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
