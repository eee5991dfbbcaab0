package replication

import (
	"cmp"
	"net/netip"
	"slices"
	"time"
)

// Peer bounds: what a stream of forged datagrams can make this node
// remember. See "Hostile input" in docs/ARCHITECTURE.md.
const (
	// maxPeers bounds the nodes tracked at once. A datagram from a new
	// node id beyond it is dropped and counted (peer_limit).
	maxPeers = 64
	// A peer silent for peerSilence announce intervals, and at least
	// minPeerSilence, is forgotten with what is held for it: a dead node
	// stops being a resync source, and a node id that moved to another
	// address can bind again. One that comes back is heard as new.
	peerSilence    = 10
	minPeerSilence = 10 * time.Second
	// trustAfter is how many announce intervals a peer must have been
	// heard for before it is chosen as a resync source, unless its
	// address echoed a cookie before (see [peerTable.established]).
	trustAfter = 2
	// syncSourceBackoff is how long a peer that did not answer a resync
	// request is passed over as a resync source.
	syncSourceBackoff = 10 * time.Second
)

// peer is what this node knows of one other node in its current epoch.
// Sequence numbers are per (node, epoch): a new epoch means the peer
// restarted and numbers from 1 again.
type peer struct {
	node       uint32
	addr       netip.AddrPort // where its datagrams come from; bound for the epoch
	epoch      uint64
	firstHeard time.Time
	lastHeard  time.Time
	// addrSince, with a key, is when addr last changed (see
	// [sealedTransport.open]); nothing is sent there before it settled.
	addrSince time.Time
	// announced is set by the peer's first valid announce. Answers
	// (repairs, snapshots) go only to a peer that announced itself from
	// its address, never to an address taken from one request.
	announced bool
	// proven is the address that echoed a cookie of this node's: while it
	// is addr, addr receives what is sent there. Until then credit is
	// what may still be sent there, and cookieAt when the last cookie
	// went, and withheld whether something was not sent for want of
	// credit (see [answerGate]).
	proven   netip.AddrPort
	credit   float64
	cookieAt time.Time
	withheld bool
	ready    bool // its announces say it completed its initial sync
	// boundReady: this node was ready when it first heard this run of
	// the peer's (see [dispatcher.announce]).
	boundReady bool
	// needSync is set when its changes were lost beyond repair: a full
	// resync from it is due, or only a delta of what it sent since the
	// first change lost (see [resyncClient.begin]), unless full is set:
	// what is due is more than its stream since then carried.
	needSync bool
	full     bool
	// passOver is when it may again be chosen as a resync source, after
	// it did not answer one.
	passOver  time.Time
	stream    orderedStream
	answers   byteBudget // the answer budget
	datagrams uint64
	resyncs   uint64 // full resyncs received from it
	// mismatch holds, per map name, the peer's map that differs from
	// ours, so it is reported once and shown by the status.
	mismatch map[string]mapMismatch
}

// peerTable is the set of peers, bounded in number, each bound to the
// address it was first heard from in its epoch.
type peerTable struct {
	byNode  map[uint32]*peer
	ordered []*peer       // inOrder's buffer
	silence time.Duration // forget a peer not heard for this long
	trust   time.Duration // heard for this long before it serves resyncs
	settle  time.Duration // an address held this long before it is sent to
}

// newPeerTable sizes the table's periods for the announce interval.
// With a key, every peer is authentic, so it need not be heard for a
// while before it serves a resync (its address must settle, though).
func newPeerTable(announce time.Duration, keyed bool) peerTable {
	t := peerTable{
		byNode:  make(map[uint32]*peer),
		silence: max(peerSilence*announce, minPeerSilence),
		trust:   trustAfter * announce,
		settle:  announce,
	}
	if keyed {
		t.trust = 0
	}
	return t
}

// binding is what a datagram's (node, epoch, address) means to the table.
type binding uint8

const (
	bindKnown     binding = iota // the peer as known: same epoch, same address
	bindNew                      // a node never heard, or forgotten
	bindRestarted                // the peer restarted: a later epoch from its address
	bindForged                   // the node's epoch from another address, or a later one from another address
	bindStale                    // an earlier epoch of the node: late or replayed
)

