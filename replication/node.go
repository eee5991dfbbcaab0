package replication

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/seal"
	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

// RetryTick is how often the receive side's timers look at the peers
// (see [Node.FireTimers]); pruneEvery how often the deletes past the
// horizon are forgotten.
const (
	RetryTick  = 5 * time.Millisecond
	pruneEvery = time.Second
)

// Config configures a [Node].
type Config struct {
	// Node is this node's id, in every datagram it sends; datagrams
	// carrying it are dropped. Zero is not an id.
	Node uint32
	// Epoch identifies this run of the node: it must be larger than the
	// epoch of any earlier run, so that peers can tell a restart from a
	// replay.
	Epoch uint64
	// Table is the set of replicated local maps.
	Table *Table
	// Source yields the changes to replicate.
	Source Source
	// Transport carries the datagrams.
	Transport Transport
	// Peers, set (even empty), say that the transport sends to a list of
	// peers (--peers), not to a group: a peer whose own list does not name
	// this node, so that it announces nothing here, may still ask this
	// node for a resync, and is answered once its address proved itself.
	// Without Keys they are the only source addresses accepted; datagrams
	// from anywhere else count as forged. Zones are ignored. With Keys the
	// seal decides whom to trust, not the address. [Node.SetPeers]
	// replaces them.
	Peers []netip.Addr
	// Group is the multicast group and port the transport sends to, if it
	// sends to one: then a receiver asks for a lost datagram there, after
	// a random back-off, so that the others that lost it hear the request
	// and hold theirs back, and the sender resends it there once for all
	// of them (see "Loss repair" in docs/ARCHITECTURE.md). Zero (unicast,
	// --peers): each receiver asks the sender, and is answered, apart.
	Group netip.AddrPort
	// FlushInterval bounds how long a captured change waits for more
	// changes to share its datagram (default [DefaultFlushInterval]).
	FlushInterval time.Duration
	// AnnounceInterval is the period of announce datagrams (default
	// [DefaultAnnounceInterval]). A starting node that hears no ready peer
	// for twice as long decides its initial sync alone, and a peer silent
	// for ten times as long is forgotten.
	AnnounceInterval time.Duration
	// ResendBytes sizes the buffer of sent datagrams that peers' repair
	// requests are answered from (default [DefaultResendBytes]).
	ResendBytes int
	// ReassemblyBytes bounds what the node holds of records that arrive
	// in fragments and are not complete yet (see "Fragments" in
	// wire/FORMAT.md), from all peers together; one peer may hold a
	// quarter of it (default [DefaultReassemblyBytes]). A quarter must
	// hold the largest value of a map whose records travel in fragments.
	ReassemblyBytes int
	// ApplyWorkers is how many goroutines write a peer's changes into the
	// local maps: 1 (the default, also 0) or 2, which split each large
	// batch of a kernel map between them by key, for a receiver with a
	// core to spare (see "Two apply workers" in docs/ARCHITECTURE.md).
	ApplyWorkers int
	// Keys, when set, seal every datagram sent and open every one
	// received (see package seal and "Sealed datagrams" in
	// wire/FORMAT.md): a node without them can neither inject nor read
	// changes. The table's payload must leave [wire.SealSize] bytes of the
	// transport's for the seal. Without keys anyone on the link can.
	Keys *seal.Keys
	// TombstoneHorizon is how long deletes are remembered for peers that
	// still hold the key (default [DefaultTombstoneHorizon]).
	TombstoneHorizon time.Duration
	// Clock stamps this node's writes; nil means a clock on the system's
	// time.
	Clock *hlc.Clock
	// Time is where the node reads the time and waits; nil means the
	// system's clock. A simulator gives a virtual one.
	Time Time
	// StateFile, when set, is where a stopping node saves the versions of
	// its entries, and where a starting one looks for them, to tell its
	// datapath's writes made while no daemon ran from what it knew (see
	// "Restart" in docs/ARCHITECTURE.md).
	StateFile string
	// DigestInterval is the period of digest rounds, in which the node
	// compares what it holds with one peer, bucket by bucket, and repairs
	// the buckets that differ (see "Digest rounds" in
	// docs/ARCHITECTURE.md); 0: none. The cmd's default is
	// [DefaultDigestInterval].
	DigestInterval time.Duration
	// DigestNormalize, when set, masks the bytes of values that
	// legitimately differ between nodes before digests compare them.
	DigestNormalize DigestNormalizer
	// Rand is where the node's random choices come from: the secrets of
	// its cookies (see [wire.Cookie]) and its resync request ids; nil
	// means crypto/rand. A simulator gives a seeded one.
	Rand io.Reader
	// MonoOffset is a test hook: it shifts what this node reads as the
	// kernel's monotonic and boot clocks for the maps' clock fields, so
	// that nodes on one kernel can stand for hosts booted at different
	// times.
	MonoOffset time.Duration
	// Log receives the node's log lines; nil discards them.
	Log *slog.Logger
}

