package replication

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// Sender defaults.
const (
	DefaultFlushInterval    = 200 * time.Microsecond
	DefaultAnnounceInterval = time.Second
)

const (
	// sendBatch is how many closed datagrams go to the transport in one
	// batched write.
	sendBatch = 64
	// clockEvery is how many changes the sender reads between two clock
	// reads while it drains the source.
	clockEvery = 32
	// stageSize is how many changes the sender reads before it stamps
	// them together (see [sender.stampStaged]): enough for their
	// knowledge look-ups to wait for memory at once, few enough that the
	// knowledge lock is held for a few microseconds at most.
	stageSize = 32
	// overflowCheck is how often the sender asks the source whether it
	// lost changes.
	overflowCheck = 10 * time.Millisecond
	// relayPoll bounds how long an idle sender leaves relayed entries
	// waiting: it does not block on the source for longer.
	relayPoll = 20 * time.Millisecond
	// captureSlack is how long after a write its change may still be on
	// its way into the capture ring (between the kernel's write and the
	// capture program's queueing of it), once the write has returned.
	captureSlack = 10 * time.Millisecond
	// raceSlack is how long before the sender last found the capture
	// ring empty a change it reads after may have been written, for the
	// check of [sender.stamp]: the syscall backend captures a batch
	// command's elements only at the command's exit, and an element
	// written early in a batch of thousands can be that old on a busy
	// machine. Too short a bound lets a local write overwritten by an
	// apply win on the peers. Longer costs only the map reads of local
	// changes of keys applied within it.
	raceSlack = time.Second
)

// senderConfig configures a [sender].
type senderConfig struct {
	Source    Source
	Transport Transport
	Table     *Table
	Node      uint32 // this node's id, in every header
	Epoch     uint64 // this run's boot epoch, in every header
	Sealed    bool   // every header says its datagram is sealed: the node has keys
	// FlushInterval bounds how long a captured change waits for more
	// changes to share its datagram (default [DefaultFlushInterval]).
	FlushInterval time.Duration
	// AnnounceInterval is the period of announce datagrams (default
	// [DefaultAnnounceInterval]).
	AnnounceInterval time.Duration
	// Resend, when set, keeps every closed datagram so that the receiver
	// can answer repair requests for it.
	Resend *resendBuffer
	// Ready reports whether this node completed its initial sync, which
	// its announces advertise ([wire.FlagReady]); nil means always.
	Ready func() bool
	// Knowledge is where every captured change's version is recorded.
	Knowledge *knowledge.Store
	// Prints, when set, records the captured values of scanned maps.
	Prints *printTable
	Clock  *hlc.Clock
	// Time is where the sender reads the time and sleeps; nil means the
	// system's clock.
	Time Time
	// Relay holds the entries the receive side passes on to the group.
	Relay *relayQueue
	Stats *Stats
	Log   *slog.Logger
}