// classify says what a datagram from (node, epoch) at from means.
// Without authentication a node is bound to the address it was first
// heard from: anyone else using its id, or claiming a restart of it, is an
// impostor. A node that really moved to another address binds again once
// its old entry has been forgotten after the silence period.
// Authenticated datagrams are the node's wherever they come from; where
// to answer it is decided by the seal (see [sealedTransport.open]).
func (t *peerTable) classify(node uint32, epoch uint64, from netip.AddrPort, authenticated bool) (*peer, binding) {
	p := t.byNode[node]
	switch {
	case p == nil:
		return nil, bindNew
	case epoch < p.epoch:
		return p, bindStale
	case p.addr != from && !authenticated:
		return p, bindForged
	case epoch > p.epoch:
		return p, bindRestarted
	}
	return p, bindKnown
}

// add starts tracking node at from; it returns nil when the table is full.
func (t *peerTable) add(node uint32, epoch uint64, from netip.AddrPort, now time.Time, stream orderedStream) *peer {
	if len(t.byNode) >= maxPeers {
		return nil
	}
	p := &peer{node: node, addr: from, epoch: epoch, firstHeard: now, lastHeard: now, stream: stream}
	t.byNode[node] = p
	return p
}

// inOrder returns the peers ordered by node id, in a buffer of the
// table's that the next call reuses: the timers act on the peers in the
// same order on every run, so that a simulated run replays.
func (t *peerTable) inOrder() []*peer {
	t.ordered = t.ordered[:0]
	for _, p := range t.byNode {
		t.ordered = append(t.ordered, p)
	}
	slices.SortFunc(t.ordered, func(a, b *peer) int { return cmp.Compare(a.node, b.node) })
	return t.ordered
}

// silent returns the peers not heard for the silence period.
func (t *peerTable) silent(now time.Time, out []*peer) []*peer {
	for _, p := range t.byNode {
		if now.Sub(p.lastHeard) >= t.silence {
			out = append(out, p)
		}
	}
	return out
}

// established reports whether p may be asked for a resync: heard for a
// while or at an address that proved it receives what is sent there, at
// an address that settled, and not passed over. Either shows that p lives
// at its address: a single forged or replayed datagram, or a node that
// died after it sent it, never answers. The cookie's round trip shows it
// in a millisecond where hearing p for a while takes two announce
// intervals, which a joining node would wait before it asked for its
// initial sync.
func (t *peerTable) established(p *peer, now time.Time) bool {
	return (now.Sub(p.firstHeard) >= t.trust || p.addrProven()) && t.settled(p, now) && !now.Before(p.passOver)
}

// addrProven reports whether p's address proved that it receives what is
// sent to it (see [answerGate]).
func (p *peer) addrProven() bool { return p.proven.IsValid() && p.proven == p.addr }

// trusted reports whether p may serve this node its initial sync:
// established, announced, and announcing itself ready.
func (t *peerTable) trusted(p *peer, now time.Time) bool {
	return p.announced && p.ready && t.established(p, now)
}

// settled reports whether p's address may be sent to: with a key, one
// announce interval after it last changed; without, always (a node id is
// bound to its address).
func (t *peerTable) settled(p *peer, now time.Time) bool {
	return p.addrSince.IsZero() || now.Sub(p.addrSince) >= t.settle
}

// anyReady reports whether a peer announced that it is ready.
func (t *peerTable) anyReady() bool {
	for _, p := range t.byNode {
		if p.ready {
			return true
		}
	}
	return false
}

// lowest is the smallest node id known, or the largest uint32 if none.
func (t *peerTable) lowest() uint32 {
	low := ^uint32(0)
	for node := range t.byNode {
		low = min(low, node)
	}
	return low
}

