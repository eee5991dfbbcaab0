package replication

import (
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

// resync is the one full resync this node receives at a time.
type resync struct {
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

	got      []uint64 // bitmap of the snapshot datagram numbers received
	cum      uint32   // every datagram up to cum has arrived
	high     uint32   // the highest one that has
	total    uint32   // the last one, from the end datagram
	ended    bool     // the end datagram arrived
	unacked  int      // datagrams since the last acknowledgement
	received uint64   // snapshot entries applied

	// keys holds, per local map, every key the snapshot carried (false)
	// and every key a live change touched while the resync ran (true):
	// a live change is newer than the snapshot, so the snapshot's record
	// for a touched key is skipped, and neither kind is deleted at the end.
	keys []map[string]bool
}

// readiness is this node's initial sync: it is ready once it holds what
// the peers it heard from hold.
type readiness struct {
	started time.Time     // the receiver started
	wait    time.Duration // how long to listen for peers before deciding alone
	done    chan struct{} // closed once ready
}

// Ready returns a channel closed once this node has completed its initial
// sync: it received a snapshot from a ready peer, or it heard no ready
// peer for twice the announce interval and is the one to seed the others.
func (r *Receiver) Ready() <-chan struct{} { return r.ready.done }

// IsReady reports whether the initial sync is complete; the sender
// advertises it in its announces.
func (r *Receiver) IsReady() bool { return r.stats.Ready.Load() }

// becomeReady ends the initial sync.
func (r *Receiver) becomeReady(why string) {
	if r.stats.Ready.Swap(true) {
		return
	}
	close(r.ready.done)
	r.log.Info("ready: initial sync complete", "how", why, "peers", len(r.peers),
		"after", time.Since(r.ready.started).Round(time.Millisecond))
}

// syncTick drives the resync state machine from the retry timer: it asks
// for a snapshot when one is needed, repeats requests and
// acknowledgements, abandons a stalled transfer, and decides readiness
// when no peer can serve the initial sync.
func (r *Receiver) syncTick(now time.Time) {
	s := &r.sync
	switch s.phase {
	case syncRequested:
		if now.Sub(s.since) >= syncStall {
			r.abandonSync(now, "the peer did not answer the request")
		} else if now.Sub(s.sent) >= syncRequestRetry {
			r.sendSyncRequest(now)
		}
		return
	case syncStreaming:
		if now.Sub(s.moved) >= syncStall {
			r.abandonSync(now, "the snapshot stopped arriving")
		} else if now.Sub(s.sent) >= syncAckIdle && (s.unacked > 0 || s.cum < s.high || !s.ended) {
			r.sendSyncAck(now)
		}
		return
	}
	if now.Before(s.retryAt) {
		return
	}
	if p := r.syncSource(); p != nil {
		r.startSync(p, now)
		return
	}
	if !r.IsReady() && now.Sub(r.ready.started) >= r.ready.wait {
		if len(r.peers) == 0 {
			r.becomeReady("no peer heard: this node's maps are the group's state")
			return
		}
		if r.node < r.lowestPeer() {
			r.becomeReady("no ready peer heard; the lowest node id seeds the others")
		}
	}
}

// syncSource picks the peer to resync from: one whose changes were lost
// beyond repair, else, for the initial sync, a ready peer. The lowest node
// id wins so that every choice is the same on every run.
func (r *Receiver) syncSource() *peer {
	var best *peer
	for _, p := range r.peers {
		want := p.needSync || (!r.IsReady() && p.ready)
		if want && (best == nil || p.needSync && !best.needSync || p.needSync == best.needSync && p.node < best.node) {
			best = p
		}
	}
	return best
}

func (r *Receiver) lowestPeer() uint32 {
	low := ^uint32(0)
	for _, p := range r.peers {
		low = min(low, p.node)
	}
	return low
}

// startSync asks p for a snapshot of its maps. From now on p's change
// datagrams are held until the answer says where the snapshot stands, and
// every live change marks its key as newer than the snapshot.
func (r *Receiver) startSync(p *peer, now time.Time) {
	s := &r.sync
	if s.id == 0 {
		s.id = rand.Uint32()
	}
	id := s.id + 1
	if id == 0 {
		id = 1
	}
	*s = resync{phase: syncRequested, from: p, owed: p.needSync, id: id, since: now, got: s.got[:0], keys: s.keys[:0]}
	for range r.table.maps {
		s.keys = append(s.keys, make(map[string]bool))
	}
	p.needSync = false
	r.log.Info("requesting a full resync", "peer", p.node, "addr", p.addr, "request", id)
	r.sendSyncRequest(now)
}

func (r *Receiver) sendSyncRequest(now time.Time) {
	s := &r.sync
	s.sent = now
	r.nack.N = 0
	_ = r.sendControl(s.from.addr, wire.KindSyncRequest, wire.SyncSeq(s.id, 0))
}

// syncStart takes the peer's answer to the request.
func (r *Receiver) syncStart(p *peer, now time.Time, h *wire.Header, body []byte) {
	s := &r.sync
	id, _ := wire.SplitSyncSeq(h.Seq)
	if s.phase != syncRequested || s.from != p || id != s.id {
		return // an answer to a request given up on
	}
	var st wire.SyncStart
	if err := st.Unmarshal(body); err != nil {
		r.malformed(p.addr, err)
		return
	}
	if st.Status != wire.SyncOK {
		if st.Status == wire.SyncNotReady {
			p.ready = false
		}
		r.abandonSync(now, map[uint8]string{wire.SyncNotReady: "the peer is not ready itself", wire.SyncBusy: "the peer is busy"}[st.Status])
		return
	}
	s.phase, s.start, s.since, s.moved = syncStreaming, st, now, now
	// The snapshot holds every change up to AsOf: the held datagrams up to
	// there are dropped, the later ones applied, as live changes.
	for seq := p.next; seq <= st.AsOf && p.repair.n > 0; seq++ {
		if d := r.take(p, seq); d != nil {
			r.spare = append(r.spare, d)
		}
	}
	p.next = max(p.next, st.AsOf+1)
	p.seen = max(p.seen, st.AsOf)
	r.settle(p, now)
}

// snapshot applies one datagram of the snapshot: its records, except for
// keys a live change touched meanwhile.
func (r *Receiver) snapshot(p *peer, now time.Time, h *wire.Header, d []byte) {
	s := &r.sync
	id, n := wire.SplitSyncSeq(h.Seq)
	if s.phase != syncStreaming || s.from != p || id != s.id || n == 0 {
		return
	}
	if !s.mark(n) {
		r.stats.Duplicates.Add(1)
		return
	}
	s.moved = now
	s.unacked++
	r.secs.Reset(d[wire.HeaderSize:], h.Count)
	for sec, err := r.secs.Next(); err == nil; sec, err = r.secs.Next() {
		m := r.table.byFP[sec.Map]
		if m == nil {
			r.unknownMap(p, sec)
			continue
		}
		keys := s.keys[m.index]
		r.recs.Reset(sec, m.keySize, m.valueSize)
		c := 0
		for rec, err := r.recs.Next(); err == nil; rec, err = r.recs.Next() {
			if keys[string(rec.Key)] {
				continue
			}
			keys[string(rec.Key)] = false
			r.keys = append(r.keys, rec.Key...)
			r.vals = append(r.vals, rec.Value...)
			c++
		}
		if c > 0 {
			// Not a run of live changes: these keys are not marked.
			r.applyRun(p, m, ops.Update, c)
			s.received += uint64(c)
		}
	}
	if s.unacked >= syncAckEvery || n > s.cum+1 && now.Sub(s.sent) >= syncAckIdle {
		r.sendSyncAck(now)
	}
	r.syncDone(now)
}

// mark records datagram n as received and reports whether it is new.
func (s *resync) mark(n uint32) bool {
	w, bit := int(n/64), uint64(1)<<(n%64)
	for len(s.got) <= w {
		s.got = append(s.got, 0)
	}
	if s.got[w]&bit != 0 {
		return false
	}
	s.got[w] |= bit
	s.high = max(s.high, n)
	for s.has(s.cum + 1) {
		s.cum++
	}
	return true
}

func (s *resync) has(n uint32) bool {
	w := int(n / 64)
	return w < len(s.got) && s.got[w]&(1<<(n%64)) != 0
}

// syncEnd takes the number of the snapshot's last datagram.
func (r *Receiver) syncEnd(p *peer, now time.Time, h *wire.Header) {
	s := &r.sync
	id, n := wire.SplitSyncSeq(h.Seq)
	if s.phase == syncIdle && s.doneFrom == p && id == s.id {
		r.nack.N = 0
		_ = r.sendControl(p.addr, wire.KindSyncAck, wire.SyncSeq(id, n+1))
		return
	}
	if s.phase != syncStreaming || s.from != p || id != s.id {
		return
	}
	s.total, s.ended, s.moved = n, true, now
	s.high = max(s.high, n)
	r.sendSyncAck(now)
	r.syncDone(now)
}

// sendSyncAck tells the peer how far the snapshot arrived, and which
// datagrams after that are missing.
func (r *Receiver) sendSyncAck(now time.Time) {
	s := &r.sync
	s.sent, s.unacked = now, 0
	r.nack.Node, r.nack.Epoch, r.nack.N = s.from.node, s.from.epoch, 0
	for n := s.cum + 1; n <= s.high; n++ {
		if s.has(n) {
			continue
		}
		first := n
		for n < s.high && !s.has(n+1) {
			n++
		}
		if !r.nack.Add(uint64(first), uint64(n)) {
			break
		}
	}
	// Once the end has arrived too, the acknowledgement counts it as one
	// more datagram, so the peer can tell "all of it" from "all so far".
	cum := s.cum
	if s.ended && s.cum >= s.total {
		cum = s.total + 1
	}
	_ = r.sendControl(s.from.addr, wire.KindSyncAck, wire.SyncSeq(s.id, cum))
}

// syncDone finishes the resync once every datagram up to the last has
// arrived: entries the snapshot does not hold are deleted, unless a live
// change touched them, and this node's own changes that the peer had not
// applied when it read its maps are applied again on top.
func (r *Receiver) syncDone(now time.Time) {
	s := &r.sync
	if !s.ended || s.cum < s.total {
		return
	}
	p := s.from
	r.sendSyncAck(now)
	replayFrom, replayOK := r.ownChangesSince(s.start.Applied)
	deleted := 0
	if replayOK {
		deleted = r.deleteAbsent(p)
	} else if n, ok := r.limit.allow(reasonSync); ok {
		r.log.Warn("not deleting entries missing from the snapshot: this node's changes since the peer last applied them "+
			"are no longer in the resend buffer, and deleting could lose them; raise --resend-buffer",
			"peer", p.node, "peer_applied", s.start.Applied, "suppressed", n)
	}
	replayed := r.replayOwn(p, replayFrom)
	r.stats.ResyncsReceived.Add(1)
	r.stats.SyncDeleted.Add(uint64(deleted))
	r.log.Info("full resync complete", "peer", p.node, "entries", s.received, "deleted", deleted,
		"own_changes_reapplied", replayed, "datagrams", s.total, "took", now.Sub(s.since).Round(time.Millisecond))
	*s = resync{id: s.id, got: s.got[:0], keys: s.keys[:0], doneFrom: p}
	if !r.IsReady() {
		r.becomeReady("received a full resync from a ready peer")
	}
}

// ownChangesSince returns the first of this node's own change datagrams
// after applied, and whether the resend buffer still holds every one from
// there on.
func (r *Receiver) ownChangesSince(applied uint64) (uint64, bool) {
	if r.resend == nil {
		return applied + 1, applied == 0
	}
	first, last, ok := r.resend.held()
	if !ok || last <= applied {
		return applied + 1, true // nothing sent since
	}
	return max(applied+1, first), applied+1 >= first
}

// replayOwn applies this node's own change datagrams from seq on again,
// and returns how many changes they held.
func (r *Receiver) replayOwn(p *peer, seq uint64) int {
	if r.resend == nil {
		return 0
	}
	first, last, ok := r.resend.held()
	if !ok {
		return 0
	}
	n := 0
	var buf []byte
	for seq = max(seq, first); seq <= last; seq++ {
		var held bool
		if buf, held = r.resend.copyOut(seq, buf[:0]); !held {
			continue // lost to a capture overflow: the peers resync from us for it
		}
		n += r.applySealed(p, buf)
	}
	r.flush()
	return n
}

// deleteAbsent deletes the local entries the snapshot did not carry and no
// live change touched. Array entries always exist and are left alone.
func (r *Receiver) deleteAbsent(p *peer) int {
	r.flush()
	deleted := 0
	for i := range r.table.maps {
		m := &r.table.maps[i]
		if ebpf.MapType(m.Desc.Type) == ebpf.Array {
			continue
		}
		keep := r.sync.keys[i]
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
			r.syncFailed(p, "read the local map to find deleted entries", err)
			continue
		}
		for len(gone) > 0 {
			n := min(len(gone), dumpBatch*m.keySize)
			r.keys = append(r.keys[:0], gone[:n]...)
			deleted += r.applyRun(p, m, ops.Delete, n/m.keySize)
			gone = gone[n:]
		}
	}
	return deleted
}