// sender reads changes from a [Source], coalesces them per key, packs them
// into sequenced datagrams and sends them in batches. It also announces the
// local maps' descriptors periodically. All its methods run on the
// goroutine that calls [sender.Run].
type sender struct {
	time          Time
	src           Source
	tr            Transport
	table         *Table
	resend        *resendBuffer
	ready         func() bool
	know          *knowledge.Store
	prints        *printTable
	clock         *hlc.Clock
	relay         *relayQueue
	stats         *Stats
	log           *slog.Logger
	limit         limiter
	payload       int
	flushInterval time.Duration
	announceEvery time.Duration
	// activeWindow is how long after the last change the sender keeps
	// polling the source every flush interval: the capture's
	// [loader.PollWindow]. While changes flow, polling is what bounds
	// latency; once idle, the kernel's wake-up for the next change is
	// enough.
	activeWindow time.Duration

	// The loop's state: the time as last read, when the next announce is
	// due, the last change read, whether the source is polled, and how
	// many changes were read.
	now          time.Time
	nextAnnounce time.Time
	lastChange   time.Time
	polling      bool
	reads        int

	header wire.Header // Node and Epoch set; Seq of the last closed datagram
	pend   pending
	since  time.Time // arrival of the oldest pending change
	w      wire.ChangeWriter
	bufs   [sendBatch][]byte
	queued [][]byte // closed datagrams, slices of bufs

	announces      [][]byte // descriptors prebuilt after a header-sized gap
	announceCounts []uint16 // descriptors in each announce
	// greet asks for an announce now: discovery found new peers
	// ([Node.SetPeers]). Set by another goroutine.
	greet atomic.Bool
	// ringSize is the source's capacity in bytes, 0 if it does not say:
	// the sender holds back for a peer's repair only while the source
	// has room (see [sender.holdBack]). checked is the last datagram
	// closed when it looked.
	ringSize int
	checked  uint64

	// drained is when the sender last found the source empty: every
	// change read after it was made after drained less captureSlack, or
	// raceSlack for the elements of a batch command.
	// drainedAt is the same in Unix nanoseconds, for other goroutines.
	drained   time.Time
	drainedAt atomic.Int64
	// lookup is a value buffer per map, for the reads of [sender.stillHolds].
	lookup [][]byte
	// whole is a value of the largest map with fields whose updates
	// travel in fragments, in the form it has on the wire, as
	// [sender.fragment] cuts it.
	whole []byte

	// Counted locally and published at each send, to keep atomics off the
	// per-change path.
	captured, coalesced, bad, changes, superseded, relayed, fragments uint64

	overflows        uint64    // the source's count when last checked
	overflowsChecked time.Time // when that was
	lossPending      bool      // changes were lost: see lostChanges

	last *localMap // map of the previous change: changes come in runs
	ch   loader.Change

	// staged is the changes read and not yet stamped, whose keys and
	// values stageData holds back to back, copied out of the source's
	// buffer, which the next read reuses.
	staged    []stagedChange
	stageData []byte
	// stagedFrom and stagedAt are when the first and the last of them
	// were read.
	stagedFrom, stagedAt time.Time
	// touched sums what the touches of the knowledge read, so that the
	// compiler keeps them.
	touched uint64
}

// stagedChange is a change read from the source, checked, and waiting to
// be stamped.
type stagedChange struct {
	m    *localMap
	op   ops.Op
	hash uint64            // of the key, in the knowledge
	at   int               // where its key starts in stageData; its value follows
	v    knowledge.Version // once stamped
}

// newSender prepares a sender for datagrams of the table's payload size;
// nothing is sent before [sender.Run].
func newSender(cfg senderConfig) *sender {
	s := &sender{
		time:          cmp.Or[Time](cfg.Time, SystemTime{}),
		src:           cfg.Source,
		tr:            cfg.Transport,
		table:         cfg.Table,
		resend:        cfg.Resend,
		ready:         cfg.Ready,
		know:          cfg.Knowledge,
		prints:        cfg.Prints,
		clock:         cfg.Clock,
		relay:         cfg.Relay,
		stats:         cfg.Stats,
		log:           cfg.Log,
		payload:       cfg.Table.payload,
		flushInterval: cmp.Or(cfg.FlushInterval, DefaultFlushInterval),
		announceEvery: cmp.Or(cfg.AnnounceInterval, DefaultAnnounceInterval),
		activeWindow:  loader.PollWindow,
		header:        wire.Header{Node: cfg.Node, Epoch: cfg.Epoch, Sealed: cfg.Sealed},
		pend:          newPending(cfg.Table, cfg.Node),
		queued:        make([][]byte, 0, sendBatch),
		staged:        make([]stagedChange, 0, stageSize),
	}
	s.limit.time = s.time
	if r, ok := cfg.Source.(interface{ Size() int }); ok {
		s.ringSize = r.Size()
	}
	record := 0 // the largest key and value of a map
	for i := range cfg.Table.maps {
		m := &cfg.Table.maps[i]
		s.lookup = append(s.lookup, make([]byte, m.valueSize))
		if m.fragments > 0 && m.plan != nil && m.valueSize > len(s.whole) {
			s.whole = make([]byte, m.valueSize)
		}
		record = max(record, m.keySize+m.valueSize)
	}
	// Room for stageSize changes of a datagram's size, and for one of any
	// size: a larger value (one sent in fragments) is stamped with fewer
	// changes staged beside it.
	s.stageData = make([]byte, 0, stageSize*min(record, s.payload)+record)
	for i := range s.bufs {
		s.bufs[i] = make([]byte, s.payload)
	}
	s.announces, s.announceCounts = buildAnnounces(cfg.Table)
	return s
}

