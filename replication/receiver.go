package replication

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// errZeroSeq rejects a change datagram numbered 0: senders count from 1.
var errZeroSeq = errors.New("change datagram with sequence number 0")

// ReceiverConfig configures a [Receiver].
type ReceiverConfig struct {
	Transport Transport
	Table     *Table
	Node      uint32 // this node's id: datagrams carrying it are dropped
	Epoch     uint64 // this run's boot epoch, in repair requests and answers
	// Resend is this node's own [Resend] buffer, from which the receiver
	// answers peers' repair requests. Without it every request is answered
	// as gone.
	Resend *Resend
	// Peers, when set, are the only source addresses accepted; datagrams
	// from anywhere else count as forged. Zones are ignored.
	Peers []netip.Addr
	// AnnounceInterval is the peers' announce period (default
	// [DefaultAnnounceInterval]): a starting node that hears no ready peer
	// for twice as long decides its initial sync alone.
	AnnounceInterval time.Duration
	Stats            *Stats
	Log              *slog.Logger
}

// Receiver applies the change datagrams of its peers to the local maps and
// checks their announced map schemas against the local ones.
type Receiver struct {
	tr     Transport
	table  *Table
	node   uint32
	epoch  uint64
	resend *Resend
	allow  []netip.Addr
	stats  *Stats
	log    *slog.Logger
	limit  limiter
	window uint64 // datagrams a peer's receive window spans; see maxHeld

	mu        sync.Mutex // guards the state below against Peers and the timers
	peers     map[uint32]*peer
	sync      resync
	ready     readiness
	transfers map[uint32]*transfer // snapshots being served, by requester node
	stop      chan struct{}        // closed when Run returns

	secs  wire.Sections
	recs  wire.Records
	run   changeRun // the changes being collected for one batch syscall
	keys  []byte    // the run's keys, packed for a batch syscall
	vals  []byte    // the run's values
	descs []wire.Descriptor

	spare     [][]byte  // buffers for held datagrams, reused
	nack      wire.Nack // the request or answer being built
	out       []byte    // its datagram
	outv      [1][]byte // out, as the transport takes it
	repair    [][]byte  // resent datagrams of one batch, slices of repairBuf
	repairBuf []byte
}

// Run buffers: a run of changes is applied once it holds this many bytes
// of keys or of values.
const (
	runKeyBytes   = 64 << 10
	runValueBytes = 256 << 10
)

// changeRun is the run of changes being collected: n changes of peer p to
// map m, all with operation op.
type changeRun struct {
	p  *peer
	m  *localMap
	op ops.Op
	n  int
}

// peer is what the receiver knows of one sending node in its current
// epoch. Sequence numbers are per (node, epoch): a new epoch means the
// peer restarted and numbers from 1 again.
type peer struct {
	node      uint32
	addr      netip.AddrPort
	epoch     uint64
	seen      uint64 // highest sequence number the peer is known to have sent
	next      uint64 // sequence number of the next change datagram to apply
	repair    repairState
	ready     bool // its announces say it completed its initial sync
	needSync  bool // its changes were lost beyond repair: a full resync from it is due
	lastHeard time.Time
	datagrams uint64
	gaps      uint64
	// mismatch holds, per map name, the fingerprint of the peer's schema
	// already reported as differing from ours, so it is reported once.
	mismatch map[string]uint32
}

// NewReceiver prepares a receiver; nothing is read before [Receiver.Run].
func NewReceiver(cfg ReceiverConfig) *Receiver {
	r := &Receiver{
		tr:     cfg.Transport,
		table:  cfg.Table,
		node:   cfg.Node,
		epoch:  cfg.Epoch,
		resend: cfg.Resend,
		stats:  cfg.Stats,
		log:    cfg.Log,
		window: uint64(min(maxHeld, maxHeldBytes/cfg.Table.payload)),
		peers:  make(map[uint32]*peer),
		ready: readiness{
			wait: 2 * cmp.Or(cfg.AnnounceInterval, DefaultAnnounceInterval),
			done: make(chan struct{}),
		},
		transfers: make(map[uint32]*transfer),
		stop:      make(chan struct{}),
		keys:      make([]byte, 0, runKeyBytes),
		vals:      make([]byte, 0, runValueBytes),
	}
	for _, a := range cfg.Peers {
		r.allow = append(r.allow, a.Unmap().WithZone(""))
	}
	return r
}

