package replication

import (
	"errors"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

// errImplausible rejects a datagram whose numbers its sender cannot have
// produced: a snapshot datagram or end past the transfer window, or a
// resync answer past what the peer ever claimed to have sent.
var errImplausible = errors.New("number outside what the sender can have sent")

// dispatcher is where every received datagram enters the protocol. It
// validates the header, finds the sending peer (binding a new one only
// for the kinds that may introduce a node), and hands the datagram to the
// handler its kind routes to. Anything wrong is counted, logged at a
// limited rate, and dropped before a local map is touched.
type dispatcher struct {
	node  uint32
	allow acceptList // --peers without a key: the only source addresses accepted
	// listed: this node sends to a list of peers (--peers), not to a
	// group; their lists may not name this node.
	listed bool
	window uint64 // of every peer's stream
	// keyed: every datagram that reaches the dispatcher was sealed by a
	// node holding the key, whatever address it came from; without a key
	// a sealed datagram cannot be read.
	keyed bool
	// group, in multicast mode, is where repair requests go, so that the
	// other receivers hear them (zero with --peers: to the peer alone);
	// rng draws the back-off before them.
	group   netip.AddrPort
	rng     *rand.Rand
	peers   *peerTable
	gate    *answerGate // what may be sent to each peer's address
	apply   *applier
	repair  *repairResponder
	client  *resyncClient
	server  *snapshotServer
	digests *digests
	ask     controlSender // this node's repair requests
	// greet asks the sender for an announce at once (see dispatcher.peer).
	greet *atomic.Bool
	stats *Stats
	log   *slog.Logger
	limit *limiter

	routes   [16]route
	hdr      wire.Header // of the datagram being handled
	req      wire.Nack   // a repair request being built
	in       wire.Nack   // a request or answer received
	digestIn wire.Digest // a digest received
	descs    wire.Descriptors
	got      []wire.Descriptor // of one announce

	from    netip.AddrPort // where the datagram being handled came from
	unicast bool           // whether it was sent to this node alone
}

// route is how the dispatcher treats one kind of datagram.
type route struct {
	handle func(d *dispatcher, p *peer, h *wire.Header, dgram []byte, now time.Time) error
	// binds: a datagram of this kind may introduce a node or its new
	// epoch. The others come only from a peer known in that epoch at that
	// address.
	binds bool
	// bindsListed: so may one of this kind with --peers (see
	// [dispatcher.syncRequest]).
	bindsListed bool
	// applyFirst: what is collected from change datagrams is applied first,
	// because the handler reads the maps or reports how far they are.
	applyFirst bool
}

// routes maps each kind to its handler.
var routes = map[wire.Kind]route{
	wire.KindChanges:     {handle: (*dispatcher).changes, binds: true},
	wire.KindAnnounce:    {handle: (*dispatcher).announce, binds: true, applyFirst: true},
	wire.KindNack:        {handle: (*dispatcher).nack, applyFirst: true},
	wire.KindGone:        {handle: (*dispatcher).gone, applyFirst: true},
	wire.KindSyncRequest: {handle: (*dispatcher).syncRequest, bindsListed: true, applyFirst: true},
	wire.KindSyncAck:     {handle: (*dispatcher).syncAck},
	wire.KindSyncStart:   {handle: (*dispatcher).syncStart, applyFirst: true},
	wire.KindSnapshot:    {handle: (*dispatcher).snapshot, applyFirst: true},
	wire.KindSyncEnd:     {handle: (*dispatcher).syncEnd, applyFirst: true},
	wire.KindCookie:      {handle: (*dispatcher).cookie},
	wire.KindCookieEcho:  {handle: (*dispatcher).cookieEcho},
	wire.KindDigest:      {handle: (*dispatcher).digest},
	wire.KindDigestDiff:  {handle: (*dispatcher).digestDiff},
}

func (d *dispatcher) init() {
	for k, r := range routes {
		d.routes[k] = r
	}
}

// handle checks one datagram and acts on it; the changes it carries are
// collected into runs that the caller applies with [applier.applyRuns].
func (d *dispatcher) handle(pkt *transport.Packet, now time.Time) {
	from, b := pkt.From, pkt.Data
	h := &d.hdr
	d.from, d.unicast = from, pkt.Unicast
	if err := h.Unmarshal(b); err != nil {
		d.malformed(from, err)
		return
	}
	if err := h.CheckSeq(); err != nil {
		d.malformed(from, err)
		return
	}
	if h.Sealed != d.keyed {
		// A sealed one the sealing transport let through opened; one here
		// was sealed by a node with a key this node has not.
		d.stats.Unauthenticated.Add(1)
		if s, ok := d.limit.allow(reasonAuth); ok {
			d.log.Warn("dropping a sealed datagram: this node has no key to open it; start it with --key-file",
				"from", from, "node", h.Node, "suppressed", s)
		}
		return
	}
	if h.Node == d.node {
		d.stats.OwnDropped.Add(1)
		return
	}
	if !d.allow.accepts(from.Addr()) {
		d.forged(from, h, "source address not in the configured peers")
		return
	}
	r := d.routes[h.Kind]
	if r.handle == nil {
		d.malformed(from, wire.ErrBadKind)
		return
	}
	p, prev, ok := d.peer(from, h, r.binds || r.bindsListed && d.listed, now)
	if !ok {
		return
	}
	if pkt.ReplyTo.IsValid() {
		// Before the handler, which may answer: where to, the seal says.
		p.addr, p.addrSince = pkt.ReplyTo, pkt.ReplyToSince
	}
	if from == p.addr {
		d.gate.earn(p, len(b), pkt.Unicast)
	}
	if r.applyFirst {
		d.apply.applyRuns()
	}
	if err := r.handle(d, p, h, b, now); err != nil {
		if prev != p {
			d.unbind(p, prev) // a malformed datagram leaves no peer state
		}
		if errors.Is(err, errFragmentsRefused) {
			return // well formed, and counted by the reassembly
		}
		d.malformed(from, err)
		return
	}
	if prev != p && prev != nil {
		d.retire(prev, now)
	}
	p.lastHeard = now
	p.datagrams++
}

// peer finds the sender of a datagram: the known peer, or, for a kind
// that binds, a new one or the known one in its new epoch. prev is the
// peer as known before: the same as p unless p is new or restarted.
func (d *dispatcher) peer(from netip.AddrPort, h *wire.Header, binds bool, now time.Time) (p, prev *peer, ok bool) {
	p, b := d.peers.classify(h.Node, h.Epoch, from, d.keyed)
	switch {
	case b == bindKnown:
		return p, p, true
	case b == bindStale:
		// From before the node restarted (epochs grow): late, or
		// replayed. Taking it would reset the node's state.
		d.stats.Duplicates.Add(1)
	case b == bindForged:
		d.forged(from, h, "node id already bound to another address")
	case !binds:
		d.stats.Unsolicited.Add(1) // a request or answer from a node not heard as a peer
	case h.Kind == wire.KindChanges && h.Flags&wire.FlagRetransmit != 0:
		// A resend for an epoch we do not track: what it repairs was
		// given up on when the epoch changed.
		d.stats.Duplicates.Add(1)
	case b == bindRestarted:
		if s, ok := d.limit.allow(reasonPeer); ok {
			d.log.Info("peer restarted", "node", h.Node, "addr", from, "epoch", h.Epoch, "previous_epoch", p.epoch, "suppressed", s)
		}
		delete(d.peers.byNode, p.node)
		n, ok := d.bind(from, h, 1, now)
		if ok && n.addr == p.addr {
			// What the address proved or sent was the address's, not the run's.
			n.proven, n.credit = p.proven, p.credit
		}
		if ok && d.client.ready.isReady() && (p.needSync || p.stream.lostFrom != 0 || p.stream.latest >= p.stream.next) {
			// Changes of its last run are missing here, and nobody holds
			// them to resend any more: they come by a full resync from
			// the node, whose maps hold them. (Before this node is ready
			// its initial sync brings them; asking a restarted node,
			// itself not ready, would only be refused, for ever.)
			d.resyncNeeded(n, "peer restarted before its missing datagrams were repaired")
			n.full = true // they were of its last run, which no delta of this one carries
		}
		return n, p, ok
	default:
		// A node heard for the first time, or again after it was
		// forgotten, starts at the sequence number its datagram shows to
		// be next while this node still waits for its initial sync, which
		// brings what it sent before. Once this node is ready, or has
		// asked for its initial sync (the server may have read its maps
		// already, without what a node heard only now sent before, as
		// after a partition healed), nothing else would: then everything
		// of the node's epoch is asked for, from 1, and what it no longer
		// holds comes by a full resync.
		first := uint64(1)
		if !d.client.ready.isReady() && d.client.phase == syncIdle {
			first = h.Seq
			if h.Kind == wire.KindAnnounce {
				first++
			}
		}
		if s, ok := d.limit.allow(reasonPeer); ok {
			d.log.Info("new peer", "node", h.Node, "addr", from, "epoch", h.Epoch, "suppressed", s)
		}
		n, ok := d.bind(from, h, first, now)
		if ok && d.client.ready.isReady() {
			// A node heard anew is likely starting: announced to again now,
			// it holds, from two announces of ours, the credit for the
			// cookie that proves our address (see [answerGate]) and asks
			// for its initial sync without waiting an announce interval.
			// New bindings are bounded by the peer table, so are these.
			d.greet.Store(true)
		}
		return n, nil, ok
	}
	return nil, nil, false
}

// bind starts tracking the node of h at from, its stream at first.
func (d *dispatcher) bind(from netip.AddrPort, h *wire.Header, first uint64, now time.Time) (*peer, bool) {
	p := d.peers.add(h.Node, h.Epoch, from, now, newStream(first, d.window))
	if p != nil {
		p.boundReady = d.client.ready.isReady()
	}
	if p == nil {
		d.stats.PeerLimit.Add(1)
		if s, ok := d.limit.allow(reasonPeer); ok {
			d.log.Warn("dropping a datagram from a new node: too many peers", "node", h.Node, "addr", from,
				"max_peers", maxPeers, "suppressed", s)
		}
		return nil, false
	}
	return p, true
}

// unbind undoes the binding of p, whose first datagram was malformed,
// and restores prev, the peer it would have replaced, if any.
func (d *dispatcher) unbind(p, prev *peer) {
	delete(d.peers.byNode, p.node)
	if prev != nil {
		d.peers.byNode[prev.node] = prev
	}
}

// retire forgets what is held for p, which restarted or went silent, and
// the resyncs with it.
func (d *dispatcher) retire(p *peer, now time.Time) {
	d.stats.Held.Add(-uint64(p.stream.n))
	p.stream.reset()
	d.apply.reasm.forget(p.node, false)
	d.apply.reasm.forget(p.node, true)
	d.client.forget(p, now)
	d.server.forget(p)
}

// changes takes a change datagram in sequence order: the next one is
// applied at once, together with what it unblocks; a later one in the
// window is held back and what is missing requested; an earlier one was
// applied already; one beyond the window is dropped, to be asked for
// again once the window has moved.
func (d *dispatcher) changes(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	body := dgram[wire.HeaderSize:]
	s := &p.stream
	pos := s.place(h.Seq)
	switch pos {
	case posDuplicate:
		d.stats.Duplicates.Add(1)
		return nil
	case posNext:
		if _, err := d.apply.collect(p.node, body, h.Count, false); err != nil {
			return err
		}
		d.refusedRecord(p, h.Seq)
	default:
		if err := d.apply.check(p.node, body, h.Count); err != nil {
			return err
		}
	}
	d.sent(p, h.Seq, true, now)
	if pos == posBeyond || pos == posLater && !s.fits(wire.HeaderSize+len(body)) {
		d.stats.HoldFull.Add(1) // asked for by the retry timer, once the window moved
		return nil
	}
	d.stats.DatagramsReceived.Add(1)
	if h.Flags&wire.FlagRetransmit != 0 {
		d.stats.Repaired.Add(1)
	}
	if pos == posNext {
		s.applied()
		d.release(p, now)
	} else {
		s.hold(h.Seq, dgram)
		d.stats.Held.Add(1)
	}
	d.askNew(p, now)
	return nil
}

// sent records what seq shows the peer sent: what that shows missing is
// asked for once the back-off has passed (see [dispatcher.askNew]).
func (d *dispatcher) sent(p *peer, seq uint64, arrived bool, now time.Time) {
	gaps := p.stream.gaps
	var wait time.Duration
	if p.stream.reveals(seq, arrived) {
		wait = d.backoff() // drawn only when it is used
	}
	p.stream.sent(seq, arrived, now, wait)
	d.stats.GapsSeen.Add(p.stream.gaps - gaps)
}

// askNew asks p for what is newly missing if no back-off delays it: at
// once without a group or another receiver; the timers ask otherwise.
func (d *dispatcher) askNew(p *peer, now time.Time) {
	if p.stream.due(now) == retryAsk {
		d.askFor(p, false, now)
	}
}

// askFor asks p for its datagrams missing here: those not asked for yet,
// or, again, all of them.
func (d *dispatcher) askFor(p *peer, again bool, now time.Time) {
	d.req = wire.Nack{Node: p.node, Epoch: p.epoch}
	first := p.stream.askedThrough + 1
	if again {
		first = 1
	}
	p.stream.missing(first, &d.req)
	through := p.stream.seen
	if d.req.N == wire.MaxNackRanges {
		through = d.req.Ranges[d.req.N-1].Last // the rest in the next request
	}
	p.stream.asked(through, now, d.backoff(), again)
	d.sendRequest(p, now)
}

// sendRequest sends the repair request in d.req: to the group, where the
// other receivers hear it (see [orderedStream.heard]), or to p alone.
func (d *dispatcher) sendRequest(p *peer, now time.Time) {
	if d.req.N == 0 || !d.peers.settled(p, now) {
		return // not yet settled: the retry timer asks again
	}
	to := d.group
	if !to.IsValid() {
		// p's address not proved: the retry timer asks again.
		if to = p.addr; !d.gate.ask(p, nackSize(&d.req), now) {
			return
		}
	}
	if d.ask.nack(to, wire.KindNack, 0, &d.req) != nil {
		return
	}
	d.stats.NacksSent.Add(1)
	d.stats.RangesRequested.Add(uint64(d.req.N))
}

// backoff draws how long this node waits before it asks the group for
// datagrams it found missing, so that of the receivers that lost the
// same datagram one asks, and the others hear it and hold back. It is 0
// without a group or another receiver; else at most 2 RetryTick times 1 +
// ln(the other receivers), drawn from a truncated exponential whose
// shape follows the group's size, as NORM's (RFC 5740): the larger the
// group, the fewer draws fall early, so the first request is rarely
// doubled before the others hear it.
func (d *dispatcher) backoff() time.Duration {
	others := len(d.peers.byNode) - 1 // receivers of a peer's stream besides this node
	if !d.group.IsValid() || others < 1 {
		return 0
	}
	n := float64(others)
	limit := float64(2*RetryTick) * (1 + math.Log(n))
	lambda := math.Log(n+1) + 1
	return time.Duration(limit * math.Log1p(d.rng.Float64()*math.Expm1(lambda)) / lambda)
}

// release applies p's held datagrams that are next in order.
func (d *dispatcher) release(p *peer, now time.Time) {
	s := &p.stream
	for b := s.release(); b != nil; b = s.release() {
		d.stats.Held.Add(^uint64(0))
		var h wire.Header
		if h.Unmarshal(b) == nil {
			_, _ = d.apply.collect(p.node, b[wire.HeaderSize:], h.Count, false) // checked when held
			d.refusedRecord(p, h.Seq)
		}
		s.recycle(b)
	}
	gaps := s.gaps
	var wait time.Duration
	if s.latest > s.seen || s.next <= s.seen { // a gap pending, or a claim the window may take in
		wait = d.backoff()
	}
	s.settle(now, wait)
	d.stats.GapsSeen.Add(s.gaps - gaps)
}

// refusedRecord acts on a record of p's change stream whose fragment the
// reassembly refused for lack of memory in datagram seq, just collected:
// as for a gap given up, p's stream is not applied here from seq on,
// and a resync from p follows, a delta from seq when p can serve one. The
// record would otherwise be lost until the next write of its key or a
// digest round found it.
func (d *dispatcher) refusedRecord(p *peer, seq uint64) {
	if !d.apply.reasm.takeRefused(p.node) {
		return
	}
	if p.stream.lostFrom == 0 || seq < p.stream.lostFrom {
		p.stream.lostFrom = seq
	}
	d.resyncNeeded(p, "a record's fragments were refused for lack of --reassembly-memory")
}

// announce takes a peer's map descriptors, its readiness and the latest
// sequence number it sent: if some of those never arrived, the tail of a
// burst was lost.
func (d *dispatcher) announce(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	body := dgram[wire.HeaderSize:]
	// Every descriptor is checked before any is compared: the count is
	// known to match only at the end.
	d.descs.Reset(body, h.Count)
	d.got = d.got[:0]
	for {
		desc, err := d.descs.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		d.got = append(d.got, desc)
	}
	for i := range d.got {
		d.compare(p, &d.got[i])
	}
	ready := h.Flags&wire.FlagReady != 0
	if !p.announced && ready && p.boundReady && d.client.ready.isReady() {
		// A run of the peer's first heard when both were ready already
		// formed its maps apart from this node's (each became ready
		// alone, or with others, across a partition): its stream from 1
		// carries only what it wrote since it started, not what its maps
		// held before, which can be newer than what this node holds (a
		// write this node's crash forgot, a state file's entries). A
		// full resync from it merges both ways.
		p.needSync, p.full = true, true
		if s, ok := d.limit.allow(reasonResync); ok {
			d.log.Info("a peer that became ready apart from this node is heard; a full resync from it merges the two",
				"peer", p.node, "addr", p.addr, "epoch", p.epoch, "suppressed", s)
		}
	}
	p.announced = true
	p.ready = ready
	d.stats.DatagramsReceived.Add(1)
	d.sent(p, h.Seq, false, now)
	d.askNew(p, now)
	return nil
}

// nack takes a repair request: one for this node's datagrams is
// answered, to the group if it came to the group; one for another node's,
// which came to the group, tells this node that the group will hear
// their repair.
func (d *dispatcher) nack(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	body := dgram[wire.HeaderSize:]
	if err := d.in.Unmarshal(body, h.Count); err != nil {
		return err
	}
	if !p.announced || !d.peers.settled(p, now) {
		d.stats.Unsolicited.Add(1)
		return nil
	}
	if d.in.Node != d.node {
		if d.unicast {
			return errNackNotOurs
		}
		if d.group.IsValid() { // else this node asks by unicast (--repair unicast), whatever it hears
			d.overheard(&d.in, now)
		}
		return nil
	}
	if !d.gate.admit(p, now) {
		return nil
	}
	to := p.addr
	if !d.unicast && d.group.IsValid() {
		to = d.group // the others that lost them hold back their requests
	}
	return d.repair.serve(p, &d.in, to, now)
}

// overheard takes another receiver's request to the group for the
// datagrams of a peer of this node's.
func (d *dispatcher) overheard(req *wire.Nack, now time.Time) {
	x := d.peers.byNode[req.Node]
	if x == nil || x.epoch != req.Epoch {
		return // a peer unknown here, or another run of it
	}
	if x.stream.heard(req.Ranges[:req.N], now, d.backoff()) {
		d.stats.NacksSuppressed.Add(1)
	}
}

// gone handles a peer's answer that it no longer holds some of what we
// asked for: those changes can only come back with a full resync.
func (d *dispatcher) gone(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	body := dgram[wire.HeaderSize:]
	if err := d.in.Unmarshal(body, h.Count); err != nil {
		return err
	}
	if d.in.Node != p.node || d.in.Epoch != p.epoch {
		return nil // about another run of the peer's
	}
	held := p.stream.n
	skipped := p.stream.gone(d.in.Ranges[d.in.N-1].Last)
	d.stats.Held.Add(-uint64(held - p.stream.n))
	if skipped {
		d.resyncNeeded(p, "peer no longer holds the missing datagrams")
		d.release(p, now)
	}
	return nil
}

func (d *dispatcher) syncRequest(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	body := dgram[wire.HeaderSize:]
	if h.Count > 0 {
		return wire.ErrBadLength
	}
	var filter *wire.BucketFilter
	var from uint64
	switch len(body) {
	case 0:
	case wire.SyncDeltaSize:
		var err error
		if from, err = wire.SyncDelta(body); err != nil {
			return err
		}
	default:
		filter = new(wire.BucketFilter)
		if err := d.digests.filter(filter, body); err != nil {
			return err
		}
	}
	if !p.announced && !d.listed || !d.peers.settled(p, now) {
		d.stats.Unsolicited.Add(1)
		return nil
	}
	// With --peers, a node whose list does not name this one sends it no
	// announce, yet may hear this node and ask it for its initial sync:
	// it is answered once its address proved itself, as any requester,
	// else it would ask for ever while the lists disagree.
	if !d.gate.admit(p, now) {
		return nil
	}
	return d.server.request(p, h, filter, from, now)
}

func (d *dispatcher) syncAck(p *peer, h *wire.Header, dgram []byte, _ time.Time) error {
	body := dgram[wire.HeaderSize:]
	return d.server.acked(p, h, body)
}

func (d *dispatcher) syncStart(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	body := dgram[wire.HeaderSize:]
	held := p.stream.n
	err := d.client.started(p, h, body, now)
	d.stats.Held.Add(-uint64(held - p.stream.n)) // dropped: the snapshot has them
	d.release(p, now)
	return err
}

func (d *dispatcher) snapshot(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	body := dgram[wire.HeaderSize:]
	return d.client.snapshot(p, h, body, now)
}

func (d *dispatcher) syncEnd(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	body := dgram[wire.HeaderSize:]
	return d.client.end(p, h, body, now)
}

// cookie takes a cookie p sent instead of answering: this node echoes it
// and asks again at once.
func (d *dispatcher) cookie(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	var c wire.Cookie
	if err := c.Unmarshal(h, dgram[wire.HeaderSize:]); err != nil {
		return err
	}
	if !d.peers.settled(p, now) {
		return nil // p's address may be a replay's: nothing goes there yet
	}
	d.gate.cookie(p, c, now)
	d.again(p, now)
	return nil
}

// cookieEcho takes p's echo of a cookie: once it proves p's address, the
// requests this node withheld from p for want of credit go out.
func (d *dispatcher) cookieEcho(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	var c wire.Cookie
	if err := c.Unmarshal(h, dgram[wire.HeaderSize:]); err != nil {
		return err
	}
	if d.gate.echoed(p, d.from, c, now) {
		d.again(p, now)
	}
	return nil
}

// again sends p the requests of this node's that wait for it: the
// missing ranges of its stream, unless it waits for a resync, and the
// resync request, if any.
func (d *dispatcher) again(p *peer, now time.Time) {
	if !p.stream.since.IsZero() && !p.stream.paused { // as the retry timer would
		d.askFor(p, true, now)
	}
	d.client.again(p, now)
}

// onTimers runs the timers of every peer: repeats repair requests, gives up
// on gaps not repaired in time, forgets silent peers and drives the
// resync; then applies what that released.
func (d *dispatcher) onTimers(now time.Time, silent []*peer) []*peer {
	for _, p := range d.peers.silent(now, silent[:0]) {
		if s, ok := d.limit.allow(reasonPeer); ok {
			d.log.Warn("forgetting a silent peer", "node", p.node, "addr", p.addr,
				"silent_for", now.Sub(p.lastHeard).Round(time.Millisecond), "suppressed", s)
		}
		d.stats.PeersExpired.Add(1)
		d.retire(p, now)
		delete(d.peers.byNode, p.node)
	}
	for _, p := range d.peers.inOrder() {
		switch p.stream.due(now) {
		case retryAsk:
			d.askFor(p, false, now)
		case retryAgain:
			d.askFor(p, true, now)
		case retryGiveUp:
			d.resyncNeeded(p, "missing datagrams not repaired in time")
			p.stream.giveUp()
			d.release(p, now)
		}
	}
	d.client.onTimers(now)
	d.digests.onTimers(now)
	d.apply.reasm.onTimers(now)
	for _, p := range d.peers.inOrder() {
		if !p.stream.paused && p.stream.n > 0 {
			d.release(p, now)
		}
	}
	d.apply.applyRuns()
	return silent
}

// resyncNeeded records that p's changes before its current gap are lost,
// so a full resync from p is due.
func (d *dispatcher) resyncNeeded(p *peer, why string) {
	d.stats.ResyncNeeded.Add(1)
	p.needSync = true
	if s, ok := d.limit.allow(reasonResync); ok {
		d.log.Warn("giving up on missing datagrams; a resync from the peer follows", "peer", p.node, "addr", p.addr,
			"epoch", p.epoch, "next", p.stream.next, "latest", p.stream.latest, "reason", why, "suppressed", s)
	}
}

// compare checks a peer's map descriptor against the local map of the
// same name. A map that differs, in schema or in its clock, local or lock
// fields, is counted, kept for the status and logged once per peer and
// difference; the peer's changes to that map then carry a fingerprint no
// local map has, and are counted as unknown.
func (d *dispatcher) compare(p *peer, desc *wire.Descriptor) {
	m := d.apply.table.byName(desc.Name)
	if m == nil {
		return
	}
	fp := desc.Fingerprint()
	if fp == m.fp {
		delete(p.mismatch, desc.Name)
		return
	}
	if reported, ok := p.mismatch[desc.Name]; ok && reported.fp == fp {
		return
	}
	if p.mismatch == nil {
		p.mismatch = make(map[string]mapMismatch)
	}
	diff, fix := m.differences(desc)
	why := strings.Join(diff, "; ")
	p.mismatch[desc.Name] = mapMismatch{fp: fp, why: why}
	d.stats.MapMismatches.Add(1)
	if s, ok := d.limit.allow(reasonSchema); ok {
		d.log.Error("peer's map differs from the local map; its changes to this map are dropped", "map", desc.Name,
			"peer", p.node, "addr", p.addr, "differences", why, "fix", fix, "suppressed", s)
	}
}

func (d *dispatcher) malformed(from netip.AddrPort, err error) {
	d.stats.Malformed.Add(1)
	if errors.Is(err, wire.ErrBadFragment) {
		d.stats.FragmentsMalformed.Add(1)
	}
	if s, ok := d.limit.allow(reasonMalformed); ok {
		d.log.Warn("dropping malformed datagram", "from", from, "error", err, "suppressed", s)
	}
}

func (d *dispatcher) forged(from netip.AddrPort, h *wire.Header, why string) {
	d.stats.Forged.Add(1)
	if s, ok := d.limit.allow(reasonForged); ok {
		args := []any{"from", from, "node", h.Node, "epoch", h.Epoch, "reason", why, "suppressed", s}
		if p := d.peers.byNode[h.Node]; p != nil {
			args = append(args, "known_addr", p.addr)
		}
		d.log.Warn("dropping datagram from an unexpected address", args...)
	}
}

// digest answers a peer's digest of one bucket. Like a request, it is
// taken only from a peer that announced itself from its settled address.
func (d *dispatcher) digest(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	if h.Count > 0 {
		return wire.ErrBadLength
	}
	if err := d.digestIn.Unmarshal(dgram[wire.HeaderSize:]); err != nil {
		return err
	}
	if !p.announced || !d.peers.settled(p, now) {
		d.stats.Unsolicited.Add(1)
		return nil
	}
	return d.digests.answer(p, &d.digestIn)
}

// digestDiff takes a peer's answer to one of this node's digests.
func (d *dispatcher) digestDiff(p *peer, h *wire.Header, dgram []byte, now time.Time) error {
	var g wire.DigestDiff
	if h.Count > 0 {
		return wire.ErrBadLength
	}
	if err := g.Unmarshal(dgram[wire.HeaderSize:]); err != nil {
		return err
	}
	return d.digests.differs(p, &g, now)
}