// buildAnnounces lays out the descriptors of every local map in as few
// datagrams as fit the payload, leaving each datagram's header to be
// written at send time, and counts the descriptors in each.
func buildAnnounces(t *Table) (dgrams [][]byte, counts []uint16) {
	payload := t.payload
	cur := make([]byte, wire.HeaderSize, payload)
	var n uint16
	for i := range t.maps {
		d := &t.maps[i].Desc
		if d.EncodedSize() > payload-len(cur) {
			dgrams, counts = append(dgrams, cur), append(counts, n)
			cur, n = make([]byte, wire.HeaderSize, payload), 0
		}
		cur, _ = d.AppendTo(cur) // NewTable checked every descriptor
		n++
	}
	return append(dgrams, cur), append(counts, n)
}

// Run replicates changes until the source fails. After ctx is done it
// flushes what it holds and returns nil at the next read error or
// deadline; close the source to make that immediate.
func (s *sender) Run(ctx context.Context) error {
	s.begin()
	for {
		drained, err := s.took(s.src.Read(&s.ch))
		if ctx.Err() != nil && (drained || err != nil) {
			s.sendLast()
			return nil
		}
		if err != nil {
			return err
		}
		if drained && s.polling {
			s.time.Sleep(s.flushInterval)
			s.src.SetDeadline(s.time.Now())
		}
		s.due()
		s.holdBack()
	}
}

// holdBackStep is how long the sender waits before it looks again whether
// a peer still needs what it would evict.
const holdBackStep = time.Millisecond

// holdBack is flow control: while a peer still asks for a datagram the
// resend buffer is about to evict (see [resendBuffer.holdBack]), the
// sender sends what it closed and waits, and the changes wait in the
// capture ring, up to half of it; so a receiver slower than the writers
// lags behind instead of losing datagrams nobody holds any more, which
// only a full resync would bring. It looks once per datagram closed,
// and only while a peer's request is recorded. A simulated sender
// ([sender.step]) never waits.
func (s *sender) holdBack() {
	if s.ringSize == 0 || s.resend == nil || !s.resend.pressed.Load() || s.checked == s.header.Seq {
		return
	}
	s.checked = s.header.Seq
	start := s.time.Now()
	for now := start; s.resend.holdBack(now) && s.src.Buffered() < s.ringSize/2; now = s.time.Now() {
		s.send()
		s.time.Sleep(holdBackStep)
	}
	if s.time.Now().Sub(start) >= holdBackStep {
		s.stats.HeldBack.Add(1)
		s.now = s.time.Now()
	}
	if node, ok := s.resend.takeOverShare(); ok {
		s.stats.HoldsRefused.Add(1)
		if m, ok := s.limit.allow(reasonHold); ok {
			s.log.Warn("a peer keeps asking for datagrams about to leave the resend buffer; the sender goes on without waiting for it beyond its share of the time",
				"peer", node, "suppressed", m)
		}
	}
}

// step does the sender's work of the present moment without waiting:
// every change the source holds, then what is due. It returns when it
// wants to be stepped again: a flush interval later while changes flow,
// else at the source's idle deadline. A simulator's source returns
// [os.ErrDeadlineExceeded] whenever it is empty, whatever the deadline.
func (s *sender) step() (time.Time, error) {
	for {
		drained, err := s.took(s.src.Read(&s.ch))
		if err != nil {
			return time.Time{}, err
		}
		s.due()
		if drained {
			break
		}
	}
	if s.polling {
		return s.now.Add(s.flushInterval), nil
	}
	return idleDeadline(s.nextAnnounce, s.now), nil
}

// sendLast sends what is pending and a last announce, so that the peers
// learn the number of this run's last datagram, and resync from the
// node's next run what of this one they did not get.
func (s *sender) sendLast() {
	s.flush()
	s.announce()
}

// begin sends the first announce and sets the first deadline.
func (s *sender) begin() {
	s.announce()
	s.now = s.time.Now()
	s.nextAnnounce = s.now.Add(s.announceEvery)
	s.src.SetDeadline(idleDeadline(s.nextAnnounce, s.now))
}

