package replication

import (
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
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
	// transferRate and transferBurst pace one transfer: about five times
	// what the kernel's batch writes of 16 B keys and 64 B values take
	// (2.3M entries/s, some 210 MB/s in snapshot datagrams), so a resync
	// is never slowed by it, yet bounded. (128 MiB/s, the pace before,
	// was below that: it alone held a 1M-entry transfer to 0.7 s.)
	transferRate  = 1 << 30 // bytes per second
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

// ownStream is this node's own closed change datagrams: a snapshot is as
// of the latest one. [*resendBuffer] implements it.
type ownStream interface {
	held() (first, last uint64, ok bool)
	// floor is the oldest stamp among the records of the datagrams from
	// from on; ok is false when it is no longer known.
	floor(from uint64) (f hlc.Stamp, ok bool)
}

// snapshotServer streams snapshots of the local maps to peers that ask
// for a full resync, at most maxTransfers at once: under [Node.Run] one
// goroutine per transfer drives it, under a simulator [snapshotServer.step]
// drives them all. It answers only known peers at their bound address (the
// dispatcher sees to that), at most one new transfer per peer per
// transferEvery, and refuses while this node is not itself in sync.
//
// Its lock guards the transfers: the dispatcher calls it with the receive
// lock held (the peers it is given are guarded by that one), a transfer's
// goroutine without; it never takes the receive lock itself.
type snapshotServer struct {
	time  Time
	table *Table
	know  *knowledge.Store
	clock *hlc.Clock
	tr    Transport
	node  uint32
	epoch uint64
	// sealed: every header says its datagram is sealed.
	sealed bool
	own    ownStream
	stats  *Stats
	log    *slog.Logger
	// answer is the status of this node's answer to p's request (see
	// [Node.answer]).
	answer func(p *peer) uint8

	wg   sync.WaitGroup // the transfers' goroutines
	stop chan struct{}  // closed at shutdown

	mu        sync.Mutex           // guards everything below
	transfers map[uint32]*transfer // by requester node
	started   map[uint32]time.Time // when each requester's last transfer started
	// spawn: each transfer gets a goroutine of its own ([Node.Run]);
	// otherwise step drives them.
	spawn bool
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
	// since, unless 0, makes the snapshot a delta: only the entries and
	// deletes stamped at or after it (see [wire.SyncStart].Since).
	since hlc.Stamp
	// stream is the transfer's sending state; began, when it began.
	stream *snapshotStream
	began  time.Time
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
// from, unless 0, asks for a delta: p applied every change datagram of
// this node's before it (see [snapshotServer.deltaSince]).
func (s *snapshotServer) request(p *peer, h *wire.Header, filter *wire.BucketFilter, from uint64, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, _ := wire.SplitSyncSeq(h.Seq)
	if t := s.transfers[p.node]; t != nil && t.id == id {
		s.send(p, t.start, now)
		return nil
	}
	st := wire.SyncStart{Status: s.answer(p)}
	switch {
	case st.Status == wire.SyncNotReady:
	case now.Sub(s.started[p.node]) < transferEvery:
		st.Status = wire.SyncBusy
	case s.transfers[p.node] == nil && len(s.transfers) >= maxTransfers:
		st.Status = wire.SyncBusy
	default:
		// Every change after the latest closed datagram is in a later
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
		if from != 0 && filter == nil {
			st.Since = uint64(s.deltaSince(from, hlc.Stamp(st.Stamp)))
		}
	}
	answer := wire.Header{Kind: wire.KindSyncStart, Node: s.node, Epoch: s.epoch, Seq: h.Seq, Sealed: s.sealed}
	b, err := answer.AppendTo(make([]byte, 0, wire.HeaderSize+wire.SyncStartSize))
	if err == nil {
		b, err = st.AppendTo(b)
	}
	if err != nil {
		return fmt.Errorf("encode sync start: %w", err)
	}
	start := [][]byte{b}
	s.send(p, start, now)
	if st.Status != wire.SyncOK && st.Status != wire.SyncPartial {
		return nil
	}
	if old := s.transfers[p.node]; old != nil {
		s.stopTransfer(old)
	}
	t := &transfer{to: p.addr, node: p.node, id: id, start: start,
		acks: make(chan syncAck, 16), stop: make(chan struct{}), filter: filter, since: hlc.Stamp(st.Since), began: now}
	t.stream = newSnapshotStream(s, t)
	s.transfers[p.node] = t
	s.started[p.node] = now
	switch {
	case st.Since != 0:
		s.log.Info("serving a delta resync", "peer", p.node, "addr", p.addr, "request", id, "as_of", st.AsOf,
			"from", from, "since", hlc.Stamp(st.Since))
	case filter == nil:
		s.log.Info("serving a full resync", "peer", p.node, "addr", p.addr, "request", id, "as_of", st.AsOf)
	}
	if s.spawn {
		s.wg.Add(1)
		go s.serve(t)
	}
	return nil
}

// deltaSince returns the oldest stamp a delta resync for a requester that
// applied every change datagram of this node's before from must carry, or
// 0 for a full one: the oldest stamp among the records of those datagrams
// (a relayed record may be far older than its datagram), when it is still
// known, and no delete stamped since is forgotten, and the capture lost
// nothing since (a delete it lost would be found only by a full one). A
// from after the latest datagram gets now: nothing was sent since. Any
// from, forged or not, gets a snapshot no larger than a full one.
func (s *snapshotServer) deltaSince(from uint64, now hlc.Stamp) hlc.Stamp {
	f, ok := s.own.floor(from)
	if !ok {
		s.log.Debug("a delta resync is asked from a datagram whose stamps are forgotten: serving a full one", "from", from)
		return 0
	}
	f = min(f, now)
	h := s.know.Lock()
	forgotten, suspect := h.Forgotten(), h.SuspectBefore()
	h.Unlock()
	if f == 0 || forgotten >= f || suspect >= f {
		s.log.Debug("a delta resync is asked from before a forgotten delete, a capture loss or an unstamped record: serving a full one",
			"from", from, "since", f, "forgotten", forgotten, "suspect", suspect)
		return 0
	}
	return f
}

// stopTransfer stops t, replaced or forgotten. Its goroutine, if it has
// one, ends it; else it ends here.
func (s *snapshotServer) stopTransfer(t *transfer) {
	close(t.stop)
	if !s.spawn {
		t.stream.endReads()
	}
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
	s.mu.Lock()
	defer s.mu.Unlock()
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
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.transfers[p.node]; t != nil {
		s.stopTransfer(t)
		delete(s.transfers, p.node)
	}
	delete(s.started, p.node)
}

// spawnEach gives each transfer a goroutine of its own from now on.
func (s *snapshotServer) spawnEach() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spawn = true
}

// shutdown stops every transfer and waits for their goroutines.
func (s *snapshotServer) shutdown() {
	close(s.stop)
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.spawn {
		for _, t := range s.transfers {
			t.stream.endReads()
		}
	}
}

// serve drives the transfer on its own goroutine, in real time, and
// forgets it when done.
func (s *snapshotServer) serve(t *transfer) {
	defer s.wg.Done()
	err := t.stream.run()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ended(t, err)
}

// step drives every transfer that has no goroutine of its own, in the
// order of the requesters' node ids, and returns when it wants to be
// stepped again: the zero time if no transfer waits for anything.
func (s *snapshotServer) step(now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var wake time.Time
	for _, node := range slices.Sorted(maps.Keys(s.transfers)) {
		t := s.transfers[node]
		at, done, err := t.stream.step(now)
		if done || err != nil {
			s.ended(t, err)
			continue
		}
		if wake.IsZero() || at.Before(wake) {
			wake = at
		}
	}
	return wake
}

// ended forgets transfer t, which completed or failed, and tells of it.
// Call it with s.mu held.
func (s *snapshotServer) ended(t *transfer, err error) {
	t.stream.endReads()
	if s.transfers[t.node] == t {
		delete(s.transfers, t.node)
	}
	if err != nil {
		if !errors.Is(err, errTransferStopped) {
			s.log.Warn("full resync to a peer failed", "peer", t.node, "addr", t.to, "error", err)
		}
		return
	}
	st, took := t.stream, s.time.Now().Sub(t.began).Round(time.Millisecond)
	if t.filter != nil {
		s.log.Debug("digest repair served", "peer", t.node, "entries", st.entries, "took", took)
		return
	}
	s.stats.ResyncsSent.Add(1)
	kind := "full"
	if t.since != 0 {
		kind = "delta"
	}
	s.log.Info(kind+" resync served", "peer", t.node, "entries", st.entries, "datagrams", st.closed,
		"resent", st.resent, "took", took)
}

// snapshotStream is the sending state of one transfer. Datagram k of the
// snapshot lives in slot k % transferWindow until the requester
// acknowledges it. The local maps are read a batch at a time, as the
// window opens: [snapshotStream.records] yields the batches, pulled by
// [snapshotStream.fill].
type snapshotStream struct {
	s       *snapshotServer
	t       *transfer
	w       wire.ChangeWriter
	header  wire.Header
	slots   [transferWindow][]byte // each of the payload size, made when first used (see slot)
	lens    [transferWindow]int    // of the datagram in each slot
	sentAt  [transferWindow]time.Time
	end     []byte // the end datagram, once every record is in a closed one
	done    bool   // the requester acknowledged the end
	closed  uint32 // datagrams closed and sent
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

	next    func() (recordBatch, bool) // the next batch of records; see records
	stop    func()                     // ends records early
	readErr error                      // what ended records early
	cur     recordBatch                // the batch being added
	pos     int                        // its next record
	frag    int                        // the next fragment of that record, if it travels in fragments
	open    bool                       // a datagram is being built in the next slot
	// resendAt, while the stream waits for acknowledgements, is when
	// the oldest unacknowledged datagram is sent again; zero otherwise.
	resendAt time.Time
}

// recordBatch is records of one map with one operation: the records at
// positions pick (all n of them if pick is nil) of keys and vals (none
// for deletes), packed, with their versions in vers.
type recordBatch struct {
	m          *localMap
	op         ops.Op
	n          int
	keys, vals []byte
	pick       []int
	vers       []knowledge.Version
}

// at returns the batch's record i.
func (b *recordBatch) at(i int) (key, val []byte, v knowledge.Version) {
	o := i
	if b.pick != nil {
		o = b.pick[i]
	}
	key = b.keys[o*b.m.keySize : (o+1)*b.m.keySize]
	if b.op == ops.Update {
		val = b.vals[o*b.m.valueSize : (o+1)*b.m.valueSize]
	}
	return key, val, b.vers[i]
}

func newSnapshotStream(s *snapshotServer, t *transfer) *snapshotStream {
	st := &snapshotStream{s: s, t: t, heard: s.time.Now(), cwnd: initialWindow, rto: transferRTO,
		budget: byteBudget{rate: transferRate, burst: transferBurst}, batch: make([][]byte, 0, sendBatch),
		header: wire.Header{Kind: wire.KindSnapshot, Node: s.node, Epoch: s.epoch, Sealed: s.sealed}, know: s.know}
	st.next, st.stop = iter.Pull(st.records)
	return st
}

// slot is the buffer of datagram n, made when first used: a small map's
// snapshot fills few of the window's, and making all 1,024 up front
// (1.4 MiB) was most of what serving it cost.
func (st *snapshotStream) slot(n uint32) []byte {
	b := &st.slots[n%transferWindow]
	if *b == nil {
		*b = make([]byte, st.s.table.payload)
	}
	return *b
}

// endReads ends the reading of the maps, if it has not ended.
func (st *snapshotStream) endReads() { st.stop() }

// run drives the stream in real time until the requester has everything,
// the transfer is stopped, or the requester went silent.
func (st *snapshotStream) run() error {
	defer st.endReads()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := st.s.time.Now()
		wake, done, err := st.step(now)
		if done || err != nil {
			return err
		}
		timer.Reset(wake.Sub(now))
		select {
		case <-st.t.stop:
			return errTransferStopped
		case <-st.s.stop:
			return errTransferStopped
		case a := <-st.t.acks:
			st.take(a, st.s.time.Now())
		case <-timer.C:
		}
	}
}