// DefaultTombstoneHorizon is how long a delete is remembered, so that a
// peer that still holds the key learns of it in a resync.
const DefaultTombstoneHorizon = knowledge.DefaultTombstoneHorizon

// Errors of [NewNode], for callers to turn into advice.
var (
	ErrNoNodeID   = errors.New("node id 0 is not an id")
	ErrResendSize = errors.New("resend buffer size out of range")
	// ErrReassemblySize refuses a reassembly bound whose peer's share
	// cannot hold one record of the largest fragmented map.
	ErrReassemblySize = errors.New("reassembly memory too small")
	ErrIncomplete     = errors.New("config lacks a table, source or transport")
	// ErrApplyWorkers refuses a number of apply workers other than 1 or 2.
	ErrApplyWorkers = errors.New("apply workers must be 1 or 2")
	// ErrDigestPayload refuses digest rounds in datagrams too small for a
	// digest: the MTU must grow, or the rounds be turned off.
	ErrDigestPayload = errors.New("datagrams too small for a digest")
)

// Node is one udpmapsync node: it owns the sender and the receive side,
// the resend buffer between them, the statistics, the readiness of the
// initial sync and the node's identity. [Node.Run] runs it.
//
// The receive side is parts with one job each, behind one lock: the
// [dispatcher] routes each datagram by kind; every peer's
// [orderedStream] puts its change datagrams in order for the [applier];
// the [repairResponder] answers repair requests from the resend buffer;
// the [resyncClient] and the [snapshotServer] are the two ends of a full
// resync; the [answerGate] decides what each peer's address may be sent
// before it has proved that it receives there. Each lock sits next to
// what it guards: the snapshot server's transfers, which goroutines of
// their own drive, are under the server's; the readiness flag, the
// counters, the knowledge and the fingerprints keep their own.
type Node struct {
	node   uint32
	epoch  uint64
	src    Source
	tr     Transport
	log    *slog.Logger
	stats  Stats
	resend *resendBuffer
	sender *sender
	know   *knowledge.Store // shared by the sender and the receive side, under its own lock
	clock  *hlc.Clock
	relay  relayQueue
	state  string // Config.StateFile
	// applyWorkers is Config.ApplyWorkers, 1 or 2: with 2, Run starts the
	// applier's second worker.
	applyWorkers int
	time         Time        // Config.Time
	prints       *printTable // of the scanned maps, under its own lock
	scan         *scanner
	// digester reads the maps into digests every digestEvery (0: never),
	// outside every lock but the knowledge's.
	digester    digester
	digestEvery time.Duration

	// server streams snapshots to requesters, under its own lock, which
	// may be taken with the receive lock held.
	server snapshotServer

	mu       sync.Mutex // the receive lock: guards everything below
	peers    peerTable
	gate     answerGate
	apply    applier
	repair   repairResponder
	client   resyncClient
	digests  digests
	dispatch dispatcher
	ready    readiness
	limit    limiter
	silent   []*peer    // FireTimers' buffer
	pruned   time.Time  // when FireTimers last pruned
	save     *stateSave // begun by BeginStop
}