// took handles what one read of the source returned: a change is
// coalesced, and what is pending sent once the source is drained or the
// oldest pending change has waited the flush interval; a deadline means
// the source is drained, and everything pending is sent. It reports
// whether the source was found drained, and its failure.
func (s *sender) took(err error) (drained bool, _ error) {
	switch {
	case err == nil:
		// While the ring is being drained the clock is read once every
		// clockEvery changes, not per change: a clock read costs as
		// much as coalescing the change. now is then at most that
		// many changes old, far less than the flush interval.
		if s.reads++; !s.polling || s.reads%clockEvery == 0 {
			s.now = s.time.Now()
			s.lastChange = s.now
		}
		if !s.polling {
			s.polling = true
			s.src.SetDeadline(s.now) // read what is queued without waiting
		}
		s.add(&s.ch, s.now)
		if s.src.Buffered() == 0 {
			s.now = s.time.Now()
			s.setDrained(s.now)
			s.lastChange = s.now
			s.takeRelayed()
			s.flush()
		} else if !s.pend.empty() && s.now.Sub(s.since) >= s.flushInterval {
			// since is the oldest pending change's: staged ones are not
			// yet pending, and wait no more than stageSize reads.
			s.flush()
		}
		return false, nil
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.now = s.time.Now()
		s.setDrained(s.now)
		s.takeRelayed()
		s.flush()
		if s.polling = s.now.Sub(s.lastChange) < s.activeWindow; !s.polling {
			s.src.SetDeadline(idleDeadline(s.nextAnnounce, s.now))
		}
		return true, nil
	}
	s.flush()
	return false, fmt.Errorf("read changes: %w", err)
}

// due checks the source for lost changes and announces, each when its
// time has come.
func (s *sender) due() {
	if s.now.Sub(s.overflowsChecked) >= overflowCheck {
		s.checkOverflows(s.now)
	}
	if s.greet.Swap(false) || !s.now.Before(s.nextAnnounce) {
		s.flush()
		s.announce()
		s.nextAnnounce = s.now.Add(s.announceEvery)
		if !s.polling {
			s.src.SetDeadline(idleDeadline(s.nextAnnounce, s.now))
		}
	}
}

func (s *sender) setDrained(now time.Time) {
	s.stampStaged() // read before now: see stampStaged
	s.drained = now
	s.drainedAt.Store(now.UnixNano())
	if s.lossPending {
		s.lostChanges(now)
	}
}

// idleDeadline is how long an idle sender waits for the source: until the
// next announce, and no longer than relayPoll, so that relayed entries do
// not wait for a change to wake it.
func idleDeadline(nextAnnounce, now time.Time) time.Time {
	if relay := now.Add(relayPoll); relay.Before(nextAnnounce) {
		return relay
	}
	return nextAnnounce
}

// add checks one change and stages it: it is stamped and queued with the
// changes read after it, at the latest once the source has drained (see
// [sender.stampStaged]).
func (s *sender) add(ch *loader.Change, now time.Time) {
	s.captured++
	m := s.last
	if m == nil || m.ID != ch.MapID {
		if m = s.table.byID(ch.MapID); m == nil {
			s.badChange(ch, "map not replicated")
			return
		}
		s.last = m
	}
	op := ops.Op(ch.Op)
	switch {
	case op != ops.Update && op != ops.Delete:
		s.badChange(ch, "unknown operation")
		return
	case len(ch.Key) != m.keySize || (op == ops.Update && len(ch.Value) != m.valueSize):
		s.badChange(ch, "key or value size differs from the map's")
		return
	}

	if m.plan != nil && op == ops.Update {
		m.plan.clearLock(ch.Value) // as the map holds it, for the check against the map
	}
	if len(s.stageData)+len(ch.Key)+len(ch.Value) > cap(s.stageData) {
		s.stampStaged() // a large value: it waits with fewer others
	}
	if len(s.staged) == 0 {
		s.stagedFrom = now
	}
	s.staged = append(s.staged, stagedChange{m: m, op: op, hash: s.know.Hash(ch.Key), at: len(s.stageData)})
	s.stageData = append(s.stageData, ch.Key...)
	if op == ops.Update {
		s.stageData = append(s.stageData, ch.Value...)
	}
	if s.stagedAt = now; len(s.staged) == stageSize {
		s.stampStaged()
	}
}

