package replication

import (
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/udpmapsync/udpmapsync/seal"
	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

// errNotMarkedSealed refuses to seal a datagram whose header does not say
// it is sealed: its receivers would take the seal for body. Every writer
// of a header sets [wire.Header.Sealed] when the node has keys.
var errNotMarkedSealed = errors.New("seal a datagram whose header is not marked sealed")

// maxRuns bounds the replay windows kept, one per (node, epoch) heard
// with a datagram that opened: only nodes holding the key can add one.
const maxRuns = 2 * maxPeers

// sealedTransport seals every datagram this node sends and opens every
// one it receives, between the protocol and the socket: everything above
// it sees plain datagrams that a node holding the key sent, once each.
// What does not open, or opened before, is counted and dropped here.
type sealedTransport struct {
	time   Time
	inner  Transport
	sealer *seal.Sealer
	opener *seal.Opener
	stats  *Stats
	log    *slog.Logger

	sendBufs [][]byte   // Send's copies: the sender's goroutine only
	sendOut  [][]byte   // slices of sendBufs, as sealed
	toMu     sync.Mutex // SendTo runs on several goroutines
	toBufs   [][]byte
	toOut    [][]byte

	runs   map[runID]*runState // the receive goroutine's
	order  []runID             // runs in the order they were added
	in     []transport.Packet
	limit  limiter
	header wire.Header
}

// runID names one run of a node: the sender of a sequence of counters.
type runID struct {
	node  uint32
	epoch uint64
}

// runState is what the receiving side knows of one run: the counters it
// has seen, and where its freshest datagram, the one with the highest
// counter, came from.
type runState struct {
	window seal.ReplayWindow
	top    uint64
	from   netip.AddrPort
	moved  time.Time // when from last changed
}

func newSealedTransport(inner Transport, keys *seal.Keys, node uint32, epoch uint64, stats *Stats, log *slog.Logger) *sealedTransport {
	return &sealedTransport{time: SystemTime{}, inner: inner, sealer: seal.NewSealer(keys, node, epoch), opener: seal.NewOpener(keys),
		stats: stats, log: log, runs: make(map[runID]*runState)}
}

// Send seals copies of the datagrams and sends them to the group.
func (t *sealedTransport) Send(dgrams [][]byte) error {
	out, err := t.seal(dgrams, &t.sendBufs, &t.sendOut)
	if err != nil {
		return err
	}
	return t.inner.Send(out)
}

// SendTo seals copies of the datagrams and sends them to addr.
func (t *sealedTransport) SendTo(addr netip.AddrPort, dgrams [][]byte) error {
	t.toMu.Lock()
	defer t.toMu.Unlock()
	out, err := t.seal(dgrams, &t.toBufs, &t.toOut)
	if err != nil {
		return err
	}
	return t.inner.SendTo(addr, out)
}

// seal copies each datagram into bufs and seals the copy in place; the
// protocol wrote its header already marked sealed ([wire.Header.Sealed]).
// The callers' datagrams stay plain: the resend buffer keeps them so,
// and a resend is sealed again under a new counter.
func (t *sealedTransport) seal(dgrams [][]byte, bufs, out *[][]byte) ([][]byte, error) {
	*out = (*out)[:0]
	for i, d := range dgrams {
		if !wire.MarkedSealed(d) {
			return nil, errNotMarkedSealed
		}
		if i == len(*bufs) {
			*bufs = append(*bufs, nil)
		}
		if cap((*bufs)[i]) < len(d)+wire.SealSize {
			(*bufs)[i] = make([]byte, 0, len(d)+wire.SealSize)
		}
		b, err := t.sealer.Seal(append((*bufs)[i][:0], d...), wire.HeaderSize)
		if err != nil {
			return nil, err
		}
		(*bufs)[i] = b
		*out = append(*out, b)
	}
	return *out, nil
}

// Receive returns the datagrams that opened and were not seen before, in
// place in the inner transport's buffers, with their seals cut off.
func (t *sealedTransport) Receive() ([]transport.Packet, error) {
	for {
		pkts, err := t.inner.Receive()
		if err != nil {
			return nil, err
		}
		t.in = t.in[:0]
		for _, p := range pkts {
			if d, run, ok := t.open(p.From, p.Data); ok {
				p.Data = d
				if run != nil {
					p.ReplyTo, p.ReplyToSince = run.from, run.moved
				}
				t.in = append(t.in, p)
			}
		}
		if len(t.in) > 0 {
			return t.in, nil
		}
	}
}

// open authenticates and decrypts d, and checks its counter against the
// run's replay window. It returns the run d opened in, whose from, once
// d is taken into account, is where d's sender is answered: authentic
// datagrams may arrive from anywhere (anyone can resend a recorded one
// once to a node that has not seen it yet, as after a restart), but only
// the node itself sends the ones that carry its newest counters. Until
// its own arrive, a replay can hold the place, which is why the
// dispatcher waits for the address to settle before it sends anything
// there. A datagram whose header does not parse is passed on, without a
// run, for the dispatcher to count.
func (t *sealedTransport) open(from netip.AddrPort, d []byte) ([]byte, *runState, bool) {
	h := &t.header
	if h.Unmarshal(d) != nil {
		return d, nil, true
	}
	if !h.Sealed {
		t.drop(&t.stats.Unauthenticated, from, "datagram not sealed, but this node has a key: the sender lacks --key-file")
		return nil, nil, false
	}
	plain, counter, err := t.opener.Open(d, wire.HeaderSize, h.Node, h.Epoch)
	if err != nil {
		t.drop(&t.stats.Unauthenticated, from, "datagram does not open with this node's keys: a wrong key, or forged")
		return nil, nil, false
	}
	run := t.run(runID{h.Node, h.Epoch})
	if !run.window.Accept(counter) {
		t.stats.Replayed.Add(1)
		return nil, nil, false
	}
	if counter > run.top {
		if run.from != from {
			run.moved = t.time.Now()
		}
		run.top, run.from = counter, from
	}
	return plain, run, true
}

// run returns the state of run r, adding one (and forgetting the oldest
// beyond maxRuns) for a run not seen before.
func (t *sealedTransport) run(r runID) *runState {
	if s := t.runs[r]; s != nil {
		return s
	}
	if len(t.order) >= maxRuns {
		delete(t.runs, t.order[0])
		t.order = append(t.order[:0], t.order[1:]...)
	}
	s := new(runState)
	t.runs[r] = s
	t.order = append(t.order, r)
	return s
}

func (t *sealedTransport) drop(counter interface{ Add(uint64) uint64 }, from netip.AddrPort, why string) {
	counter.Add(1)
	if s, ok := t.limit.allow(reasonAuth); ok {
		t.log.Warn("dropping a datagram that is not authentic", "from", from, "reason", why, "suppressed", s)
	}
}

// Close closes the inner transport, if it can be.
func (t *sealedTransport) Close() error {
	if c, ok := t.inner.(interface{ Close() error }); ok {
		return c.Close()
	}
	return nil
}