// NewNode prepares a node; nothing is sent or read before [Node.Run].
func NewNode(cfg Config) (*Node, error) {
	if cfg.Node == 0 {
		return nil, ErrNoNodeID
	}
	if cfg.Table == nil || cfg.Source == nil || cfg.Transport == nil {
		return nil, ErrIncomplete
	}
	if cfg.ApplyWorkers < 0 || cfg.ApplyWorkers > 2 {
		return nil, fmt.Errorf("%w: %d", ErrApplyWorkers, cfg.ApplyWorkers)
	}
	if cfg.DigestInterval > 0 && cfg.Table.payload < wire.HeaderSize+wire.DigestSize {
		return nil, fmt.Errorf("%w: %d bytes, a digest takes %d", ErrDigestPayload, cfg.Table.payload, wire.HeaderSize+wire.DigestSize)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	announce := cmp.Or(cfg.AnnounceInterval, DefaultAnnounceInterval)
	if cfg.Time == nil {
		cfg.Time = SystemTime{}
	}
	resend, err := newResendBuffer(cmp.Or(cfg.ResendBytes, DefaultResendBytes), cfg.Table.payload)
	if err != nil {
		return nil, err
	}
	resend.time = cfg.Time
	reassembly := cmp.Or(cfg.ReassemblyBytes, DefaultReassemblyBytes)
	if need := cfg.Table.largestFragmented() * reassemblyPeerShare; reassembly < need || reassembly > 1<<40 {
		return nil, fmt.Errorf("%w: %d bytes; want at least %d (%d times the largest fragmented record's %d) and at most 1 TiB",
			ErrReassemblySize, reassembly, need, reassemblyPeerShare, need/reassemblyPeerShare)
	}
	clock := cfg.Clock
	if clock == nil {
		clock = hlc.New(cfg.Time.Now, 0)
	}
	n := &Node{node: cfg.Node, epoch: cfg.Epoch, src: cfg.Source, tr: cfg.Transport, log: log, resend: resend,
		peers: newPeerTable(announce, cfg.Keys != nil), clock: clock, state: cfg.StateFile, time: cfg.Time,
		applyWorkers: max(cfg.ApplyWorkers, 1)}
	n.limit.time = cfg.Time
	n.know = newKnowledge(cfg.Table, cfg.TombstoneHorizon, clock, cfg.Node, &n.stats, cfg.Time.Now())
	cfg.Table.mono.offset = cfg.MonoOffset
	n.prints = newPrintTable(cfg.Table, cfg.Time.Now())
	var sealed *sealedTransport
	if cfg.Keys != nil {
		sealed = newSealedTransport(cfg.Transport, cfg.Keys, cfg.Node, cfg.Epoch, &n.stats, log)
		sealed.time, sealed.limit.time = cfg.Time, cfg.Time
		cfg.Transport, n.tr = sealed, sealed
	}
	n.ready = readiness{time: cfg.Time, wait: 2 * announce, done: make(chan struct{}), log: log}
	n.sender = newSender(senderConfig{Source: cfg.Source, Transport: cfg.Transport, Table: cfg.Table,
		Node: cfg.Node, Epoch: cfg.Epoch, Sealed: cfg.Keys != nil, FlushInterval: cfg.FlushInterval, AnnounceInterval: announce,
		Resend: resend, Ready: n.ready.isReady, Knowledge: n.know, Prints: n.prints, Clock: clock, Time: cfg.Time,
		Relay: &n.relay,
		Stats: &n.stats, Log: log})
	n.scan = newScanner(scanner{table: cfg.Table, know: n.know, prints: n.prints, clock: clock, relay: &n.relay,
		stats: &n.stats, log: log, node: cfg.Node, now: cfg.Time.Now, ready: n.ready.isReady})

	ctl := func() controlSender {
		return newControlSender(cfg.Transport, cfg.Node, cfg.Epoch, cfg.Keys != nil, &n.stats, log, &n.limit)
	}
	random := cfg.Rand
	if random == nil {
		random = rand.Reader
	}
	n.gate = answerGate{jar: newCookieJar(random), ctl: ctl(), peers: &n.peers, stats: &n.stats, log: log, limit: &n.limit}
	if cfg.Keys != nil {
		n.gate.seal = wire.SealSize
	}
	n.apply = newApplier(cfg.Table, n.know, clock, &n.stats, log, &n.limit, reassembly)
	n.apply.time, n.apply.prints = cfg.Time, n.prints
	n.repair = newRepairResponder(resend, cfg.Table.payload, ctl(), &n.stats, log, &n.limit)
	n.client = resyncClient{time: cfg.Time, rand: random, peers: &n.peers, apply: &n.apply, know: n.know, clock: clock,
		relay: &n.relay, ctl: ctl(), gate: &n.gate, ready: &n.ready, stats: &n.stats, log: log, limit: &n.limit, node: cfg.Node}
	n.server = snapshotServer{time: cfg.Time, table: cfg.Table, know: n.know, clock: clock, tr: cfg.Transport, node: cfg.Node,
		epoch: cfg.Epoch, sealed: cfg.Keys != nil, own: resend,
		stats: &n.stats, log: log, answer: n.answer, transfers: make(map[uint32]*transfer),
		started: make(map[uint32]time.Time), stop: make(chan struct{})}
	n.digester = digester{table: cfg.Table, know: n.know, clock: clock, normalize: cfg.DigestNormalize, time: n.time}
	n.digestEvery = cfg.DigestInterval
	n.digests = digests{table: cfg.Table, source: &n.digester, peers: &n.peers, client: &n.client, gate: &n.gate, ctl: ctl(),
		stats: &n.stats, upToDate: n.upToDate, settle: digestSettle}
	n.client.repaired, n.client.normalize = n.digests.repaired, cfg.DigestNormalize
	var seed [16]byte
	if _, err := io.ReadFull(random, seed[:]); err != nil {
		return nil, fmt.Errorf("seeding the repair back-off: %w", err)
	}
	n.dispatch = dispatcher{node: cfg.Node, window: uint64(min(maxHeld, maxHeldBytes/cfg.Table.payload)),
		group: cfg.Group, listed: cfg.Peers != nil, rng: mrand.New(mrand.NewPCG(binary.BigEndian.Uint64(seed[:]), binary.BigEndian.Uint64(seed[8:]))),
		peers: &n.peers, gate: &n.gate, apply: &n.apply, repair: &n.repair, client: &n.client, server: &n.server, digests: &n.digests, ask: ctl(),
		greet: &n.sender.greet, stats: &n.stats, log: log, limit: &n.limit, keyed: cfg.Keys != nil}
	if cfg.Peers != nil && cfg.Keys == nil {
		n.dispatch.allow.set(cfg.Peers)
	}
	n.dispatch.init()
	return n, nil
}

// upToDate reports whether this node may serve p a snapshot: it completed
// its initial sync, is not receiving a resync itself, and lost no other
// peer's changes, so what it serves is the group's state, not a stale
// one. Changes of p's own it may have lost: p holds those itself, and two
// nodes that lost each other's (a healed partition) still serve each
// other.
func (n *Node) upToDate(p *peer) bool {
	return n.ready.isReady() && !n.client.busy() && !n.peers.behindOn(p)
}

// answer is this node's answer to p's request for a snapshot: served if
// it is up to date, and, once ready, whenever p is ready too. A ready
// requester follows every other peer's stream itself and resyncs from
// each peer whose changes it lost: it asks this node only for this node's
// own changes, which its maps hold however far behind on the others it
// is. Refusing it would only make two nodes that each lost the other's
// changes, and so are each behind, wait on each other for ever. A
// requester in its initial sync is served partially if all this node
// lacks is changes lost of peers not ready: those serve nobody before
// they are ready, which may wait on this very sync; the requester then
// resyncs from every other peer as well.
func (n *Node) answer(p *peer) uint8 {
	switch {
	case !n.ready.isReady():
		return wire.SyncNotReady
	case p.ready:
		return wire.SyncOK
	case n.client.busy():
		return wire.SyncNotReady
	}
	switch behind, onlyUnready := n.peers.lacks(p); {
	case !behind:
		return wire.SyncOK
	case onlyUnready:
		return wire.SyncPartial
	}
	return wire.SyncNotReady
}

// Run replicates until ctx is done or the source or the transport fails.
// Then it closes the source and the transport, if they are [io.Closer]s,
// to end their blocking reads, stops every snapshot transfer, and returns
// once nothing of the node runs any more: the caller may then close the
// maps. It returns nil when ctx ended it.
//
// With a [Config.StateFile], Run first takes the state the previous run
// saved, and when ctx ends it saves the state before it stops.
func (n *Node) Run(ctx context.Context) error {
	n.restore()
	n.mu.Lock()
	n.ready.started = n.time.Now()
	n.mu.Unlock()
	n.server.spawnEach()
	if n.applyWorkers == 2 {
		stop := make(chan struct{})
		n.apply.worker = startApplyWorker(stop)
		defer func() {
			n.apply.worker = nil // every part ended: nothing applies any more
			close(stop)
		}()
	}
	// The parts run on until the state is saved, after ctx ended.
	inner, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	done := make(chan error, 5)
	go func() { done <- n.sender.Run(inner) }()
	go func() { done <- n.receive(inner) }()
	go func() { done <- n.timers(inner) }()
	go func() { done <- n.scan.run(inner) }()
	go func() { done <- n.readDigests(inner) }()
	var first error
	var save *stateSave
	ended := 0
	select {
	case <-ctx.Done():
		save = n.beginSave(true)
	case first = <-done: // an error
		ended++
	}
	cancel()
	for _, c := range []any{n.src, n.tr} {
		if c, ok := c.(io.Closer); ok {
			_ = c.Close()
		}
	}
	for ; ended < cap(done); ended++ {
		if err := <-done; first == nil {
			first = err
		}
	}
	n.server.shutdown()
	n.finishSave(save)
	return first
}

// restore takes the state file of the previous run, if any.
func (n *Node) restore() {
	if n.state == "" {
		return
	}
	found, err := n.restoreState(n.state)
	if err != nil {
		n.log.Warn("the state saved by the last run cannot be used: every entry is taken as unstamped, so a change "+
			"this node's datapath made to an existing key while no daemon ran loses to the peers' version of it",
			"file", n.state, "error", err)
		return
	}
	n.log.Info("state of the last run restored", "file", n.state, "written_while_down", found)
}

// beginSave starts the state file, if there is one to write; nil if not.
// With wait, it waits for the capture to drain, while the sender runs on.
func (n *Node) beginSave(wait bool) *stateSave {
	if n.state == "" {
		return nil
	}
	sv, err := n.startState(n.state)
	if err == nil && wait {
		if err = n.awaitDrain(sv, &n.sender.drainedAt); err != nil {
			sv.abort()
			sv = nil
		}
	}
	if err != nil {
		n.saveFailed(err)
	}
	return sv
}

func (n *Node) saveFailed(err error) {
	n.log.Warn("cannot save the state for the next run: it will take every entry as unstamped", "file", n.state, "error", err)
}

// finishSave puts the state file in place, once the node stopped.
func (n *Node) finishSave(sv *stateSave) {
	if sv == nil {
		return
	}
	if err := sv.finish(); err != nil {
		n.saveFailed(err)
		return
	}
	n.log.Info("state saved for the next run", "file", n.state)
}

// receive reads datagrams and hands them to the dispatcher until the
// transport fails or, once ctx is done, is closed.
func (n *Node) receive(ctx context.Context) error {
	for {
		pkts, err := n.tr.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("receive datagrams: %w", err)
		}
		n.Deliver(pkts)
	}
}