// abandonSync gives up on the current resync; it is asked for again, of
// the same or another peer, after syncRetryWait. What the peer had sent
// and was held is applied.
func (r *Receiver) abandonSync(now time.Time, why string) {
	s := &r.sync
	p := s.from
	// Ask this peer again, unless this was a request for the initial
	// sync that the peer did not take up: another ready peer may.
	p.needSync = s.owed || r.IsReady() || s.phase != syncRequested
	if n, ok := r.limit.allow(reasonSync); ok {
		r.log.Warn("full resync abandoned; asking again", "peer", p.node, "reason", why,
			"retry_in", syncRetryWait, "suppressed", n)
	}
	*s = resync{id: s.id, got: s.got[:0], keys: s.keys[:0], retryAt: now.Add(syncRetryWait)}
	r.settle(p, now)
}

// touch marks keys of a live change as newer than the snapshot being
// received, if one is.
func (r *Receiver) touch(m *localMap, keys []byte) {
	if r.sync.phase == syncIdle {
		return
	}
	set := r.sync.keys[m.index]
	for o := 0; o < len(keys); o += m.keySize {
		set[string(keys[o:o+m.keySize])] = true
	}
}

// holding reports whether p's change datagrams wait for the answer to a
// resync request.
func (r *Receiver) holding(p *peer) bool {
	return r.sync.phase == syncRequested && r.sync.from == p
}

// forgetSync drops a resync from p, which restarted or is gone.
func (r *Receiver) forgetSync(p *peer, now time.Time) {
	if r.sync.phase != syncIdle && r.sync.from == p {
		r.abandonSync(now, "the peer restarted")
		p.needSync = false
	}
}

func (r *Receiver) syncFailed(p *peer, what string, err error) {
	r.stats.ApplyErrors.Add(1)
	if n, ok := r.limit.allow(reasonSync); ok {
		r.log.Error("full resync: cannot "+what, "peer", p.node, "error", err, "suppressed", n)
	}
}
