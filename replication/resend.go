package replication

import (
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/wire"
	"golang.org/x/sys/unix"
)

// DefaultResendBytes is the default size of the resend buffer, the most
// it grows to (see resendKeep): about 45,000 full 1400-byte datagrams,
// most of a second of a sender at full speed. Losses older than what it
// holds are repaired by a delta resync, so the buffer is sized for the
// daemon's memory budget rather than for a long outage.
const DefaultResendBytes = 64 << 20

// The resend buffer is sized by time: its arena is used from the start up
// to a bound that begins at resendStep and grows by resendStep, up to the
// whole arena, whenever a round of it (from its start to the bound) took
// less than resendKeep. A receiver that lags by what its socket buffer
// holds (a third of a second of a full-speed stream, and more on a busy
// machine) and whose requests back off to maxRetry still finds what it
// asks for; a slower sender uses, and so keeps resident, only what
// resendKeep of its datagrams take, within a step: 16 MiB at 200k changes
// a second, as before. (A fixed 16 MiB, 0.2 s at full speed, was evicted
// under such receivers: in 1M-change runs with 5 % loss, a gap given up
// in one run of three.)
const (
	resendKeep = 750 * time.Millisecond
	resendStep = 8 << 20
)

// minResendRecord is the smallest change datagram: a header, a section
// header and a delete of a one-byte key. It sizes the index so that the
// bytes, not the index, bound what a buffer holds.
const minResendRecord = wire.HeaderSize + wire.SectionHeaderSize + 2

// resendBuffer keeps the latest closed change datagrams of this node, byte for
// byte, so that a peer that missed some can get them again. The [sender]
// adds every datagram it closes; the [repairResponder] answers repair
// requests from it. Datagrams are copied into one preallocated arena, oldest evicted
// first, so adding allocates nothing.
//
// Sequence numbers in the buffer are consecutive, which lets a datagram be
// found by its number alone: entry seq lives at index seq % len(offs).
type resendBuffer struct {
	mu     sync.Mutex // held only to copy one datagram in or out
	arena  []byte
	offs   []uint32 // arena offset per index slot
	lens   []uint16 // datagram length per index slot
	first  uint64   // oldest sequence number held; valid when n > 0
	n      uint64   // datagrams held
	w      int      // where the next datagram goes
	oldest int      // arena offset of the oldest datagram held
	// bound is where the arena wraps now (see resendKeep); round is
	// when the writing last began at its start, by time.
	bound int
	round time.Time
	time  Time

	// needs is, per peer, the oldest datagram its latest repair request
	// asked for that the buffer held (see [resendBuffer.asked]); pressed
	// is set while there are any, for the sender to check without the
	// lock.
	needs   map[uint32]need
	pressed atomic.Bool
	// credits is, per peer whose requests held the sender back, how much
	// longer they may (see [resendBuffer.spend]); overShare is a peer
	// whose request did not hold it back for lack of credit, 0 if none
	// since [resendBuffer.takeOverShare].
	credits   map[uint32]holdCredit
	overShare uint32
	// lag is how far behind the latest datagram a peer may ask before
	// the sender holds back: a quarter of the receive window, so that repairs
	// reach a receiver before the window behind its gap fills and it
	// drops what follows (hold_full), which then needs repairs too.
	lag uint64
	// floors is, per chunk of floorChunk consecutive datagrams, the
	// oldest stamp among their records, far further back than the
	// datagrams held: what a delta resync from a given datagram on must
	// carry (see [resendBuffer.floor]).
	floors     [floorChunks]hlc.Stamp
	floorFirst uint64 // the first datagram noted; 0 before any
	floorLast  uint64 // the latest noted
}

// The stamp floors cover floorChunks × floorChunk datagrams, 1M: tens of
// seconds of the busiest sender, minutes of most, in 512 KiB. A delta
// carries the records of up to floorChunk-1 datagrams before the first
// one the requester lacks as well.
const (
	floorChunk  = 16
	floorChunks = 1 << 16
)

// Flow control: a sender holds back while a peer still asks for a
// datagram its resend buffer is about to evict, or one far behind the
// latest. See "Loss repair" in docs/ARCHITECTURE.md.
const (
	// needFresh is how long a request keeps its datagram from eviction:
	// longer than the receiver's longest wait before it asks again
	// (maxRetry), so a peer still missing it keeps it held.
	needFresh = maxRetry + 50*time.Millisecond
	// maxNeed bounds how long one datagram, asked again and again, holds
	// the sender back: the receiver gives it up after repairTimeout anyway.
	maxNeed = repairTimeout
	// nearEviction is the share of the buffer, counted from its oldest
	// datagram, in which a datagram asked for holds the sender back.
	nearEviction = 8
	// lagHold is how long a request from a peer more than the buffer's
	// lag behind holds the sender back: the receiver asks again while it
	// still misses something, and every new gap it finds asks at once,
	// so a receiver still behind renews it.
	lagHold = 2 * firstRetry
	// holdShare bounds the share of the time one peer's requests hold the
	// sender back: maxNeed at once, then 1/holdShare of the time. Without
	// it a peer that asks for one datagram, then again once its need
	// expired, or for another each time, held the sender back for ever.
	holdShare = 2
)