// step does what the transfer has to at now: takes the acknowledgements
// that arrived, sends again what timed out, and sends what the window
// and the pace allow. It returns when it wants to be stepped again, or
// that the requester has everything, or why it failed.
func (st *snapshotStream) step(now time.Time) (wake time.Time, done bool, err error) {
	for {
		select {
		case <-st.t.stop:
			return time.Time{}, false, errTransferStopped
		case a := <-st.t.acks:
			st.take(a, now)
			continue
		default:
		}
		break
	}
	if !st.resendAt.IsZero() && !now.Before(st.resendAt) {
		if now.Sub(st.heard) >= transferTimeout {
			return time.Time{}, false, errTransferSilent
		}
		st.timeout(now)
		st.resendAt = now.Add(st.rto)
	}
	if err := st.fill(now); err != nil {
		return time.Time{}, false, err
	}
	if !st.flush(now) {
		return now.Add(time.Millisecond), false, nil // paced
	}
	if st.done {
		return time.Time{}, true, nil
	}
	if st.resendAt.IsZero() {
		st.resendAt = now.Add(st.rto) // waiting for acknowledgements
	}
	return st.resendAt, false, nil
}

// records yields every local map's entries (those of the filter's map
// and buckets, with a filter; those stamped at or after since, in a
// delta), a read batch at a time, each with the
// version this node knows of it, looked up under the knowledge lock with
// the read of the entry; then the map's deletes this node remembers and
// still takes as the latest write of their keys (in a delta, those stamped
// at or after since).
func (st *snapshotStream) records(yield func(recordBatch) bool) {
	f := st.t.filter
	for i := range st.s.table.maps {
		m := &st.s.table.maps[i]
		if f != nil && f.Map != m.fp {
			continue
		}
		err := st.know.ReadMap(m.Target, m.keySize, m.valueSize, func(h knowledge.Held, ks, vs []byte) {
			st.vers, st.pick = st.vers[:0], st.pick[:0]
			now := st.s.time.Now()
			for o := 0; o*m.keySize < len(ks); o++ {
				key := ks[o*m.keySize : (o+1)*m.keySize]
				if f != nil && !inFilter(f, digestKeyHash(key)) {
					continue
				}
				v := h.Current(m.index, key, vs[o*m.valueSize:(o+1)*m.valueSize], now)
				if v.Stamp < st.t.since {
					continue // a delta's requester has it
				}
				st.vers, st.pick = append(st.vers, v), append(st.pick, o)
			}
		}, func(ks, vs []byte) error {
			if m.plan != nil {
				for _, o := range st.pick {
					m.plan.toWire(vs[o*m.valueSize : (o+1)*m.valueSize]) // the batch's buffer is read into anew next
				}
			}
			if !yield(recordBatch{m: m, op: ops.Update, n: len(st.vers), keys: ks, vals: vs, pick: st.pick, vers: st.vers}) {
				return errTransferStopped
			}
			return nil
		})
		if err != nil {
			if !errors.Is(err, errTransferStopped) {
				st.readErr = fmt.Errorf("map %s: %w", m.Desc.Name, err)
			}
			return
		}
		var keys []byte
		st.vers = st.vers[:0]
		h := st.know.Lock()
		for key, e := range h.Tombstones(m.index) {
			if (f == nil || inFilter(f, digestKeyHash(key))) && e.Version().Stamp >= st.t.since {
				keys = append(keys, key...)
				st.vers = append(st.vers, e.Version())
			}
		}
		h.Unlock()
		if !yield(recordBatch{m: m, op: ops.Delete, n: len(st.vers), keys: keys, vers: st.vers}) {
			return
		}
	}
}

