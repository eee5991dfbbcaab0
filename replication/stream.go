package replication

import (
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
	// long each time up to maxRetry (plus the back-off, asking the group),
	// until the gap is filled or the oldest missing datagram has been
	// missing for repairTimeout.
	firstRetry    = 10 * time.Millisecond
	maxRetry      = 200 * time.Millisecond
	repairTimeout = 2 * time.Second
)

// orderedStream is one peer's sequence of change datagrams as this node
// receives it: the next one to apply, the ones held back behind a missing
// one, and the timing of the requests for what is missing. It decides
// only what is in order; the caller applies, sends and holds the locks.
//
// Every sequence number it takes is in 1..[wire.MaxSeq] (the dispatcher
// drops others), and every loop over numbers counts at most the window,
// so no datagram can make its arithmetic wrap or its loops run long.
type orderedStream struct {
	next   uint64 // sequence number of the next datagram to apply
	seen   uint64 // highest number known sent, at most the end of the window
	latest uint64 // highest number the peer claimed, in a datagram or an announce
	window uint64 // how far past next a datagram may be held

	held  []heldDatagram // by seq % maxHeld; allocated at the first hold
	n     int            // datagrams held
	bytes int            // their size
	spare [][]byte       // buffers of applied held datagrams, reused

	// paused holds every datagram, in order or not: a resync request to
	// the peer waits for its answer.
	paused bool
	// skipUntil: the missing numbers below it were given up; release
	// passes over them (and applies what is held among them).
	skipUntil uint64
	// lostFrom is the lowest number given up without being applied, 0 if
	// none was since the last resync from the peer: this node has not
	// applied the peer's changes from there on, and serves no other peer
	// until it has (see Node.upToDate).
	lostFrom uint64

	since time.Time // when the oldest missing datagram, gapAt, was noticed missing; zero without a gap
	gapAt uint64    // the number that was next when since was set
	// askedThrough: every missing number up to it was asked for, by this
	// node or by another whose request to the group it heard. askAt is
	// when to ask first for the missing numbers after it (zero: none
	// waits), retryAt when to ask again for every missing number (zero:
	// nothing asked yet), interval the wait before that.
	askedThrough uint64
	askAt        time.Time
	retryAt      time.Time
	interval     time.Duration

	gaps uint64 // datagrams found missing in this epoch
}

// heldDatagram is a checked change datagram waiting for its turn; d is
// nil in an empty slot.
type heldDatagram struct {
	seq uint64
	d   []byte
}

// newStream starts a stream whose next datagram is first.
func newStream(first, window uint64) orderedStream {
	return orderedStream{next: first, seen: first - 1, latest: first - 1, window: window}
}

// position is where a sequence number falls in the stream.
type position uint8

const (
	posDuplicate position = iota // applied already, or held
	posNext                      // the next to apply, and nothing holds it
	posLater                     // in the window after a gap, or paused: to hold
	posBeyond                    // past the window: dropped, asked for again later
)

func (s *orderedStream) place(seq uint64) position {
	switch {
	case seq < s.next || s.isHeld(seq):
		return posDuplicate
	case seq-s.next >= s.window:
		return posBeyond
	case seq == s.next && !s.paused:
		return posNext
	}
	return posLater
}

func (s *orderedStream) isHeld(seq uint64) bool {
	if s.n == 0 {
		return false
	}
	hd := &s.held[seq%maxHeld]
	return hd.d != nil && hd.seq == seq
}

// windowEnd is the last number the window spans.
func (s *orderedStream) windowEnd() uint64 { return s.next + s.window - 1 }

// sent records that the peer sent datagrams up to seq, as one of its
// datagrams (arrived) or its announce shows; what that shows missing is
// first asked for after wait. A claim beyond the window is believed only
// up to the window's end, and further only as the window moves: a forged
// far number moves nothing that the peer's real datagrams would then be
// refused by.
func (s *orderedStream) sent(seq uint64, arrived bool, now time.Time, wait time.Duration) {
	s.latest = max(s.latest, seq)
	first, last := s.extend()
	if arrived && last == seq {
		last-- // seq itself is here
	}
	if first <= last {
		s.missed(first, last, now, wait)
	}
}

// reveals reports whether seq, as [orderedStream.sent] takes it, may
// show datagrams missing.
func (s *orderedStream) reveals(seq uint64, arrived bool) bool {
	top := max(seq, s.latest)
	if arrived {
		return top > s.seen+1
	}
	return top > s.seen
}

// extend moves seen toward latest, within the window, and returns the
// numbers that it newly takes as sent without their having arrived:
// first..last, empty if first > last.
func (s *orderedStream) extend() (first, last uint64) {
	top := min(s.latest, s.windowEnd())
	if top <= s.seen {
		return 1, 0
	}
	first, last = max(s.seen+1, s.next), top
	s.seen = top
	return first, last
}