// holdCredit is how long one peer's requests may still hold the sender
// back: it refills at 1/holdShare of the time passing, up to maxNeed.
type holdCredit struct {
	left    time.Duration
	at      time.Time // when left was brought up to date
	holding bool      // whether the peer held the sender back since at
}

// need is the oldest datagram a peer's latest repair request asked for.
type need struct {
	seq       uint64
	at, since time.Time // the latest request for it, the first
}

// newResendBuffer allocates a resend buffer of size bytes for datagrams of at
// most payload bytes.
func newResendBuffer(size, payload int) (*resendBuffer, error) {
	if size < 2*payload || size > 1<<32-1 {
		return nil, fmt.Errorf("%w: %d bytes; want between two datagrams (%d bytes) and 4 GiB", ErrResendSize, size, 2*payload)
	}
	// The arena is mapped apart from the Go heap: its pages become
	// resident only as they are written (see resendKeep), and the
	// collector, which counts every byte of an arena on its heap as live,
	// would otherwise let the daemon's garbage grow by as much again
	// before it collects (a 64 MiB arena: 130 MiB instead of 85 at 1M
	// entries).
	arena, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("map a resend buffer of %d bytes: %w", size, err)
	}
	slots := size / minResendRecord
	b := &resendBuffer{
		time:  SystemTime{},
		bound: min(size, resendStep),
		arena: arena,
		offs:  make([]uint32, slots),
		lens:  make([]uint16, slots),
		lag:   uint64(min(maxHeld, maxHeldBytes/payload) / 4),
	}
	runtime.AddCleanup(b, func(a []byte) { _ = unix.Munmap(a) }, arena)
	return b, nil
}

// add copies datagram seq, which must follow the previous one added (or be
// the first), evicting the oldest datagrams it needs room for. An empty d
// records seq as lost: requests for it are answered as gone.
func (b *resendBuffer) add(seq uint64, d []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n > 0 && seq != b.first+b.n {
		b.n = 0 // cannot happen with one sender; start afresh rather than mislabel
	}
	if b.n == 0 {
		b.first, b.w, b.oldest, b.round = seq, 0, 0, b.time.Now()
	}
	if b.w+len(d) > b.bound {
		// Beyond the bound the arena has never been written: the round
		// goes on into it when it took less than resendKeep.
		if now := b.time.Now(); b.bound < len(b.arena) && now.Sub(b.round) < resendKeep {
			b.bound = min(len(b.arena), b.bound+resendStep)
		}
	}
	if b.w+len(d) > b.bound {
		// The rest of the arena is left unused this round, so the older
		// datagrams still there, at or after w, go first.
		for b.n > 0 && b.oldest >= b.w {
			b.evict()
		}
		b.w, b.round = 0, b.time.Now()
	}
	// A datagram recorded lost holds no bytes, so only a held one can be
	// in the way: a lost oldest goes first (a request for it is answered
	// gone either way), and the oldest held is then the one checked.
	for b.n > 0 && (b.n == uint64(len(b.offs)) || b.lens[b.first%uint64(len(b.offs))] == 0 || b.overlapsOldest(len(d))) {
		b.evict()
	}
	copy(b.arena[b.w:], d)
	i := seq % uint64(len(b.offs))
	b.offs[i], b.lens[i] = uint32(b.w), uint16(len(d))
	b.w += len(d)
	b.n++
}

// note records floor, the oldest stamp among the records of datagram seq
// (0 for a datagram recorded lost, or one with an unstamped record),
// which must follow the previous one noted.
func (b *resendBuffer) note(seq uint64, floor hlc.Stamp) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.floorFirst == 0 || seq != b.floorLast+1 {
		b.floorFirst = seq // cannot happen with one sender but for the first: start afresh
	}
	i := seq / floorChunk % floorChunks
	if seq == b.floorFirst || seq%floorChunk == 0 {
		b.floors[i] = floor
	} else {
		b.floors[i] = min(b.floors[i], floor)
	}
	b.floorLast = seq
}

