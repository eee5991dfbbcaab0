package replication

import (
	"errors"
	"net/netip"
	"time"

	"github.com/udpmapsync/udpmapsync/wire"
)

// Loss repair limits. See "Loss repair" in docs/ARCHITECTURE.md.
const (
	// maxHeld and maxHeldBytes bound the change datagrams held back per
	// peer behind a missing one: the receive window. A datagram beyond it
	// is dropped and asked for again once the window has moved on.
	maxHeld      = 4096
	maxHeldBytes = 8 << 20
	// A repair request is repeated after firstRetry, then after twice as
	// long each time up to maxRetry, until the gap is filled or the oldest
	// missing datagram has been missing for repairTimeout.
	firstRetry    = 10 * time.Millisecond
	maxRetry      = 200 * time.Millisecond
	repairTimeout = 2 * time.Second
	// retryTick is how often the retry timer looks at the peers.
	retryTick = 5 * time.Millisecond
	// maxResendPerNack bounds the datagrams one request makes us resend,
	// so a forged request cannot turn us into a flood.
	maxResendPerNack = 1024
)

// errNackNotOurs rejects a repair request for another node's datagrams:
// requests are sent by unicast to the node whose sequence they name.
var errNackNotOurs = errors.New("repair request names another node")

// repairState is a peer's datagrams held back behind a gap, and the
// timing of the requests to fill it.
type repairState struct {
	held     []heldDatagram // by seq % maxHeld; allocated at the first gap
	n        int            // datagrams held
	bytes    int            // their size
	since    time.Time      // when the oldest missing datagram, gapAt, was noticed missing; zero without a gap
	gapAt    uint64         // the seq that was next to apply when since was set
	retryAt  time.Time
	interval time.Duration
}

// heldDatagram is a checked change datagram waiting for its turn; d is
// nil in an empty slot.
type heldDatagram struct {
	seq uint64
	d   []byte
}

// changes applies a checked change datagram in sequence order: the next
// one expected is applied at once, together with what it unblocks; a
// later one is held back and the missing ones are requested; an earlier
// one was applied already. One beyond the receive window (see maxHeld) is
// dropped like a lost one, to be asked for again once the window has
// moved: a receiver that falls behind repairs at the pace it can apply
// rather than giving the gap up. While a resync request to p waits for its
// answer, p's datagrams are all held.
func (r *Receiver) changes(p *peer, now time.Time, h *wire.Header, d []byte) {
	s := h.Seq
	rs := &p.repair
	if s < p.next || (rs.held != nil && rs.held[s%maxHeld].seq == s && rs.held[s%maxHeld].d != nil) {
		r.stats.Duplicates.Add(1)
		return
	}
	if s > p.seen+1 {
		p.gap(r.stats, s-p.seen-1)
		r.noticeGap(p, now)
		r.nack.Node, r.nack.Epoch, r.nack.N = p.node, p.epoch, 0
		r.requestInWindow(p, p.seen+1, s-1)
		r.sendNack(p)
	}
	p.seen = max(p.seen, s)
	if (s != p.next || r.holding(p)) && (s >= p.next+r.window || rs.bytes+len(d) > maxHeldBytes) {
		r.stats.HoldFull.Add(1)
		return
	}
	r.stats.DatagramsReceived.Add(1)
	if h.Flags&wire.FlagRetransmit != 0 {
		r.stats.Repaired.Add(1)
	}
	if s == p.next && !r.holding(p) {
		r.apply(p, d[wire.HeaderSize:], h.Count)
		p.next++
		r.settle(p, now)
		return
	}
	r.hold(p, s, d)
}

// requestInWindow adds to r.nack the part of p's datagrams first..last
// that is not applied yet and lies in the receive window.
func (r *Receiver) requestInWindow(p *peer, first, last uint64) {
	first, last = max(first, p.next), min(last, p.next+r.window-1)
	if first <= last {
		r.nack.Add(first, last)
	}
}

// heartbeat takes the latest sequence number a peer announced: if it
// sent datagrams we never saw, the tail of a burst was lost.
func (r *Receiver) heartbeat(p *peer, now time.Time, seq uint64) {
	if seq <= p.seen {
		return
	}
	p.gap(r.stats, seq-p.seen)
	r.noticeGap(p, now)
	r.nack.Node, r.nack.Epoch, r.nack.N = p.node, p.epoch, 0
	r.requestInWindow(p, p.seen+1, seq)
	p.seen = seq
	r.sendNack(p)
}

// noticeGap starts the retry timer of p unless a gap is already pending.
func (r *Receiver) noticeGap(p *peer, now time.Time) {
	rs := &p.repair
	if rs.since.IsZero() {
		rs.since, rs.gapAt, rs.interval = now, p.next, firstRetry
		rs.retryAt = now.Add(firstRetry)
	}
}