// stampStaged stamps the staged changes, in the order they were read, at
// the time the last was read, and queues those no later write superseded
// as pending since the first was read.
//
// Their versions are recorded under one hold of the knowledge lock, and
// the slot of every key is touched before any is looked up: the touches
// do not depend on one another, so the processor waits for their cache
// misses together, where one look-up per change waited for its own (a key
// not written recently is not in the cache). A staged change waits as it
// waited in the capture ring: an apply of its key meanwhile is the apply
// race, which the check in [sender.stamp] decides by the map, against the
// drained time of when the change was read, since the sender stamps what
// it staged before it moves that time (see [sender.setDrained]). Nothing
// read after a change is stamped, queued or sent before it.
func (s *sender) stampStaged() {
	if len(s.staged) == 0 {
		return
	}
	now := s.stagedAt
	h := s.know.Lock()
	for i := range s.staged {
		s.touched += h.Touch(s.staged[i].m.index, s.staged[i].hash)
	}
	for i := range s.staged {
		c := &s.staged[i]
		key, value := s.stagedRecord(i)
		var ok bool
		if c.v, ok = s.stamp(h, c.m, c.op, c.hash, key, value, now); !ok {
			c.m = nil // superseded: a later write holds the key
		}
	}
	h.Unlock()
	for i := range s.staged {
		c := &s.staged[i]
		if c.m == nil {
			s.superseded++
			continue
		}
		key, value := s.stagedRecord(i)
		s.queue(c.m, c.op, c.v, key, value, s.stagedFrom) // pending since the first was read
	}
	s.staged, s.stageData = s.staged[:0], s.stageData[:0]
}

// stagedRecord returns the key and value of staged change i, the value
// nil for a delete.
func (s *sender) stagedRecord(i int) (key, value []byte) {
	c := &s.staged[i]
	at := c.at + c.m.keySize
	if c.op == ops.Update {
		value = s.stageData[at : at+c.m.valueSize]
	}
	return s.stageData[c.at:at], value
}

// stamp gives a captured change its version and records it as the
// latest write of its key, whose knowledge hash is hash, unless a later
// write already superseded it; h is the knowledge, held.
//
// The kernel map is written outside any lock of ours: a local write and
// this node's apply of a peer's change of the same key can cross, and the
// capture delivers the local write only after the apply. A change read
// after the source was last found drained was made after drained less
// raceSlack; if the key's last remote apply ended after that, the
// order is unknown and the map decides: the change is stamped if the map
// still holds what it wrote, and dropped otherwise, since a later write,
// the apply or a local one still to be read, then holds the key. The
// receive side applies under the same lock, so nothing writes the key
// between that read and the version it decides.
func (s *sender) stamp(h knowledge.Held, m *localMap, op ops.Op, hash uint64, key, value []byte, now time.Time) (knowledge.Version, bool) {
	// One look-up, adding the key if new: a new entry was applied by no one.
	e := h.PutHash(m.index, hash)
	if h.AppliedSince(e, s.drained.Add(-raceSlack), now) && !s.stillHolds(m, op, key, value) {
		return knowledge.Version{}, false
	}
	v := knowledge.Version{Stamp: s.clock.At(now), Origin: s.header.Node}
	h.Set(e, m.index, key, v, op == ops.Delete, false, now)
	h.Note(m.index, key, v, op == ops.Delete, value)
	s.prints.record(m.index, op, key, value, now)
	return v, true
}

// stillHolds reports whether m holds what the change op wrote: its value,
// or, for a delete, no entry. A failed read counts as holding: the
// change is then sent as if no apply had crossed it.
func (s *sender) stillHolds(m *localMap, op ops.Op, key, value []byte) bool {
	s.stats.RaceChecks.Add(1)
	buf := s.lookup[m.index]
	found, err := m.Target.Lookup(key, buf)
	switch {
	case err != nil:
		return true
	case op == ops.Delete:
		return !found
	default:
		return found && bytes.Equal(buf, value)
	}
}