// floor returns the oldest stamp among the records of the datagrams from
// datagram from on, or of a few before it; ok is false when they are no
// longer covered (from is before the first noted, or so far back that its
// chunk was reused). After the latest datagram it returns ok and the
// highest stamp: nothing was sent since.
func (b *resendBuffer) floor(from uint64) (f hlc.Stamp, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.floorFirst == 0 || from < b.floorFirst || b.floorLast/floorChunk-from/floorChunk >= floorChunks && from <= b.floorLast:
		return 0, false
	case from > b.floorLast:
		return hlc.Stamp(math.MaxUint64), true
	}
	f = hlc.Stamp(math.MaxUint64)
	for c := from / floorChunk; c <= b.floorLast/floorChunk; c++ {
		f = min(f, b.floors[c%floorChunks])
	}
	return f, true
}

// evict forgets the oldest datagram.
func (b *resendBuffer) evict() {
	b.first++
	b.n--
	if b.n > 0 {
		b.oldest = int(b.offs[b.first%uint64(len(b.offs))])
	}
}

// overlapsOldest reports whether writing size bytes at w would overwrite
// the oldest datagram. Datagrams sit in the arena in sequence order from
// the oldest round to w, so the oldest is the first in the way.
func (b *resendBuffer) overlapsOldest(size int) bool {
	o := b.oldest
	l := int(b.lens[b.first%uint64(len(b.offs))])
	return b.w < o+l && o < b.w+size
}

// asked records that node's latest repair request asked for seq, the
// oldest of it the buffer holds, at now.
func (b *resendBuffer) asked(node uint32, seq uint64, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.needs == nil {
		b.needs = make(map[uint32]need) // bounded by the peers, maxPeers
	}
	nd := b.needs[node]
	if nd.seq != seq {
		nd = need{seq: seq, since: now}
	}
	nd.at = now
	b.needs[node] = nd
	b.pressed.Store(true)
}

// holdBack reports whether a peer still asks for a datagram about to be
// evicted (asked for within needFresh), or asked within lagHold for one
// more than lag behind the latest datagram; in either case first asked
// within maxNeed. The sender then waits before it adds more. Needs past
// those bounds are dropped, and pressed is cleared with the last.
func (b *resendBuffer) holdBack(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	back := false
	for node, nd := range b.needs {
		wants := false
		switch {
		case now.Sub(nd.at) > needFresh || now.Sub(nd.since) > maxNeed || nd.seq < b.first:
			delete(b.needs, node)
		case nd.seq-b.first < max(b.n/nearEviction, 1):
			wants = true
		case b.first+b.n-nd.seq > b.lag && now.Sub(nd.at) < lagHold:
			wants = true
		}
		if b.spend(node, wants, now) {
			back = true
		} else if wants {
			b.overShare = node
		}
	}
	for node := range b.credits {
		if _, ok := b.needs[node]; !ok && !b.spend(node, false, now) && b.credits[node].left == maxNeed {
			delete(b.credits, node) // bounded by the peers that asked
		}
	}
	if len(b.needs) == 0 {
		b.pressed.Store(false)
	}
	return back
}

// spend charges node's credit with the time it held the sender back
// since it was last brought up to date, refills it, and reports whether
// node may hold the sender back from now on, if it wants to (see
// holdShare). Called with mu held.
func (b *resendBuffer) spend(node uint32, wants bool, now time.Time) bool {
	if b.credits == nil {
		b.credits = make(map[uint32]holdCredit)
	}
	c, ok := b.credits[node]
	if !ok {
		c = holdCredit{left: maxNeed, at: now}
	}
	since := max(now.Sub(c.at), 0)
	if c.holding {
		c.left -= since
	}
	c.left = min(c.left+since/holdShare, maxNeed)
	c.at, c.holding = now, wants && c.left > 0
	b.credits[node] = c
	return c.holding
}

// takeOverShare returns a peer whose request did not hold the sender
// back since the last call because it held it back its share already,
// and forgets it; ok is false if there was none.
func (b *resendBuffer) takeOverShare() (node uint32, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	node, b.overShare = b.overShare, 0
	return node, node != 0
}

// held returns the range of sequence numbers held; ok is false when the
// buffer is empty.
func (b *resendBuffer) held() (first, last uint64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.first, b.first + b.n - 1, b.n > 0
}

// copyOut appends datagram seq to dst and reports whether it is held.
func (b *resendBuffer) copyOut(seq uint64, dst []byte) ([]byte, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := seq % uint64(len(b.offs))
	if b.n == 0 || seq < b.first || seq >= b.first+b.n || b.lens[i] == 0 {
		return dst, false
	}
	o := int(b.offs[i])
	return append(dst, b.arena[o:o+int(b.lens[i])]...), true
}
