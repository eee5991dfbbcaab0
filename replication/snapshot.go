package replication

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// Full resync, serving side. See "Full resync" in docs/ARCHITECTURE.md.
const (
	// maxTransfers bounds the snapshots streamed at once; further
	// requesters are told to ask again later.
	maxTransfers = 4
	// transferWindow is how many snapshot datagrams may be in flight, sent
	// and not acknowledged, to one requester: enough to keep a LAN busy,
	// few enough for any socket buffer.
	transferWindow = 256
	// transferRTO is how long an unacknowledged datagram waits before it
	// is sent again; transferTimeout ends a transfer whose requester went
	// silent.
	transferRTO     = 100 * time.Millisecond
	transferTimeout = 5 * time.Second
)

var (
	errTransferStopped = errors.New("stopped")
	errTransferSilent  = errors.New("the requester stopped acknowledging")
)

// transfer is one snapshot of the local maps streamed to one requester.
type transfer struct {
	to    netip.AddrPort
	node  uint32
	id    uint32
	start [][]byte        // the KindSyncStart datagram, sent again if the request is repeated
	acks  chan syncAck    // from the receiver goroutine
	stop  chan struct{}   // closed when a newer request from the same node replaces this one
	done  <-chan struct{} // closed when the receiver stops
}

// syncAck is a requester's progress: every datagram up to cum arrived, and
// the ranges in missing, after cum, did not.
type syncAck struct {
	cum     uint32
	missing wire.Nack
}

// serveSync answers a peer's request for a snapshot: with a refusal, or
// with where the snapshot stands, after which a transfer streams it. A
// repeated request (its answer was lost) gets the same answer again.
func (r *Receiver) serveSync(from netip.AddrPort, h *wire.Header) {
	id, _ := wire.SplitSyncSeq(h.Seq)
	if t := r.transfers[h.Node]; t != nil {
		if t.id == id {
			r.sendTo(from, t.start)
			return
		}
		close(t.stop)
		delete(r.transfers, h.Node)
	}
	var st wire.SyncStart
	switch {
	case !r.IsReady():
		st.Status = wire.SyncNotReady
	case len(r.transfers) >= maxTransfers:
		st.Status = wire.SyncBusy
	default:
		// Every change after the latest sealed datagram is in a later
		// one, so the requester continues our stream after it.
		if r.resend != nil {
			if _, last, ok := r.resend.held(); ok {
				st.AsOf = last
			}
		}
		if p := r.peers[h.Node]; p != nil && p.epoch == h.Epoch {
			st.Applied = p.next - 1
		}
	}
	answer := wire.Header{Kind: wire.KindSyncStart, Node: r.node, Epoch: r.epoch, Seq: h.Seq}
	b := make([]byte, wire.HeaderSize, wire.HeaderSize+wire.SyncStartSize)
	_, _ = answer.MarshalTo(b)
	start := [][]byte{st.AppendTo(b)}
	r.sendTo(from, start)
	if st.Status != wire.SyncOK {
		return
	}
	t := &transfer{to: from, node: h.Node, id: id, start: start,
		acks: make(chan syncAck, 16), stop: make(chan struct{}), done: r.stop}
	r.transfers[h.Node] = t
	r.log.Info("serving a full resync", "peer", h.Node, "addr", from, "request", id, "as_of", st.AsOf)
	go r.serve(t)
}

// syncAcked hands a requester's acknowledgement to its transfer.
func (r *Receiver) syncAcked(from netip.AddrPort, h *wire.Header, body []byte) {
	id, cum := wire.SplitSyncSeq(h.Seq)
	t := r.transfers[h.Node]
	if t == nil || t.id != id || t.to != from {
		return
	}
	a := syncAck{cum: cum}
	if h.Count > 0 {
		if err := a.missing.Unmarshal(body, h.Count); err != nil {
			r.malformed(from, err)
			return
		}
	} else if len(body) > 0 {
		r.malformed(from, wire.ErrBadLength)
		return
	}
	select {
	case t.acks <- a:
	default: // acknowledgements are cumulative: a later one says as much
	}
}

func (r *Receiver) sendTo(to netip.AddrPort, dgrams [][]byte) {
	if err := r.tr.SendTo(to, dgrams); err != nil {
		r.sendFailed(err)
	}
}

// serve streams the transfer and forgets it when done.
func (r *Receiver) serve(t *transfer) {
	began := time.Now()
	s := newStream(r, t)
	err := s.run()
	r.mu.Lock()
	if r.transfers[t.node] == t {
		delete(r.transfers, t.node)
	}
	r.mu.Unlock()
	if err != nil {
		if !errors.Is(err, errTransferStopped) {
			r.log.Warn("full resync to a peer failed", "peer", t.node, "addr", t.to, "error", err)
		}
		return
	}
	r.stats.ResyncsSent.Add(1)
	r.log.Info("full resync served", "peer", t.node, "entries", s.entries, "datagrams", s.sealed,
		"resent", s.resent, "took", time.Since(began).Round(time.Millisecond))
}