// Deliver hands datagrams received now to the receive side: what Run's
// receive goroutine does with every batch the transport returns.
func (n *Node) Deliver(pkts []transport.Packet) {
	now := n.time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := range pkts {
		n.dispatch.handle(&pkts[i], now)
	}
	n.apply.applyRuns()
}

// timers runs the receive side's timers until ctx is done.
func (n *Node) timers(ctx context.Context) error {
	t := time.NewTicker(RetryTick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			n.FireTimers()
		}
	}
}

// FireTimers runs the receive side's timers: what Run does every
// [RetryTick]. It repeats repair requests, gives up on gaps not repaired
// in time, forgets silent peers, drives the resync, and forgets the
// deletes past the horizon.
func (n *Node) FireTimers() {
	now := n.time.Now()
	n.mu.Lock()
	n.silent = n.dispatch.onTimers(now, n.silent)
	n.mu.Unlock()
	n.scan.onTimers(now)
	if now.Sub(n.pruned) >= pruneEvery {
		n.pruned = now
		h := n.know.Lock()
		h.Prune(now)
		n.stats.KnownKeys.Store(uint64(h.Entries()))
		h.Unlock()
	}
}

// Ready returns a channel closed once this node has completed its initial
// sync: it received a snapshot from a ready peer, or it heard no ready
// peer for twice the announce interval and is the one to seed the others.
func (n *Node) Ready() <-chan struct{} { return n.ready.done }