// queue coalesces one versioned change into the datagram being built,
// closing that datagram first when the change would not fit. Of two
// changes of one key the newer version stays.
func (s *sender) queue(m *localMap, op ops.Op, v knowledge.Version, key, value []byte, now time.Time) {
	p := &s.pend
	h := p.hash(m, key)
	e, slot := p.find(m, key, h)
	if e != nil && !v.Newer(e.v) {
		s.coalesced++
		return
	}
	if m.fragments > 0 && op == ops.Update {
		s.fragment(m, v, key, value)
		return
	}
	grow := p.growth(e, m, op, v)
	if p.size+grow > s.payload {
		s.closeDatagram()
		e, slot = p.find(m, key, h)
		grow = p.growth(e, m, op, v)
	}
	if p.empty() {
		s.since = now
	}
	p.size += grow
	if e != nil {
		s.coalesced++
		p.set(e, op, v, value)
		return
	}
	p.insert(slot, m, op, v, key, value)
}

// fragment sends an update of m too large for one datagram as its
// fragment records, each in a datagram of its own, numbered, kept for
// repair and sealed like any other, back to back: a receiver takes a
// change stream in order, so it never sees two records' fragments
// interleaved there. A pending change of the same key is older, and
// loses to this one wherever it arrives.
func (s *sender) fragment(m *localMap, v knowledge.Version, key, value []byte) {
	whole := value
	if m.plan != nil {
		whole = s.whole[:m.valueSize]
		copy(whole, value)
		m.plan.toWire(whole)
	}
	for i := range m.fragments {
		s.w.Reset(s.bufs[len(s.queued)], s.header.Node, uint64(v.Stamp))
		if !s.w.AppendFragment(m.fp, uint64(v.Stamp), v.Origin, key, whole, i, m.fragments) {
			panic("replication: a fragment does not fit the datagram NewTable planned it for")
		}
		s.queueDatagram(v.Stamp)
	}
	s.changes++
	s.fragments += uint64(m.fragments)
}

// takeRelayed queues the entries the receive side passes on, once the
// source has drained. Their values were read from the maps with the
// versions known then; a capture loss found only now may have left a
// lost local write under one of those versions. So the source is checked
// for a loss first, and an update whose version the loss makes suspect
// goes as a new write of this node's, as a snapshot would send it.
func (s *sender) takeRelayed() {
	if s.relay == nil || s.relay.waiting.Load() == 0 {
		return
	}
	now := s.time.Now()
	s.checkOverflows(now)
	if s.lossPending {
		s.lostChanges(now)
	}
	h := s.know.Lock()
	suspect := h.SuspectBefore()
	h.Unlock()
	n := s.relay.drain(func(m int, op ops.Op, v knowledge.Version, key, value []byte) {
		var ok bool
		if v, ok = s.relayedVersion(m, op, v, key, value, suspect, now); !ok {
			s.superseded++
			return
		}
		s.queue(&s.table.maps[m], op, v, key, value, now)
	})
	s.relayed += uint64(n)
}

// relayedVersion is the version a relayed write of key in map index m,
// recorded at v, goes at: none if v is no longer the version known of the
// key, since a later write superseded it and goes on its own (the value
// was read from the map, where it may be that later write, a local one
// not yet read from the capture); stamped anew if it is an update whose
// version a capture loss made suspect.
func (s *sender) relayedVersion(m int, op ops.Op, v knowledge.Version, key, value []byte, suspect hlc.Stamp, now time.Time) (knowledge.Version, bool) {
	h := s.know.Lock()
	defer h.Unlock()
	if e := h.Lookup(m, key); e == nil || e.Deleted() != (op == ops.Delete) || e.Version() != v {
		return v, false
	}
	if op == ops.Update && v.Stamp < suspect {
		return h.Current(m, key, value, now), true
	}
	return v, true
}

// badChange drops a change the source should never have produced.
func (s *sender) badChange(ch *loader.Change, why string) {
	s.bad++
	if n, ok := s.limit.allow(reasonMalformed); ok {
		s.log.Warn("dropping captured change", "reason", why, "map_id", ch.MapID, "op", ch.Op,
			"key_len", len(ch.Key), "value_len", len(ch.Value), "suppressed", n)
	}
}

// closeDatagram encodes the pending changes into the next free buffer as
// one datagram with the next sequence number, and sends the queue if full.
func (s *sender) closeDatagram() {
	if s.pend.empty() {
		return
	}
	floor := s.pend.encode(&s.w, s.bufs[len(s.queued)])
	s.changes += uint64(s.w.Count())
	s.pend.reset()
	s.queueDatagram(floor)
}