// fill adds records to datagrams while the window has room, numbering
// and queueing each as it fills; after the last record it queues the
// end. It stops early when the queue is full and the pace holds it.
func (st *snapshotStream) fill(now time.Time) error {
	for st.end == nil {
		if len(st.batch) >= sendBatch && !st.flush(now) {
			return nil
		}
		if st.pos == st.cur.n {
			b, ok := st.next()
			if !ok {
				return st.finish(now)
			}
			st.cur, st.pos = b, 0
			continue
		}
		// An update too large for a datagram goes in fragments, each in
		// a datagram of its own.
		large := st.cur.op == ops.Update && st.cur.m.fragments > 0
		if large && st.open && st.w.Count() > 0 {
			st.closeDatagram(now)
			continue
		}
		if !st.open {
			next := st.closed + 1
			if next-st.acked > st.cwnd {
				return nil // the window is full
			}
			// Base 0: the snapshot's own entries are stamped at all
			// times, so offsets from any one base save little.
			st.w.Reset(st.slot(next), st.s.node, 0)
			st.open, st.resendAt = true, time.Time{}
		}
		key, val, v := st.cur.at(st.pos)
		if large {
			st.addFragment(key, val, v, now)
			continue
		}
		// NewTable checked that one record fits an empty datagram.
		if !st.w.Append(st.cur.m.fp, st.cur.op, uint64(v.Stamp), v.Origin, key, val) {
			st.closeDatagram(now)
			continue
		}
		st.entries++
		st.pos++
	}
	return nil
}