// PeerStatus is what this node knows about one peer.
type PeerStatus struct {
	Node      uint32
	Addr      netip.AddrPort
	Epoch     uint64
	Ready     bool      // it announced that its initial sync is complete
	Seq       uint64    // highest sequence number the peer is known to have sent
	Applied   uint64    // highest sequence number applied in order
	LastHeard time.Time // its last valid datagram
	Datagrams uint64    // accepted in this epoch
	Gaps      uint64    // change datagrams missed in this epoch
	Resyncs   uint64    // full resyncs received from it in this epoch
	// MissingSince is when the oldest datagram still missing went
	// missing; zero when nothing is.
	MissingSince time.Time
	// ResyncOwed says that this node gave up on some of the peer's
	// datagrams, or was told its snapshot lacked them, and no full resync
	// from it has brought them yet: it is behind the peer, whatever Lag
	// says (the given-up claims are forgotten).
	ResyncOwed bool
	// Mismatches says, per map whose name it shares with a local map but
	// whose schema or fields differ, how: "flows: the peer treats ...".
	// Their changes to those maps are dropped.
	Mismatches []string
}

// Lag is how many of the peer's datagrams are known sent and not applied.
func (s *PeerStatus) Lag() uint64 { return s.Seq - min(s.Applied, s.Seq) }

// status lists the peers ordered by node id.
func (t *peerTable) status() []PeerStatus {
	out := make([]PeerStatus, 0, len(t.byNode))
	for _, p := range t.byNode {
		out = append(out, PeerStatus{Node: p.node, Addr: p.addr, Epoch: p.epoch, Ready: p.ready,
			Seq: p.stream.latest, Applied: p.stream.next - 1, LastHeard: p.lastHeard,
			Datagrams: p.datagrams, Gaps: p.stream.gaps, Resyncs: p.resyncs, MissingSince: p.stream.since,
			ResyncOwed: p.needSync || p.stream.lostFrom != 0, Mismatches: p.mismatches()})
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return cmp.Compare(a.Node, b.Node) })
	return out
}

// The answer budget bounds the bytes this node sends one peer in answers
// to its requests (repairs and their "gone" answers, sync starts): enough
// for a receiver that asks again for a third of a full-speed stream (some
// 80 MB/s of 16 B / 64 B changes), which one whose receive window filled
// behind a gap does (hold_full), and a bound on what forged requests can
// make a node send. A request the budget cannot cover is answered in
// part, and the rest asked for again later. (At 16 MiB/s, the budget
// before, such a receiver was refused 600 to 10,800 datagrams a 1M-change
// run, each asked for again up to 200 ms later.)
const (
	answerRate  = 64 << 20 // bytes per second
	answerBurst = 8 << 20
)

// byteBudget is a token bucket of bytes: up to burst, refilled at rate
// bytes per second. The zero rate means the answer budget's.
type byteBudget struct {
	rate, burst float64
	tokens      float64
	at          time.Time
}

// take reports whether n bytes may be sent now, and if so spends them.
func (b *byteBudget) take(n int, now time.Time) bool {
	if b.rate == 0 {
		b.rate, b.burst = answerRate, answerBurst
	}
	if b.at.IsZero() {
		b.tokens = b.burst
	} else {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.at).Seconds()*b.rate)
	}
	b.at = now
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

// behindOn reports whether this node lacks changes of a peer other than
// p: lost beyond repair and not yet resynced, or known sent and not yet
// applied. A snapshot served meanwhile would lack them, and the
// requester, which takes the snapshot for everything that peer sent
// before the first datagram it heard of it, would never get them.
func (t *peerTable) behindOn(p *peer) bool {
	behind, _ := t.lacks(p)
	return behind
}

// lacks reports, besides behindOn, whether all this node lacks of peers
// other than p is lost changes of peers not ready: those come by a full
// resync only once the peer is ready, which may wait on p.
func (t *peerTable) lacks(p *peer) (behind, onlyUnready bool) {
	onlyUnready = true
	for _, q := range t.byNode {
		lost := q.needSync || q.stream.lostFrom != 0
		if q == p || !lost && q.stream.latest < q.stream.next {
			continue
		}
		behind = true
		if !lost || q.ready || q.stream.latest >= q.stream.next {
			onlyUnready = false
		}
	}
	return behind, behind && onlyUnready
}