// queueDatagram numbers the datagram the writer holds, whose oldest
// record is stamped floor, keeps it in the resend buffer and queues it,
// sending the queue once it is full.
func (s *sender) queueDatagram(floor hlc.Stamp) {
	s.header.Seq++
	d := s.w.Finish(s.header)
	if s.resend != nil {
		s.resend.note(s.header.Seq, floor)
		s.resend.add(s.header.Seq, d)
	}
	s.queued = append(s.queued, d)
	if len(s.queued) == sendBatch {
		s.send()
	}
}

// flush closes and sends everything held.
func (s *sender) flush() {
	s.stampStaged()
	s.closeDatagram()
	s.send()
}

// send hands the closed datagrams to the transport in one batch and
// publishes the counters.
func (s *sender) send() {
	if len(s.queued) > 0 {
		var bytes uint64
		for _, d := range s.queued {
			bytes += uint64(len(d))
		}
		if err := s.tr.Send(s.queued); err != nil {
			s.sendFailed(err, len(s.queued))
		}
		s.stats.DatagramsSent.Add(uint64(len(s.queued)))
		s.stats.BytesSent.Add(bytes)
		s.queued = s.queued[:0]
	}
	s.stats.Captured.Add(s.captured)
	s.stats.Coalesced.Add(s.coalesced)
	s.stats.BadChanges.Add(s.bad)
	s.stats.ChangesSent.Add(s.changes)
	s.stats.Superseded.Add(s.superseded)
	s.stats.Relayed.Add(s.relayed)
	s.stats.FragmentsSent.Add(s.fragments)
	s.captured, s.coalesced, s.bad, s.changes, s.superseded, s.relayed, s.fragments = 0, 0, 0, 0, 0, 0, 0
}

// checkOverflows asks the source whether it lost changes since the last
// check. If it did, the peers cannot be told which; once the source has
// drained (see lostChanges), they are told to resync.
func (s *sender) checkOverflows(now time.Time) {
	s.overflowsChecked = now
	n, err := s.src.Overflows()
	if err != nil || n <= s.overflows {
		return
	}
	lost := n - s.overflows
	s.overflows = n
	s.stats.RingOverflows.Store(n)
	s.lossPending = true
	if m, ok := s.limit.allow(reasonOverflow); ok {
		s.log.Warn("capture ring buffer overflowed: changes were lost before they reached the daemon; peers will resync from this node. "+
			"Raise --ring-size if this repeats", "lost", lost, "lost_total", n, "suppressed", m)
	}
}

// lostChanges acts on a loss found by checkOverflows, once the source has
// drained: the sender skips a sequence number, recorded as lost in the
// resend buffer, so every peer sees a gap that cannot be repaired and asks
// this node for a full resync; and every version recorded until now is
// suspect, since the map may hold a lost write over it: a snapshot stamps
// such entries anew as it reads them (see [knowledge.Held.Current]). Not before
// the drain: the changes queued ahead of the lost ones were made before
// them, however late they are read, so a version recorded for one of
// them says nothing of what the map holds.
func (s *sender) lostChanges(now time.Time) {
	s.lossPending = false
	h := s.know.Lock()
	h.SuspectSince(s.clock.At(now))
	h.Unlock()
	s.flush()
	s.header.Seq++
	if s.resend != nil {
		s.resend.note(s.header.Seq, 0)
		s.resend.add(s.header.Seq, nil)
	}
}

// announce sends the descriptors of the local maps with the sequence
// number of the latest change datagram, so peers notice a lost tail.
func (s *sender) announce() {
	h := s.header
	h.Kind = wire.KindAnnounce
	if s.ready == nil || s.ready() {
		h.Flags = wire.FlagReady
	}
	for i, d := range s.announces {
		h.Count = s.announceCounts[i]
		_, _ = h.AppendTo(d[:0]) // cannot fail: an announce header, into the gap left for it
	}
	if err := s.tr.Send(s.announces); err != nil {
		s.sendFailed(err, len(s.announces))
	}
}

func (s *sender) sendFailed(err error, datagrams int) {
	s.stats.SendErrors.Add(1)
	if n, ok := s.limit.allow(reasonSend); ok {
		s.log.Error("sending datagrams failed; they are lost", "datagrams", datagrams, "error", err, "suppressed", n)
	}
}