// hold keeps a copy of datagram s until the ones before it are applied.
func (r *Receiver) hold(p *peer, s uint64, d []byte) {
	rs := &p.repair
	if rs.held == nil {
		rs.held = make([]heldDatagram, maxHeld)
	}
	var buf []byte
	if n := len(r.spare); n > 0 {
		buf, r.spare = r.spare[n-1][:0], r.spare[:n-1]
	}
	rs.held[s%maxHeld] = heldDatagram{seq: s, d: append(buf, d...)}
	rs.n++
	rs.bytes += len(d)
	r.stats.Held.Add(1)
}

// take removes and returns held datagram s, or nil.
func (r *Receiver) take(p *peer, s uint64) []byte {
	rs := &p.repair
	if rs.n == 0 {
		return nil
	}
	hd := &rs.held[s%maxHeld]
	if hd.d == nil || hd.seq != s {
		return nil
	}
	d := hd.d
	hd.d = nil
	rs.n--
	rs.bytes -= len(d)
	r.stats.Held.Add(^uint64(0))
	return d
}

// applyHeld applies a datagram taken from the hold and recycles its buffer.
func (r *Receiver) applyHeld(p *peer, d []byte) {
	r.applySealed(p, d)
	r.spare = append(r.spare, d)
}

// applySealed applies a whole change datagram checked before, a held one
// or one of our own, and returns how many changes it carries.
func (r *Receiver) applySealed(p *peer, d []byte) int {
	var h wire.Header
	_ = h.Unmarshal(d) // checked, or sealed by us
	r.apply(p, d[wire.HeaderSize:], h.Count)
	return int(h.Count)
}

// settle applies the held datagrams that are next in sequence, unless a
// resync request holds them, then stops the retry timer if nothing is
// missing any more, or restarts it if the oldest missing datagram is a
// newer one than when it started.
func (r *Receiver) settle(p *peer, now time.Time) {
	for !r.holding(p) {
		d := r.take(p, p.next)
		if d == nil {
			break
		}
		r.applyHeld(p, d)
		p.next++
	}
	if p.next > p.seen || p.next != p.repair.gapAt {
		p.repair.since = time.Time{}
	}
	if p.next <= p.seen {
		r.noticeGap(p, now)
	}
}

// skipTo gives up on every datagram before s that is still missing: the
// held ones before s are applied in order, and s is next.
func (r *Receiver) skipTo(p *peer, s uint64) {
	for seq := p.next; seq < s && p.repair.n > 0; seq++ {
		if d := r.take(p, seq); d != nil {
			r.applyHeld(p, d)
		}
	}
	p.next = max(p.next, s)
	p.seen = max(p.seen, s-1)
	p.repair.since = time.Time{}
}

// release drops everything held for p, when it restarted.
func (r *Receiver) release(p *peer) {
	for seq := p.next; p.repair.n > 0; seq++ {
		if d := r.take(p, seq); d != nil {
			r.spare = append(r.spare, d)
		}
	}
}

// gone handles a peer's answer that it no longer holds some of what we
// asked for: those changes can only come back with a full resync.
func (r *Receiver) gone(p *peer, now time.Time) {
	last := r.nack.Ranges[r.nack.N-1].Last
	if last < p.next || r.holding(p) {
		return // about datagrams we got in the meantime, or that a resync covers
	}
	r.resyncNeeded(p, "peer no longer holds the missing datagrams")
	r.skipTo(p, min(last, p.seen)+1)
	r.settle(p, now)
}

// retryLoop repeats repair requests until stop is closed.
func (r *Receiver) retryLoop(stop <-chan struct{}) {
	t := time.NewTicker(retryTick)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			r.mu.Lock()
			r.retry(now)
			r.mu.Unlock()
		}
	}
}

// retry asks again for what is still missing, gives up on a gap whose
// oldest datagram was not filled within repairTimeout, drives the resync,
// and applies what that released.
func (r *Receiver) retry(now time.Time) {
	for _, p := range r.peers {
		rs := &p.repair
		if rs.since.IsZero() || now.Before(rs.retryAt) || r.holding(p) {
			// A resync request to p moots its gaps until the answer.
			continue
		}
		if now.Sub(rs.since) >= repairTimeout {
			r.resyncNeeded(p, "missing datagrams not repaired in time")
			r.skipTo(p, r.firstHeld(p))
			r.settle(p, now)
			continue
		}
		r.missing(p)
		r.sendNack(p)
		rs.interval = min(2*rs.interval, maxRetry)
		rs.retryAt = now.Add(rs.interval)
	}
	r.syncTick(now)
	r.flush()
}

// firstHeld is the lowest sequence number held for p, or the one after
// the latest the peer sent if nothing is held.
func (r *Receiver) firstHeld(p *peer) uint64 {
	if p.repair.n > 0 {
		for seq := p.next; seq < p.next+maxHeld; seq++ {
			if hd := p.repair.held[seq%maxHeld]; hd.d != nil && hd.seq == seq {
				return seq
			}
		}
	}
	return p.seen + 1
}

// missing fills r.nack with the ranges of p's sequence in the receive
// window that are neither applied nor held, as many as one request
// carries.
func (r *Receiver) missing(p *peer) {
	r.nack.Node, r.nack.Epoch, r.nack.N = p.node, p.epoch, 0
	end := min(p.seen, p.next+r.window-1)
	for seq := p.next; seq <= end; seq++ {
		if p.repair.held != nil {
			if hd := p.repair.held[seq%maxHeld]; hd.d != nil && hd.seq == seq {
				continue
			}
		}
		if !r.nack.Add(seq, seq) {
			return
		}
	}
}

