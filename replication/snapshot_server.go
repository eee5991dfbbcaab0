package replication

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// Full resync, serving side. See "Full resync" in docs/ARCHITECTURE.md.
const (
	// maxTransfers bounds the snapshots streamed at once; further
	// requesters are told to ask again later.
	maxTransfers = 4
	// transferWindow is how many snapshot datagrams may be in flight, sent
	// and not acknowledged, to one requester: enough to keep a LAN busy
	// between two acknowledgements, few enough (1.5 MB of 1,472-byte
	// datagrams) for the 32 MiB socket buffers.
	transferWindow = 1024
	// initialWindow is how many may be in flight before the requester's
	// first acknowledgement: a forged request, whose "requester" never
	// acknowledges, gets no more than this and a few timed-out resends.
	initialWindow = 8
	// transferRTO is how long an unacknowledged datagram first waits
	// before it is sent again; each timeout without an acknowledgement
	// doubles it up to maxTransferRTO. transferTimeout ends a transfer
	// whose requester went silent.
	transferRTO     = 100 * time.Millisecond
	maxTransferRTO  = 1600 * time.Millisecond
	transferTimeout = 5 * time.Second
	// transferRate and transferBurst pace one transfer: about eight times
	// the kernel's batch-write rate of 16 B keys and 64 B values, so a
	// resync is never slowed by it, yet bounded.
	transferRate  = 128 << 20 // bytes per second
	transferBurst = 4 << 20
	// transferEvery is how often one peer may start a new transfer: a
	// repeated request with a new id replaces the running one, which costs
	// a read of every map.
	transferEvery = time.Second
)

var (
	errTransferStopped = errors.New("stopped")
	errTransferSilent  = errors.New("the requester stopped acknowledging")
)

// ownStream is this node's own sealed change datagrams: a snapshot is as
// of the latest one. [*resendBuffer] implements it.
type ownStream interface {
	held() (first, last uint64, ok bool)
}

// snapshotServer streams snapshots of the local maps to peers that ask
// for a full resync, one goroutine per transfer, at most maxTransfers at
// once. It answers only known peers at their bound address (the
// dispatcher sees to that), at most one new transfer per peer per
// transferEvery, and refuses while this node is not itself in sync.
type snapshotServer struct {
	table *Table
	know  *knowledge.Store
	clock *hlc.Clock
	tr    Transport
	node  uint32
	epoch uint64
	own   ownStream
	stats *Stats
	log   *slog.Logger
	// current reports whether this node may serve p: ready, not
	// receiving a resync itself, and holding every other peer's changes.
	current func(p *peer) bool

	transfers map[uint32]*transfer // by requester node
	started   map[uint32]time.Time // when each requester's last transfer started
	wg        sync.WaitGroup       // the transfers' goroutines
	stop      chan struct{}        // closed at shutdown
	mu        *sync.Mutex          // the receive lock, held by every method but serve
}

// transfer is one snapshot of the local maps streamed to one requester.
type transfer struct {
	to    netip.AddrPort
	node  uint32
	id    uint32
	start [][]byte      // the KindSyncStart datagram, sent again if the request is repeated
	acks  chan syncAck  // from the receive goroutine
	stop  chan struct{} // closed when a newer request from the same node replaces this one
	// filter, unless nil, limits the snapshot to the buckets of one map
	// that a digest round of the requester's found to differ.
	filter *wire.BucketFilter
}

// syncAck is a requester's progress: every datagram up to cum arrived, and
// the ranges in missing, after cum, did not.
type syncAck struct {
	cum     uint32
	missing wire.Nack
}