// Stats returns the node's counters, updated as it runs.
func (n *Node) Stats() *Stats { return &n.stats }

// Status is what a node knows of itself and its peers at one moment.
type Status struct {
	Node   uint32
	Epoch  uint64
	Ready  bool
	Peers  []PeerStatus  // ordered by node id
	Resync *ResyncStatus // the full resync being received; nil if none
}

// Status reports the node's state. It is safe to call while [Node.Run]
// runs.
func (n *Node) Status() Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	return Status{Node: n.node, Epoch: n.epoch, Ready: n.ready.isReady(), Peers: n.peers.status(), Resync: n.client.status()}
}

// Peers lists the peers heard from, ordered by node id. It is safe to call
// while [Node.Run] runs.
func (n *Node) Peers() []PeerStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.peers.status()
}

// readiness is this node's initial sync: it is ready once it holds what
// the peers it heard from hold.
type readiness struct {
	time    Time
	started time.Time     // the node started
	wait    time.Duration // how long to listen for peers before deciding alone
	done    chan struct{} // closed once ready
	// flag is set once ready; the sender reads it for its announces
	// without the receive lock.
	flag atomic.Bool
	log  *slog.Logger
}

func (r *readiness) isReady() bool { return r.flag.Load() }

// waited reports whether the node listened for peers long enough.
func (r *readiness) waited(now time.Time) bool { return now.Sub(r.started) >= r.wait }

// become ends the initial sync.
func (r *readiness) become(why string, peers int) {
	if r.flag.Swap(true) {
		return
	}
	close(r.done)
	r.log.Info("ready: initial sync complete", "how", why, "peers", peers,
		"after", r.time.Now().Sub(r.started).Round(time.Millisecond))
}