// missed counts first..last as missing, to be asked for first after
// wait unless a first request is already waiting.
func (s *orderedStream) missed(first, last uint64, now time.Time, wait time.Duration) {
	s.gaps += last - first + 1
	s.noticeGap(now, wait)
	if s.askAt.IsZero() {
		s.askAt = now.Add(wait)
	}
}

// noticeGap starts the gap's timers unless a gap is already pending:
// numbers asked for before are asked again after firstRetry and wait,
// the others asked for first after wait.
func (s *orderedStream) noticeGap(now time.Time, wait time.Duration) {
	if !s.since.IsZero() {
		return
	}
	s.since, s.gapAt, s.interval = now, s.next, firstRetry
	s.retryAt = time.Time{}
	if s.askedThrough >= s.next {
		s.retryAt = now.Add(firstRetry + wait)
	}
	if s.askedThrough < s.seen && s.askAt.IsZero() {
		s.askAt = now.Add(wait)
	}
}

// noGap stops the gap's timers.
func (s *orderedStream) noGap() {
	s.since, s.askAt, s.retryAt = time.Time{}, time.Time{}, time.Time{}
}

// fits reports whether a datagram of size bytes may be held.
func (s *orderedStream) fits(size int) bool { return s.bytes+size <= maxHeldBytes }

// hold keeps a copy of checked datagram seq, in the window, until the
// ones before it are applied.
func (s *orderedStream) hold(seq uint64, d []byte) {
	if s.held == nil {
		s.held = make([]heldDatagram, maxHeld)
	}
	var buf []byte
	if n := len(s.spare); n > 0 {
		buf, s.spare = s.spare[n-1][:0], s.spare[:n-1]
	}
	s.held[seq%maxHeld] = heldDatagram{seq: seq, d: append(buf, d...)}
	s.n++
	s.bytes += len(d)
}

// take removes and returns held datagram seq, or nil.
func (s *orderedStream) take(seq uint64) []byte {
	if !s.isHeld(seq) {
		return nil
	}
	hd := &s.held[seq%maxHeld]
	d := hd.d
	hd.d = nil
	s.n--
	s.bytes -= len(d)
	return d
}

// recycle returns the buffer of a datagram that take returned.
func (s *orderedStream) recycle(d []byte) { s.spare = append(s.spare, d) }

// applied moves past the next datagram, which the caller applied.
func (s *orderedStream) applied() {
	s.next++
	s.seen = max(s.seen, s.next-1)
}

// release returns the next held datagram if it is next in order, past
// what was given up, and the stream is not paused, and moves past it; nil
// otherwise. The caller applies it and recycles it.
func (s *orderedStream) release() []byte {
	if s.paused {
		return nil
	}
	for s.next < s.skipUntil && !s.isHeld(s.next) {
		if s.lostFrom == 0 {
			s.lostFrom = s.next
		}
		s.next++
	}
	d := s.take(s.next)
	if d != nil {
		s.applied()
	}
	return d
}

// settle takes in what the window moved over, then stops the timers if
// nothing is missing any more, or restarts them if the oldest missing
// datagram is a newer one than when they started. Call it after
// releasing what could be; wait is the back-off before a request.
func (s *orderedStream) settle(now time.Time, wait time.Duration) {
	if first, last := s.extend(); first <= last {
		s.missed(first, last, now, wait) // the window moved over numbers known sent
	}
	if s.next > s.seen {
		s.noGap()
	} else if s.since.IsZero() || s.next != s.gapAt {
		s.since = time.Time{}
		s.noticeGap(now, wait)
	}
}

// retry is what the retry timer says to do for the stream.
type retry uint8

const (
	retryNone   retry = iota
	retryAsk          // ask for the missing numbers not asked for yet
	retryAgain        // ask again for everything missing
	retryGiveUp       // the oldest missing datagram is lost: skip it
)

// due says whether a timer has fired. The caller asks, then calls
// [orderedStream.asked].
func (s *orderedStream) due(now time.Time) retry {
	switch {
	case s.since.IsZero() || s.paused:
		return retryNone
	case now.Sub(s.since) >= repairTimeout:
		return retryGiveUp
	case !s.retryAt.IsZero() && !now.Before(s.retryAt):
		return retryAgain
	case !s.askAt.IsZero() && !now.Before(s.askAt):
		return retryAsk
	}
	return retryNone
}

// asked records that what is missing up to through was just asked for;
// it is asked again after the interval (doubled by each retry) and wait,
// unless a retry is due sooner, and what is missing after through after
// wait. again: everything missing was asked for, not only what was new.
func (s *orderedStream) asked(through uint64, now time.Time, wait time.Duration, again bool) {
	s.askedThrough = max(s.askedThrough, min(through, s.seen))
	s.askAt = time.Time{}
	if s.askedThrough < s.seen {
		s.askAt = now.Add(wait)
	}
	if again {
		s.interval = min(2*s.interval, maxRetry)
	}
	if again || s.retryAt.IsZero() {
		s.retryAt = now.Add(s.interval + wait)
	}
}