// request answers p's request for a snapshot: with a refusal, or with
// where the snapshot stands, after which a transfer streams it. A
// repeated request (its answer was lost) gets the same answer again.
func (s *snapshotServer) request(p *peer, h *wire.Header, filter *wire.BucketFilter, now time.Time) error {
	id, _ := wire.SplitSyncSeq(h.Seq)
	if t := s.transfers[p.node]; t != nil && t.id == id {
		s.send(p, t.start, now)
		return nil
	}
	var st wire.SyncStart
	switch {
	case !s.current(p):
		st.Status = wire.SyncNotReady
	case now.Sub(s.started[p.node]) < transferEvery:
		st.Status = wire.SyncBusy
	case s.transfers[p.node] == nil && len(s.transfers) >= maxTransfers:
		st.Status = wire.SyncBusy
	default:
		// Every change after the latest sealed datagram is in a later
		// one, so the requester continues our stream after it.
		if _, last, ok := s.own.held(); ok {
			st.AsOf = last
		}
		if filter == nil {
			h := s.know.Lock()
			st.Entries = uint64(h.Entries())
			h.Unlock()
		}
		st.Stamp = uint64(s.clock.Now())
	}
	answer := wire.Header{Kind: wire.KindSyncStart, Node: s.node, Epoch: s.epoch, Seq: h.Seq}
	b, err := answer.AppendTo(make([]byte, 0, wire.HeaderSize+wire.SyncStartSize))
	if err == nil {
		b, err = st.AppendTo(b)
	}
	if err != nil {
		return fmt.Errorf("encode sync start: %w", err)
	}
	start := [][]byte{b}
	s.send(p, start, now)
	if st.Status != wire.SyncOK {
		return nil
	}
	if old := s.transfers[p.node]; old != nil {
		close(old.stop)
	}
	t := &transfer{to: p.addr, node: p.node, id: id, start: start,
		acks: make(chan syncAck, 16), stop: make(chan struct{}), filter: filter}
	s.transfers[p.node] = t
	s.started[p.node] = now
	if filter == nil {
		s.log.Info("serving a full resync", "peer", p.node, "addr", p.addr, "request", id, "as_of", st.AsOf)
	}
	s.wg.Add(1)
	go s.serve(t)
	return nil
}

// send sends an answer to p within its answer budget.
func (s *snapshotServer) send(p *peer, dgrams [][]byte, now time.Time) {
	if !p.answers.take(len(dgrams[0]), now) {
		s.stats.AnswersLimited.Add(1)
		return
	}
	if err := s.tr.SendTo(p.addr, dgrams); err != nil {
		s.stats.SendErrors.Add(1)
	}
}

// acked hands p's acknowledgement to its transfer.
func (s *snapshotServer) acked(p *peer, h *wire.Header, body []byte) error {
	id, cum := wire.SplitSyncSeq(h.Seq)
	a := syncAck{cum: cum}
	if h.Count > 0 {
		if err := a.missing.Unmarshal(body, h.Count); err != nil {
			return err
		}
	} else if len(body) > 0 {
		return wire.ErrBadLength
	}
	t := s.transfers[p.node]
	if t == nil || t.id != id {
		return nil
	}
	select {
	case t.acks <- a:
	default: // acknowledgements are cumulative: a later one says as much
	}
	return nil
}

// forget stops the transfer to p, which restarted or went silent.
func (s *snapshotServer) forget(p *peer) {
	if t := s.transfers[p.node]; t != nil {
		close(t.stop)
		delete(s.transfers, p.node)
	}
	delete(s.started, p.node)
}

// shutdown stops every transfer and waits for their goroutines; call it
// without the receive lock.
func (s *snapshotServer) shutdown() {
	close(s.stop)
	s.wg.Wait()
}

// serve streams the transfer and forgets it when done.
func (s *snapshotServer) serve(t *transfer) {
	defer s.wg.Done()
	began := time.Now()
	st := newSnapshotStream(s, t)
	err := st.run()
	s.mu.Lock()
	if s.transfers[t.node] == t {
		delete(s.transfers, t.node)
	}
	s.mu.Unlock()
	if err != nil {
		if !errors.Is(err, errTransferStopped) {
			s.log.Warn("full resync to a peer failed", "peer", t.node, "addr", t.to, "error", err)
		}
		return
	}
	if t.filter != nil {
		s.log.Debug("digest repair served", "peer", t.node, "entries", st.entries, "took", time.Since(began).Round(time.Millisecond))
		return
	}
	s.stats.ResyncsSent.Add(1)
	s.log.Info("full resync served", "peer", t.node, "entries", st.entries, "datagrams", st.sealed,
		"resent", st.resent, "took", time.Since(began).Round(time.Millisecond))
}

// snapshotStream is the sending state of one transfer. Datagram k of the
// snapshot lives in slot k % transferWindow until the requester
// acknowledges it.
type snapshotStream struct {
	s       *snapshotServer
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
	cwnd    uint32 // datagrams that may be in flight
	rto     time.Duration
	heard   time.Time
	entries uint64
	resent  uint64
	budget  byteBudget // paces what the transfer sends
	batch   [][]byte   // queued to send, slices of slots and end
	know    *knowledge.Store
	vers    []knowledge.Version // of the entries of one read batch
	pick    []int               // their positions in the batch
}

