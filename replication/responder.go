package replication

import (
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/udpmapsync/udpmapsync/wire"
)

// maxResendPerNack bounds the datagrams one request makes this node
// resend; the peer's answer budget bounds them over time.
const maxResendPerNack = 256

// GroupHoldoff is how long a datagram resent to the group is not resent
// there again: the requests of the receivers that lost it and asked
// before they heard each other's arrive within it, and each asks again
// only firstRetry after the request it sent or heard.
const GroupHoldoff = firstRetry / 2

// resentSlots datagrams resent to the group are remembered, by sequence
// number.
const resentSlots = 1024

// errNackNotOurs rejects a repair request for another node's datagrams
// that came to this node alone: one that came to the group is another
// receiver's, heard.
var errNackNotOurs = errors.New("repair request names another node")

// repairResponder answers peers' repair requests from this node's own
// resend buffer: the send side of loss repair. It resends what the buffer
// holds, verbatim but for [wire.FlagRetransmit], and answers
// [wire.KindGone] for what it no longer holds. Numbers this node never
// sent are ignored. It only ever answers a known peer at its bound
// address, within the peer's answer budget.
type repairResponder struct {
	resend *resendBuffer
	epoch  uint64
	ctl    controlSender
	tr     Transport
	stats  *Stats
	log    *slog.Logger
	limit  *limiter

	gone  wire.Nack // the answer being built
	batch [][]byte  // resent datagrams of one batch, slices of buf
	buf   []byte
	// toGroup: when each of the latest datagrams resent to the group was
	// resent, by seq % resentSlots.
	toGroup [resentSlots]resentAt
}

// resentAt is when datagram seq was last resent to the group.
type resentAt struct {
	seq uint64
	at  time.Time
}

func newRepairResponder(resend *resendBuffer, payload int, ctl controlSender, stats *Stats, log *slog.Logger, limit *limiter) repairResponder {
	return repairResponder{resend: resend, epoch: ctl.epoch, ctl: ctl, tr: ctl.tr, stats: stats, log: log, limit: limit,
		batch: make([][]byte, 0, sendBatch), buf: make([]byte, 0, sendBatch*payload)}
}

// serve answers req, a repair request from p, at to: p's address, or
// the group, where every receiver that lost the datagrams gets them from
// one resend (within GroupHoldoff, one resend serves every request).
// Resends to the group are paid from p's answer budget like the others.
func (r *repairResponder) serve(p *peer, req *wire.Nack, to netip.AddrPort, now time.Time) error {
	if req.Node != r.ctl.node {
		return errNackNotOurs
	}
	first, last, ok := r.resend.held()
	if req.Epoch != r.epoch {
		ok = false // about a run of ours before a restart: all gone
	}
	r.gone = wire.Nack{Node: req.Node, Epoch: req.Epoch}
	budget := maxResendPerNack
	noted := false
	for _, rg := range req.Ranges[:req.N] {
		if !ok || rg.First < first {
			hi := rg.Last
			if ok {
				hi = min(hi, first-1)
			}
			r.gone.Add(rg.First, hi)
		}
		if !ok || rg.Last < first || rg.First > last {
			continue
		}
		lo, hi := max(rg.First, first), min(rg.Last, last)
		if !noted && p.ready {
			// The oldest held it lacks, for flow control. Not for a peer
			// in its initial sync: it holds our stream until its snapshot
			// has come, and holding back for it would only slow the
			// writers while it applies that.
			r.resend.asked(p.node, lo, now)
			noted = true
		}
		for i := uint64(0); i <= hi-lo && budget > 0; i++ {
			group := to != p.addr
			if group && r.resentLately(lo+i, now) {
				continue
			}
			switch r.queue(p, to, lo+i, now) {
			case queued:
				budget--
				if group {
					r.toGroup[(lo+i)%resentSlots] = resentAt{lo + i, now}
				}
			case notHeld:
				r.gone.Add(lo+i, lo+i) // lost to a capture overflow
			case overBudget:
				budget = 0
			}
		}
	}
	r.flush(to)
	if r.gone.N > 0 && p.answers.take(controlSize, now) {
		return r.ctl.nack(to, wire.KindGone, 0, &r.gone)
	}
	return nil
}

// resentLately reports whether datagram seq was resent to the group
// within GroupHoldoff.
func (r *repairResponder) resentLately(seq uint64, now time.Time) bool {
	slot := r.toGroup[seq%resentSlots]
	return slot.seq == seq && now.Sub(slot.at) < GroupHoldoff
}

type queueResult uint8

const (
	queued queueResult = iota
	notHeld
	overBudget
)

// queue copies datagram seq from the resend buffer into the batch for p,
// sending the batch to to when it is full.
func (r *repairResponder) queue(p *peer, to netip.AddrPort, seq uint64, now time.Time) queueResult {
	start := len(r.buf)
	buf, ok := r.resend.copyOut(seq, r.buf)
	if !ok {
		return notHeld
	}
	d := buf[start:]
	if !p.answers.take(len(d), now) {
		r.stats.AnswersLimited.Add(1)
		return overBudget
	}
	r.buf = buf
	var h wire.Header
	if h.Unmarshal(d) != nil {
		return notHeld // cannot happen: this node built it
	}
	h.Flags |= wire.FlagRetransmit
	if _, err := h.AppendTo(d[:0]); err != nil {
		return notHeld
	}
	r.batch = append(r.batch, d)
	if len(r.batch) == cap(r.batch) {
		r.flush(to)
	}
	return queued
}

// flush sends the batch of resent datagrams.
func (r *repairResponder) flush(to netip.AddrPort) {
	if len(r.batch) == 0 {
		return
	}
	if err := r.tr.SendTo(to, r.batch); err != nil {
		r.ctl.failed(err)
	}
	r.stats.DatagramsResent.Add(uint64(len(r.batch)))
	r.batch, r.buf = r.batch[:0], r.buf[:0]
}