// missing adds to req the ranges of the window from first on that are
// neither applied nor held, as many as one request carries.
func (s *orderedStream) missing(first uint64, req *wire.Nack) {
	first = max(first, s.next)
	if s.seen < first {
		return
	}
	span := min(s.seen, s.windowEnd()) - first + 1
	for i := range span {
		seq := first + i
		if !s.isHeld(seq) && !req.Add(seq, seq) {
			return
		}
	}
}

// heard takes another receiver's request to the group for this stream's
// numbers in ranges: if it names every number missing here up to the
// last it names (at least one), this node holds back its own request for
// them, as if it had sent it, and waits for the repair the group will
// hear. It reports whether it held a request back. A forged request can
// delay this node's requests, never stop them: the gap is given up after
// repairTimeout, as any other.
func (s *orderedStream) heard(ranges []wire.Range, now time.Time, wait time.Duration) bool {
	if s.since.IsZero() || s.paused || len(ranges) == 0 {
		return false
	}
	top := min(ranges[len(ranges)-1].Last, s.seen, s.windowEnd())
	if top < s.next {
		return false
	}
	r, common := 0, false
	for i := range top - s.next + 1 {
		seq := s.next + i
		if s.isHeld(seq) {
			continue
		}
		for r < len(ranges) && ranges[r].Last < seq {
			r++
		}
		if r == len(ranges) || ranges[r].First > seq {
			return false // missing here, not asked for there
		}
		common = true
	}
	if !common {
		return false
	}
	held := !s.askAt.IsZero() && s.askedThrough < top
	s.askedThrough = max(s.askedThrough, top)
	if s.askedThrough >= s.seen {
		s.askAt = time.Time{}
	}
	s.retryAt = later(s.retryAt, now.Add(s.interval+wait))
	return held
}

// later returns the later of a and b.
func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// giveUp gives up the missing datagrams before the first one held, which
// the caller then releases. With nothing held it gives up nothing: the
// only evidence that more was sent is a claim the peer never backed with
// a datagram or a resend, and skipping on it would refuse the peer's real
// datagrams as duplicates; the claim is forgotten instead. Either way the
// caller asks for a full resync.
func (s *orderedStream) giveUp() {
	if first, ok := s.firstHeld(); ok {
		s.skipUntil = max(s.skipUntil, first)
	} else {
		s.seen, s.latest = s.next-1, s.next-1
	}
	s.noGap()
}

// firstHeld returns the lowest number held.
func (s *orderedStream) firstHeld() (uint64, bool) {
	if s.n > 0 {
		for i := range s.window {
			if s.isHeld(s.next + i) {
				return s.next + i, true
			}
		}
	}
	return 0, false
}

// gone takes the peer's word that it no longer holds its datagrams up to
// last: the missing ones are given up, and the caller releases what is
// held among and after them. It reports whether that gave anything up.
func (s *orderedStream) gone(last uint64) bool {
	last = min(last, s.seen)
	if last < s.next || s.paused {
		return false // about datagrams we got in the meantime, or that a resync covers
	}
	s.skipUntil = max(s.skipUntil, last+1)
	s.noGap()
	return true
}

// resume ends a pause at the answer to a resync request: the snapshot
// holds every change of the peer's up to asOf, so the held ones up to
// there are dropped and the stream continues after it.
func (s *orderedStream) resume(asOf uint64) {
	s.paused = false
	if asOf >= s.next {
		s.dropThrough(asOf)
	}
	if s.lostFrom != 0 && s.lostFrom <= asOf {
		s.lostFrom = 0 // the snapshot brings what was given up
	}
	s.latest = max(s.latest, asOf)
}

// dropThrough moves next past last, dropping what is held before it.
func (s *orderedStream) dropThrough(last uint64) {
	for i := uint64(0); s.n > 0 && i < s.window && s.next+i <= last; i++ {
		if d := s.take(s.next + i); d != nil {
			s.recycle(d)
		}
	}
	s.next = last + 1
	s.seen = max(s.seen, last)
}

// plausibleAsOf reports whether asOf, a peer's answer to a resync
// request, is within what it could have sent: no more than a window past
// its latest claim.
func (s *orderedStream) plausibleAsOf(asOf uint64) bool {
	return asOf <= s.latest+s.window
}

// reset drops everything held, when the peer restarted or is forgotten.
func (s *orderedStream) reset() {
	for i := uint64(0); s.n > 0 && i < s.window; i++ {
		if d := s.take(s.next + i); d != nil {
			s.recycle(d)
		}
	}
}