// Run receives and applies datagrams until the transport fails. Once ctx
// is done, the transport's closing error makes it return nil.
func (r *Receiver) Run(ctx context.Context) error {
	r.mu.Lock()
	r.ready.started = time.Now()
	r.mu.Unlock()
	defer close(r.stop)
	go r.retryLoop(r.stop)
	for {
		pkts, err := r.tr.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("receive datagrams: %w", err)
		}
		now := time.Now()
		r.mu.Lock()
		for i := range pkts {
			r.handle(now, pkts[i].From, pkts[i].Data)
		}
		r.flush()
		r.mu.Unlock()
	}
}

// handle checks one datagram and acts on it; its changes are collected
// into runs that the caller flushes. Anything wrong with it is counted and
// dropped before a local map is touched.
func (r *Receiver) handle(now time.Time, from netip.AddrPort, d []byte) {
	var h wire.Header
	if err := h.Unmarshal(d); err != nil {
		r.malformed(from, err)
		return
	}
	if h.Node == r.node {
		r.stats.OwnDropped.Add(1)
		return
	}
	if r.allow != nil && !slices.Contains(r.allow, from.Addr()) {
		r.forged(from, &h, "source address not in --peers")
		return
	}
	p := r.peers[h.Node]
	if p != nil && p.epoch == h.Epoch && p.addr != from {
		r.forged(from, &h, "node id already heard from another address")
		return
	}
	if p != nil && h.Epoch < p.epoch {
		// From before the node restarted (epochs grow): late, or
		// replayed. Taking it would reset the node's state.
		r.stats.Duplicates.Add(1)
		return
	}
	body := d[wire.HeaderSize:]
	if h.Kind != wire.KindChanges {
		// What follows may read the maps or report what was applied.
		r.flush()
	}
	switch h.Kind {
	case wire.KindChanges:
		if h.Seq == 0 {
			r.malformed(from, errZeroSeq)
			return
		}
		if err := r.check(body, h.Count); err != nil {
			r.malformed(from, err)
			return
		}
		if h.Flags&wire.FlagRetransmit != 0 && (p == nil || p.epoch != h.Epoch) {
			// A resend for an epoch we no longer track: what it
			// repairs was given up on when the epoch changed.
			r.stats.Duplicates.Add(1)
			return
		}
		p = r.accept(p, from, &h, now, h.Seq)
		r.changes(p, now, &h, d)
	case wire.KindAnnounce:
		descs, err := wire.ParseDescriptors(body, int(h.Count), r.descs[:0])
		r.descs = descs
		if err != nil {
			r.malformed(from, err)
			return
		}
		p = r.accept(p, from, &h, now, h.Seq+1)
		p.ready = h.Flags&wire.FlagReady != 0
		r.stats.DatagramsReceived.Add(1)
		r.heartbeat(p, now, h.Seq)
		r.compare(p, descs)
	case wire.KindNack:
		if err := r.nack.Unmarshal(body, h.Count); err != nil {
			r.malformed(from, err)
			return
		}
		r.serveNack(from)
	case wire.KindGone:
		if err := r.nack.Unmarshal(body, h.Count); err != nil {
			r.malformed(from, err)
			return
		}
		if p != nil && r.nack.Node == p.node && r.nack.Epoch == p.epoch {
			r.gone(p, now)
		}
	case wire.KindSyncRequest:
		r.serveSync(from, &h)
	case wire.KindSyncAck:
		r.syncAcked(from, &h, body)
	default:
		r.syncData(p, now, from, &h, d)
	}
}

// syncData takes a datagram of a snapshot this node asked p for.
func (r *Receiver) syncData(p *peer, now time.Time, from netip.AddrPort, h *wire.Header, d []byte) {
	body := d[wire.HeaderSize:]
	if p == nil || p.epoch != h.Epoch {
		return // no request of ours is open with this peer
	}
	switch h.Kind {
	case wire.KindSyncStart:
		r.syncStart(p, now, h, body)
	case wire.KindSnapshot:
		if err := r.check(body, h.Count); err != nil {
			r.malformed(from, err)
			return
		}
		r.snapshot(p, now, h, d)
	case wire.KindSyncEnd:
		if len(body) > 0 || h.Count > 0 {
			r.malformed(from, wire.ErrBadLength)
			return
		}
		r.syncEnd(p, now, h)
	}
}