// sendNack sends the request in r.nack to p.
func (r *Receiver) sendNack(p *peer) {
	if r.nack.N == 0 {
		return
	}
	if r.sendControl(p.addr, wire.KindNack, 0) != nil {
		return
	}
	r.stats.NacksSent.Add(1)
	r.stats.RangesRequested.Add(uint64(r.nack.N))
}

// sendControl sends a control datagram of kind k with sequence field seq
// to addr; its body is the ranges of r.nack, if it has any. A failure is
// counted and logged, and returned.
func (r *Receiver) sendControl(addr netip.AddrPort, k wire.Kind, seq uint64) error {
	h := wire.Header{Kind: k, Count: uint16(r.nack.N), Node: r.node, Epoch: r.epoch, Seq: seq}
	if r.out == nil {
		r.out = make([]byte, wire.HeaderSize, wire.HeaderSize+wire.NackFixedSize+wire.MaxNackRanges*wire.NackRangeSize)
	}
	_, _ = h.MarshalTo(r.out) // r.out holds a header
	b := r.out[:wire.HeaderSize]
	var err error
	if r.nack.N > 0 {
		b, err = r.nack.AppendTo(b)
	}
	if err == nil {
		r.outv[0] = b
		err = r.tr.SendTo(addr, r.outv[:])
	}
	if err != nil {
		r.sendFailed(err)
	}
	return err
}

// serveNack answers a peer's repair request in r.nack: it resends what the
// resend buffer holds, verbatim but for [wire.FlagRetransmit], at most
// maxResendPerNack datagrams, and answers [wire.KindGone] for what it no
// longer holds. Sequence numbers we never sent are ignored.
func (r *Receiver) serveNack(from netip.AddrPort) {
	req := r.nack
	if req.Node != r.node {
		r.malformed(from, errNackNotOurs)
		return
	}
	var first, last uint64
	ok := false
	if r.resend != nil && req.Epoch == r.epoch {
		first, last, ok = r.resend.held()
	}
	r.nack.N = 0 // now the ranges that are gone
	budget := maxResendPerNack
	for _, rg := range req.Ranges[:req.N] {
		if !ok || rg.First < first {
			hi := rg.Last
			if ok {
				hi = min(hi, first-1)
			}
			r.nack.Add(rg.First, hi)
		}
		if !ok {
			continue
		}
		for seq := max(rg.First, first); seq <= min(rg.Last, last) && budget > 0; seq++ {
			if r.queueRepair(from, seq) {
				budget--
			} else {
				r.nack.Add(seq, seq) // lost to a capture overflow
			}
		}
	}
	r.flushRepairs(from)
	if r.nack.N > 0 {
		_ = r.sendControl(from, wire.KindGone, 0)
	}
}

// queueRepair copies datagram seq from the resend buffer into the batch of
// repairs for to, sending the batch when it is full.
func (r *Receiver) queueRepair(to netip.AddrPort, seq uint64) bool {
	if r.repairBuf == nil {
		r.repairBuf = make([]byte, 0, sendBatch*r.table.payload)
		r.repair = make([][]byte, 0, sendBatch)
	}
	start := len(r.repairBuf)
	buf, ok := r.resend.copyOut(seq, r.repairBuf)
	if !ok {
		return false
	}
	r.repairBuf = buf
	d := buf[start:]
	var h wire.Header
	_ = h.Unmarshal(d) // we sealed it
	h.Flags |= wire.FlagRetransmit
	_, _ = h.MarshalTo(d)
	r.repair = append(r.repair, d)
	if len(r.repair) == sendBatch {
		r.flushRepairs(to)
	}
	return true
}

// flushRepairs sends the batch of repairs.
func (r *Receiver) flushRepairs(to netip.AddrPort) {
	if len(r.repair) == 0 {
		return
	}
	if err := r.tr.SendTo(to, r.repair); err != nil {
		r.sendFailed(err)
	}
	r.stats.DatagramsResent.Add(uint64(len(r.repair)))
	r.repair, r.repairBuf = r.repair[:0], r.repairBuf[:0]
}

// resyncNeeded records that p's changes before its current gap are lost,
// so a full resync from p is due.
func (r *Receiver) resyncNeeded(p *peer, why string) {
	r.stats.ResyncNeeded.Add(1)
	p.needSync = true
	if s, ok := r.limit.allow(reasonResync); ok {
		r.log.Warn("giving up on missing datagrams; a full resync from the peer follows", "peer", p.node, "addr", p.addr,
			"epoch", p.epoch, "next", p.next, "latest", p.seen, "reason", why, "suppressed", s)
	}
}

func (r *Receiver) sendFailed(err error) {
	r.stats.SendErrors.Add(1)
	if s, ok := r.limit.allow(reasonSend); ok {
		r.log.Error("sending repair datagrams failed", "error", err, "suppressed", s)
	}
}