// addFragment writes the next fragment of the current record, an update
// of a map whose values travel in fragments, into the open datagram, which
// holds nothing else, and closes it; after the last fragment it moves on
// to the next record.
func (st *snapshotStream) addFragment(key, val []byte, v knowledge.Version, now time.Time) {
	m := st.cur.m
	// NewTable planned the fragments to fit an empty datagram each.
	if !st.w.AppendFragment(m.fp, uint64(v.Stamp), v.Origin, key, val, st.frag, m.fragments) {
		panic("replication: a fragment does not fit the datagram NewTable planned it for")
	}
	st.closeDatagram(now)
	st.s.stats.FragmentsSent.Add(1)
	if st.frag++; st.frag < m.fragments {
		return
	}
	st.frag = 0
	st.entries++
	st.pos++
}

// finish closes the last datagram, once every record is in, and queues
// the end.
func (st *snapshotStream) finish(now time.Time) error {
	if st.readErr != nil {
		return st.readErr
	}
	if st.open && st.w.Count() > 0 {
		st.closeDatagram(now)
	}
	end := wire.Header{Kind: wire.KindSyncEnd, Node: st.s.node, Epoch: st.s.epoch, Seq: wire.SyncSeq(st.t.id, st.closed), Sealed: st.s.sealed}
	var err error
	if st.end, err = end.AppendTo(nil); err != nil {
		return fmt.Errorf("encode sync end: %w", err)
	}
	st.send(st.end)
	return nil
}