// accept returns the state of the datagram's sender, starting it afresh
// for a new node or a new epoch. A node heard for the first time starts
// at first, the sequence number its datagram shows to be next: what it
// sent before we heard of it is for the initial sync, not repair. A known
// node in a new epoch restarted, so it starts at 1 and everything it sent
// before this datagram is missing.
func (r *Receiver) accept(p *peer, from netip.AddrPort, h *wire.Header, now time.Time, first uint64) *peer {
	if p == nil || p.epoch != h.Epoch {
		if p == nil {
			r.log.Info("new peer", "node", h.Node, "addr", from, "epoch", h.Epoch)
		} else {
			r.log.Info("peer restarted", "node", h.Node, "addr", from, "epoch", h.Epoch,
				"previous_addr", p.addr, "previous_epoch", p.epoch)
			r.release(p)
			r.forgetSync(p, now)
			first = 1
		}
		p = &peer{node: h.Node, addr: from, epoch: h.Epoch, seen: first - 1, next: first}
		r.peers[h.Node] = p
	}
	p.lastHeard = now
	p.datagrams++
	return p
}

func (p *peer) gap(stats *Stats, missing uint64) {
	p.gaps += missing
	stats.GapsSeen.Add(missing)
}

// check validates every section, and every record of the known maps,
// before anything is applied, so a damaged datagram changes nothing.
func (r *Receiver) check(body []byte, count uint16) error {
	r.secs.Reset(body, count)
	for {
		sec, err := r.secs.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		m := r.table.byFP[sec.Map]
		if m == nil {
			continue
		}
		r.recs.Reset(sec, m.keySize, m.valueSize)
		for {
			_, err := r.recs.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("map %s: %w", m.Desc.Name, err)
			}
		}
	}
}

// apply collects a checked datagram's records into runs for the local
// maps (see [Receiver.collect]).
func (r *Receiver) apply(p *peer, body []byte, count uint16) {
	r.secs.Reset(body, count)
	for sec, err := r.secs.Next(); err == nil; sec, err = r.secs.Next() {
		m := r.table.byFP[sec.Map]
		if m == nil {
			r.unknownMap(p, sec)
			continue
		}
		r.recs.Reset(sec, m.keySize, m.valueSize)
		for rec, err := r.recs.Next(); err == nil; rec, err = r.recs.Next() {
			r.collect(p, m, rec.Op, rec.Key, rec.Value)
		}
	}
}

// collect adds one change to the run being collected. A run is a sequence
// of consecutive changes of one peer to one map with one operation, across
// the datagrams of a receive batch; each becomes one batch syscall. Runs
// are applied in order, so every key sees its changes in the order they
// were made. The run is applied when the next change does not belong to
// it, when it fills its buffers, and by [Receiver.flush].
func (r *Receiver) collect(p *peer, m *localMap, op ops.Op, key, value []byte) {
	if r.run.n > 0 && (r.run.m != m || r.run.op != op || r.run.p != p ||
		len(r.keys)+len(key) > cap(r.keys) || len(r.vals)+len(value) > cap(r.vals)) {
		r.flush()
	}
	r.run.p, r.run.m, r.run.op = p, m, op
	r.run.n++
	r.keys = append(r.keys, key...)
	r.vals = append(r.vals, value...)
}

// flush applies the run being collected. Whatever reads the local maps or
// reports how far a peer's changes were applied flushes first; so does
// every holder of r.mu before releasing it.
func (r *Receiver) flush() {
	if r.run.n == 0 {
		return
	}
	r.touch(r.run.m, r.keys)
	r.applyRun(r.run.p, r.run.m, r.run.op, r.run.n)
	r.run = changeRun{}
}

// applyRun applies the n records collected in keys and vals and returns
// how many took effect: not the deletes of absent keys, none on an error.
func (r *Receiver) applyRun(p *peer, m *localMap, op ops.Op, n int) int {
	var err error
	applied := n
	if op == ops.Update {
		err = m.Target.UpdateBatch(r.keys, r.vals)
	} else {
		var missing int
		missing, err = m.Target.DeleteBatch(r.keys)
		applied -= missing
		r.stats.DeletesMissing.Add(uint64(missing))
	}
	r.keys, r.vals = r.keys[:0], r.vals[:0]
	if err != nil {
		r.stats.ApplyErrors.Add(1)
		if s, ok := r.limit.allow(reasonApply); ok {
			r.log.Error("applying changes failed", "map", m.Desc.Name, "peer", p.node, "op", opName(op),
				"changes", n, "error", err, "suppressed", s)
		}
		return 0
	}
	r.stats.ChangesApplied.Add(uint64(applied))
	return applied
}