// stream is the sending state of one transfer. Datagram k of the snapshot
// lives in slot k % transferWindow until the requester acknowledges it.
type stream struct {
	r       *Receiver
	t       *transfer
	w       wire.ChangeWriter
	header  wire.Header
	slots   [transferWindow][]byte // each of the payload size
	lens    [transferWindow]int    // of the datagram in each slot
	sentAt  [transferWindow]time.Time
	end     []byte // the end datagram, once every record is sealed
	done    bool   // the requester acknowledged the end
	sealed  uint32 // datagrams sealed and sent
	acked   uint32 // every datagram up to acked was received
	heard   time.Time
	entries uint64
	resent  uint64
	out     [1][]byte
}

func newStream(r *Receiver, t *transfer) *stream {
	s := &stream{r: r, t: t, heard: time.Now(),
		header: wire.Header{Kind: wire.KindSnapshot, Node: r.node, Epoch: r.epoch}}
	for i := range s.slots {
		s.slots[i] = make([]byte, r.table.payload)
	}
	return s
}

// run reads every local map into snapshot datagrams, sends them within the
// window, then the end, and returns once the requester has everything.
func (s *stream) run() error {
	if err := s.open(); err != nil {
		return err
	}
	tab := s.r.table
	for i := range tab.maps {
		m := &tab.maps[i]
		keys, vals := make([]byte, dumpBatch*m.keySize), make([]byte, dumpBatch*m.valueSize)
		err := m.Target.Dump(keys, vals, func(k, v []byte) error {
			for o := 0; o*m.keySize < len(k); o++ {
				key, val := k[o*m.keySize:(o+1)*m.keySize], v[o*m.valueSize:(o+1)*m.valueSize]
				if s.w.Append(m.fp, ops.Update, key, val) {
					s.entries++
					continue
				}
				s.seal()
				if err := s.open(); err != nil {
					return err
				}
				s.w.Append(m.fp, ops.Update, key, val) // NewTable checked that one record fits
				s.entries++
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("map %s: %w", m.Desc.Name, err)
		}
	}
	if s.w.Count() > 0 {
		s.seal()
	}
	end := wire.Header{Kind: wire.KindSyncEnd, Node: s.r.node, Epoch: s.r.epoch, Seq: wire.SyncSeq(s.t.id, s.sealed)}
	s.end = make([]byte, wire.HeaderSize)
	_, _ = end.MarshalTo(s.end)
	s.send(s.end)
	return s.wait(func() bool { return s.done })
}

// open starts the next datagram in its slot, once the window has room.
func (s *stream) open() error {
	next := s.sealed + 1
	if err := s.wait(func() bool { return next-s.acked <= transferWindow }); err != nil {
		return err
	}
	s.w.Reset(s.slots[next%transferWindow])
	return nil
}

// seal numbers the datagram being built and sends it.
func (s *stream) seal() {
	s.sealed++
	s.header.Seq = wire.SyncSeq(s.t.id, s.sealed)
	d := s.w.Finish(s.header)
	i := s.sealed % transferWindow
	s.lens[i] = len(d)
	s.sentAt[i] = time.Now()
	s.send(d)
}

// send sends one datagram to the requester. A failure is counted; the
// datagram is sent again when it is not acknowledged in time.
func (s *stream) send(d []byte) {
	s.out[0] = d
	if err := s.r.tr.SendTo(s.t.to, s.out[:]); err != nil {
		s.r.stats.SendErrors.Add(1)
	}
}

// resend sends datagram k again unless it was sent within the last rto.
func (s *stream) resend(k uint32, now time.Time, rto time.Duration) {
	i := k % transferWindow
	if now.Sub(s.sentAt[i]) < rto {
		return
	}
	s.sentAt[i] = now
	s.resent++
	s.send(s.slots[i][:s.lens[i]])
}

// wait takes acknowledgements, and resends what they show missing or what
// timed out, until done reports true.
func (s *stream) wait(done func() bool) error {
	timer := time.NewTimer(transferRTO)
	defer timer.Stop()
	for !done() {
		select {
		case <-s.t.stop:
			return errTransferStopped
		case <-s.t.done:
			return errTransferStopped
		case a := <-s.t.acks:
			now := time.Now()
			s.heard = now
			s.acked = max(s.acked, min(a.cum, s.sealed))
			s.done = s.end != nil && a.cum > s.sealed // the end counts as one more
			for _, rg := range a.missing.Ranges[:a.missing.N] {
				for k := max(rg.First, uint64(s.acked)+1); k <= min(rg.Last, uint64(s.sealed)); k++ {
					s.resend(uint32(k), now, transferRTO/4)
				}
			}
		case now := <-timer.C:
			if now.Sub(s.heard) >= transferTimeout {
				return errTransferSilent
			}
			for k := s.acked + 1; k <= s.sealed; k++ {
				s.resend(k, now, transferRTO)
			}
			if s.end != nil {
				s.send(s.end)
			}
			timer.Reset(transferRTO)
		}
	}
	return nil
}