// closeDatagram numbers the datagram being built and queues it.
func (st *snapshotStream) closeDatagram(now time.Time) {
	st.closed++
	st.open = false
	st.header.Seq = wire.SyncSeq(st.t.id, st.closed)
	d := st.w.Finish(st.header)
	i := st.closed % transferWindow
	st.lens[i] = len(d)
	st.sentAt[i] = now
	st.send(d)
}

// send queues one datagram for the requester; they go out in batches,
// one system call (and, with GSO, one message) for up to sendBatch of
// them. A failure is counted; the datagram is sent again when it is not
// acknowledged in time.
func (st *snapshotStream) send(d []byte) { st.batch = append(st.batch, d) }

// flush sends the queued datagrams, a batch at a time, as far as the
// transfer's byte budget covers them, and reports whether it sent them
// all: a requester can acknowledge what it never received (without a key
// its address may be forged), so what a transfer sends is bounded in
// rate as well as by the window.
func (st *snapshotStream) flush(now time.Time) bool {
	for len(st.batch) > 0 {
		b := st.batch[:min(len(st.batch), sendBatch)]
		n := 0
		for _, d := range b {
			n += len(d)
		}
		if !st.budget.take(n, now) {
			return false
		}
		if err := st.s.tr.SendTo(st.t.to, b); err != nil {
			st.s.stats.SendErrors.Add(1)
		}
		st.batch = append(st.batch[:0], st.batch[len(b):]...)
	}
	return true
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

// take applies an acknowledgement: the window opens by what it
// acknowledges, and what it shows missing is sent again.
func (st *snapshotStream) take(a syncAck, now time.Time) {
	st.heard = now
	st.rto = transferRTO
	if cum := min(a.cum, st.closed); cum > st.acked {
		st.cwnd = min(transferWindow, st.cwnd+cum-st.acked)
		st.acked = cum
	}
	st.done = st.end != nil && a.cum > st.closed // the end counts as one more
	for _, rg := range a.missing.Ranges[:a.missing.N] {
		lo, hi := max(rg.First, uint64(st.acked)+1), min(rg.Last, uint64(st.closed))
		for k := lo; k <= hi; k++ {
			st.resend(uint32(k), now, transferRTO/4)
		}
	}
}

// timeout resends the oldest unacknowledged datagram, and the end, and
// backs off: a requester that does not acknowledge gets less and less.
func (st *snapshotStream) timeout(now time.Time) {
	if st.acked < st.closed {
		st.resend(st.acked+1, now, st.rto)
	} else if st.end != nil {
		st.send(st.end)
	}
	st.rto = min(2*st.rto, maxTransferRTO)
}