func opName(op ops.Op) string {
	if op == ops.Update {
		return "update"
	}
	return "delete"
}

// compare checks the peer's map descriptors against the local maps of the
// same names. A differing schema is reported once per peer and schema;
// the peer's changes to that map then carry a fingerprint no local map
// has, and are counted as unknown.
func (r *Receiver) compare(p *peer, descs []wire.Descriptor) {
	for i := range descs {
		d := &descs[i]
		m := r.table.byName(d.Name)
		if m == nil {
			continue
		}
		fp := d.Fingerprint()
		if fp == m.fp {
			delete(p.mismatch, d.Name)
			continue
		}
		if reported, ok := p.mismatch[d.Name]; ok && reported == fp {
			continue
		}
		s, ok := r.limit.allow(reasonSchema)
		if !ok {
			continue
		}
		if p.mismatch == nil {
			p.mismatch = make(map[string]uint32)
		}
		p.mismatch[d.Name] = fp
		args := []any{"map", d.Name, "peer", p.node, "addr", p.addr}
		args = append(args, schemaDiff(&m.Desc, d)...)
		r.log.Error("peer's map schema differs from the local map; its changes to this map are dropped", append(args, "suppressed", s)...)
	}
}

// schemaDiff returns a log group per schema field that differs.
func schemaDiff(local, peer *wire.Descriptor) []any {
	var out []any
	field := func(name string, l, p any) {
		out = append(out, slog.Group(name, "local", l, "peer", p))
	}
	if local.Type != peer.Type {
		field("type", ebpf.MapType(local.Type).String(), ebpf.MapType(peer.Type).String())
	}
	if local.KeySize != peer.KeySize {
		field("key_size", local.KeySize, peer.KeySize)
	}
	if local.ValueSize != peer.ValueSize {
		field("value_size", local.ValueSize, peer.ValueSize)
	}
	if local.MaxEntries != peer.MaxEntries {
		field("max_entries", local.MaxEntries, peer.MaxEntries)
	}
	return out
}

func (r *Receiver) unknownMap(p *peer, sec wire.Section) {
	r.stats.UnknownMap.Add(uint64(sec.Count))
	if s, ok := r.limit.allow(reasonUnknownMap); ok {
		r.log.Warn("dropping changes for a map with no local match", "peer", p.node, "fingerprint", fmt.Sprintf("%#08x", sec.Map),
			"changes", sec.Count, "suppressed", s)
	}
}

func (r *Receiver) malformed(from netip.AddrPort, err error) {
	r.stats.Malformed.Add(1)
	if s, ok := r.limit.allow(reasonMalformed); ok {
		r.log.Warn("dropping malformed datagram", "from", from, "error", err, "suppressed", s)
	}
}

func (r *Receiver) forged(from netip.AddrPort, h *wire.Header, why string) {
	r.stats.Forged.Add(1)
	if s, ok := r.limit.allow(reasonForged); ok {
		args := []any{"from", from, "node", h.Node, "epoch", h.Epoch, "reason", why, "suppressed", s}
		if p := r.peers[h.Node]; p != nil {
			args = append(args, "known_addr", p.addr)
		}
		r.log.Warn("dropping datagram from an unexpected address", args...)
	}
}

// PeerStatus is what the receiver knows about one peer.
type PeerStatus struct {
	Node      uint32
	Addr      netip.AddrPort
	Epoch     uint64
	Seq       uint64 // highest sequence number the peer is known to have sent
	LastHeard time.Time
	Datagrams uint64 // accepted in this epoch
	Gaps      uint64 // change datagrams missed in this epoch
}

// Peers lists the peers heard from, ordered by node id. It is safe to call
// while [Receiver.Run] runs.
func (r *Receiver) Peers() []PeerStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]PeerStatus, 0, len(r.peers))
	for _, p := range r.peers {
		out = append(out, PeerStatus{Node: p.node, Addr: p.addr, Epoch: p.epoch, Seq: p.seen,
			LastHeard: p.lastHeard, Datagrams: p.datagrams, Gaps: p.gaps})
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return cmp.Compare(a.Node, b.Node) })
	return out
}