func newSnapshotStream(s *snapshotServer, t *transfer) *snapshotStream {
	st := &snapshotStream{s: s, t: t, heard: time.Now(), cwnd: initialWindow, rto: transferRTO,
		budget: byteBudget{rate: transferRate, burst: transferBurst}, batch: make([][]byte, 0, sendBatch),
		header: wire.Header{Kind: wire.KindSnapshot, Node: s.node, Epoch: s.epoch}, know: s.know}
	for i := range st.slots {
		st.slots[i] = make([]byte, s.table.payload)
	}
	return st
}

// run reads every local map into snapshot datagrams, each entry with the
// version this node knows of it, then its remembered deletes, sends them
// within the window, then the end, and returns once the requester has
// everything.
func (st *snapshotStream) run() error {
	if err := st.open(); err != nil {
		return err
	}
	tab := st.s.table
	for i := range tab.maps {
		m := &tab.maps[i]
		if st.t.filter != nil && st.t.filter.Map != m.fp {
			continue
		}
		if err := st.entriesOf(m); err != nil {
			return fmt.Errorf("map %s: %w", m.Desc.Name, err)
		}
		if err := st.tombstonesOf(m); err != nil {
			return err
		}
	}
	if st.w.Count() > 0 {
		st.seal()
	}
	end := wire.Header{Kind: wire.KindSyncEnd, Node: st.s.node, Epoch: st.s.epoch, Seq: wire.SyncSeq(st.t.id, st.sealed)}
	var err error
	if st.end, err = end.AppendTo(nil); err != nil {
		return fmt.Errorf("encode sync end: %w", err)
	}
	st.send(st.end)
	return st.wait(func() bool { return st.done })
}

// entriesOf adds every entry of m with the version this node knows of
// it, looked up under the knowledge lock with the read of the entry.
func (st *snapshotStream) entriesOf(m *localMap) error {
	f := st.t.filter
	return st.know.ReadMap(m.Target, m.keySize, m.valueSize, func(h knowledge.Held, ks, _ []byte) {
		st.vers, st.pick = st.vers[:0], st.pick[:0]
		now := time.Now()
		for o := 0; o*m.keySize < len(ks); o++ {
			key := ks[o*m.keySize : (o+1)*m.keySize]
			if f != nil && !inFilter(f, digestKeyHash(key)) {
				continue
			}
			st.vers, st.pick = append(st.vers, h.Current(m.index, key, now)), append(st.pick, o)
		}
	}, func(ks, vs []byte) error {
		for j, v := range st.vers {
			o := st.pick[j]
			val := vs[o*m.valueSize : (o+1)*m.valueSize]
			if m.plan != nil {
				m.plan.toWire(val) // the batch's buffer is read into anew next
			}
			if err := st.add(m, ops.Update, v, ks[o*m.keySize:(o+1)*m.keySize], val); err != nil {
				return err
			}
		}
		return nil
	})
}

// tombstonesOf adds the deletes of m this node remembers and still takes
// as the latest write of their keys.
func (st *snapshotStream) tombstonesOf(m *localMap) error {
	var keys []byte
	st.vers = st.vers[:0]
	h := st.know.Lock()
	for key, e := range h.Tombstones(m.index) {
		if st.t.filter == nil || inFilter(st.t.filter, digestKeyHash(key)) {
			keys = append(keys, key...)
			st.vers = append(st.vers, e.Version())
		}
	}
	h.Unlock()
	for j, v := range st.vers {
		if err := st.add(m, ops.Delete, v, keys[j*m.keySize:(j+1)*m.keySize], nil); err != nil {
			return err
		}
	}
	return nil
}

// add appends one record, sealing the datagram and opening the next when
// it is full.
func (st *snapshotStream) add(m *localMap, op ops.Op, v knowledge.Version, key, val []byte) error {
	if !st.w.Append(m.fp, op, uint64(v.Stamp), v.Origin, key, val) {
		st.seal()
		if err := st.open(); err != nil {
			return err
		}
		st.w.Append(m.fp, op, uint64(v.Stamp), v.Origin, key, val) // NewTable checked that one record fits
	}
	st.entries++
	return nil
}

// open starts the next datagram in its slot, once the window has room.
func (st *snapshotStream) open() error {
	next := st.sealed + 1
	if err := st.wait(func() bool { return next-st.acked <= st.cwnd }); err != nil {
		return err
	}
	// Base 0: the snapshot's own entries are stamped at all times, so
	// offsets from any one base save little.
	st.w.Reset(st.slots[next%transferWindow], st.s.node, 0)
	return nil
}

// seal numbers the datagram being built and sends it.
func (st *snapshotStream) seal() {
	st.sealed++
	st.header.Seq = wire.SyncSeq(st.t.id, st.sealed)
	d := st.w.Finish(st.header)
	i := st.sealed % transferWindow
	st.lens[i] = len(d)
	st.sentAt[i] = time.Now()
	st.send(d)
}

// send queues one datagram for the requester; they go out in batches,
// one system call (and, with GSO, one message) for up to sendBatch of
// them, when the batch is full or the stream is about to wait. A failure
// is counted; the datagram is sent again when it is not acknowledged in
// time.
func (st *snapshotStream) send(d []byte) {
	st.batch = append(st.batch, d)
	if len(st.batch) == cap(st.batch) {
		st.flush()
	}
}

// flush sends the queued datagrams.
func (st *snapshotStream) flush() {
	if len(st.batch) == 0 {
		return
	}
	n := 0
	for _, d := range st.batch {
		n += len(d)
	}
	st.pace(n)
	if err := st.s.tr.SendTo(st.t.to, st.batch); err != nil {
		st.s.stats.SendErrors.Add(1)
	}
	st.batch = st.batch[:0]
}

// pace waits until the transfer's byte budget covers n more bytes, or the
// transfer is stopped: a requester can acknowledge what it never received
// (without a key its address may be forged), so what a transfer sends is
// bounded in rate as well as by the window.
func (st *snapshotStream) pace(n int) {
	for {
		now := time.Now()
		if st.budget.take(n, now) {
			return
		}
		select {
		case <-st.t.stop:
			return
		case <-st.s.stop:
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// resend sends datagram k again unless it was sent within the last rto.
func (st *snapshotStream) resend(k uint32, now time.Time, rto time.Duration) {
	i := k % transferWindow
	if now.Sub(st.sentAt[i]) < rto {
		return
	}
	st.sentAt[i] = now
	st.resent++
	st.send(st.slots[i][:st.lens[i]])
}

// wait takes acknowledgements, and resends what they show missing or what
// timed out, until done reports true.
func (st *snapshotStream) wait(done func() bool) error {
	timer := time.NewTimer(st.rto)
	defer timer.Stop()
	for !done() {
		st.flush()
		select {
		case <-st.t.stop:
			return errTransferStopped
		case <-st.s.stop:
			return errTransferStopped
		case a := <-st.t.acks:
			st.take(a, time.Now())
		case now := <-timer.C:
			if now.Sub(st.heard) >= transferTimeout {
				return errTransferSilent
			}
			st.timeout(now)
			timer.Reset(st.rto)
		}
	}
	return nil
}

// take applies an acknowledgement: the window opens by what it
// acknowledges, and what it shows missing is sent again.
func (st *snapshotStream) take(a syncAck, now time.Time) {
	st.heard = now
	st.rto = transferRTO
	if cum := min(a.cum, st.sealed); cum > st.acked {
		st.cwnd = min(transferWindow, st.cwnd+cum-st.acked)
		st.acked = cum
	}
	st.done = st.end != nil && a.cum > st.sealed // the end counts as one more
	for _, rg := range a.missing.Ranges[:a.missing.N] {
		lo, hi := max(rg.First, uint64(st.acked)+1), min(rg.Last, uint64(st.sealed))
		for k := lo; k <= hi; k++ {
			st.resend(uint32(k), now, transferRTO/4)
		}
	}
}

// timeout resends the oldest unacknowledged datagram, and the end, and
// backs off: a requester that does not acknowledge gets less and less.
func (st *snapshotStream) timeout(now time.Time) {
	if st.acked < st.sealed {
		st.resend(st.acked+1, now, st.rto)
	} else if st.end != nil {
		st.send(st.end)
	}
	st.rto = min(2*st.rto, maxTransferRTO)
}
