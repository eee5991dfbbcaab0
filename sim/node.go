package sim

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/replication"
	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

// The one replicated map of every node.
const (
	mapName    = "flows"
	mapID      = ebpf.MapID(7)
	keySize    = 4
	valueSize  = 8
	maxEntries = 256 // of a hash map: more than the keys written
	payload    = 1400
	// largeValueSize is the value size of one run in largeEvery: a record
	// three datagrams long, sent in fragments (wire/FORMAT.md,
	// "Fragments"). The workload's values are 8 bytes then zeros.
	largeValueSize = 3000
	largeEvery     = 8
)

// How the simulated nodes are configured: announce intervals short
// enough that a run's initial syncs and resyncs take a second or two.
const (
	announceEvery = 200 * time.Millisecond
	// digestEvery is the digest interval: several rounds fit in the time
	// the cluster gets to converge.
	digestEvery = 5 * time.Second
	resendBytes = 64 << 10
	// wakeLatency is how long after a change is captured the sender
	// wakes to read it, but on a busy machine (see scenario.busy).
	wakeLatency = 50 * time.Microsecond
)

// simNode is one node: its maps, which outlive its daemons, and the
// daemon running now, if any.
type simNode struct {
	s      *Sim
	id     uint32
	addr   netip.AddrPort
	offset time.Duration // of its clock from the virtual time
	state  string        // its state file
	maps   []*memMap

	// The daemon: nil while none runs. run counts the daemons started,
	// and is their epoch; events of an earlier one are dropped.
	n        *replication.Node
	ring     *ring
	run      uint64
	stopping bool // BeginStop was called
	// lostCaptures: a capture ring of the node's lost changes.
	lostCaptures bool
	// received is the highest change datagram of each peer's stream that
	// the node's daemons received, or that an announce they received
	// claimed.
	received map[streamKey]uint64
	// unstamped holds the keys and values (back to back) the node held
	// with no version: in its map when a daemon started without a state
	// file, or from a snapshot that carried them so.
	unstamped map[string]bool
	// sendAt and serveAt are when the sender and the transfers are next
	// stepped; an event for another time is stale.
	sendAt, serveAt time.Time
}

var _ replication.Time = (*simNode)(nil)

// Now is the node's clock: the virtual time, offset.
func (n *simNode) Now() time.Time { return n.s.now.Add(n.offset) }

// virtual is the virtual time when the node's clock reads t.
func (n *simNode) virtual(t time.Time) time.Time { return t.Add(-n.offset) }

// Sleep is refused: a stepped node never waits.
func (n *simNode) Sleep(time.Duration) { panic("a stepped node slept") }

func (n *simNode) up() bool { return n.n != nil }

// start starts a daemon on the node's maps: it takes the state file, if
// the last one left it.
func (n *simNode) start() {
	if n.up() {
		return
	}
	n.run++
	n.ring = &ring{size: n.s.sc.ringBytes}
	if n.received == nil {
		n.received = make(map[streamKey]uint64)
	}
	if _, err := os.Stat(n.state); err != nil {
		for _, m := range n.maps {
			for k, v := range m.entries {
				n.holdUnstamped([]byte(k), v)
			}
		}
	}
	maps := make([]replication.Map, len(n.maps))
	for i, m := range n.maps {
		maps[i] = replication.Map{ID: mapID + ebpf.MapID(i), Target: m, Desc: wire.Descriptor{Name: mapName,
			Type: uint32(m.typ), KeySize: keySize, ValueSize: uint32(n.s.sc.valueSize), MaxEntries: uint32(m.max)}}
		if n.s.sc.scan > 0 {
			// An array's entries never vanish: vanished=delete is refused
			// for it (cmd/udpmapsync).
			maps[i].Options = mapopt.Options{Scan: n.s.sc.scan, Vanished: mapopt.Delete}
			if m.array() {
				maps[i].Options.Vanished = mapopt.Keep
			}
		}
	}
	if n.s.sum != nil {
		maps = n.s.sum.maps(n)
	}
	tab, err := replication.NewTable(maps, payload)
	if err != nil {
		panic(err)
	}
	var group netip.AddrPort
	if !n.s.sc.unicast {
		group = groupAddr
	}
	node, err := replication.NewNode(replication.Config{Node: n.id, Epoch: n.run, Table: tab, Source: n.ring,
		Transport: &endpoint{n: n, run: n.run}, Group: group, AnnounceInterval: announceEvery, ResendBytes: resendBytes,
		Time: n, Rand: n.random(), StateFile: n.state, DigestInterval: digestEvery,
		Log: n.logger()})
	if err != nil {
		panic(err)
	}
	n.n, n.stopping = node, false
	n.s.tracef("node %d starts, epoch %d", n.id, n.run)
	node.Start()
	n.wakeSender(n.s.now)
	n.every(replication.RetryTick, kindTimers, func() {
		n.n.FireTimers()
		n.n.StepScans()
	})
	n.every(digestEvery, kindDigests, n.n.ReadDigests)
	n.every(checkEvery, kindChecks, n.check)
}

// streamKey names a peer's stream as one daemon of a node receives it:
// the daemon's run, the peer, and the peer's epoch.
type streamKey struct {
	run   uint64
	node  uint32
	epoch uint64
}

// holdUnstamped records that the node holds key's value unstamped.
func (n *simNode) holdUnstamped(key, value []byte) {
	if n.unstamped == nil {
		n.unstamped = make(map[string]bool)
	}
	n.unstamped[string(key)+string(value)] = true
}

// heldUnstamped reports whether the node ever held key's value unstamped.
func (n *simNode) heldUnstamped(key, value []byte) bool {
	return n.unstamped[string(key)+string(value)]
}

// every runs step every period while this run of the daemon lasts.
func (n *simNode) every(period time.Duration, kind int, step func()) {
	run := n.run
	var next func()
	next = func() {
		if n.run != run || !n.up() {
			return
		}
		step()
		n.s.at(n.s.now.Add(period), n.key(kind), next)
	}
	n.s.at(n.s.now.Add(period), n.key(kind), next)
}

// healed reports whether the node's daemon healed a key by a digest
// repair.
func (n *simNode) healed() bool { return n.n != nil && n.n.Stats().DigestHealed.Load() > 0 }

// random is the daemon's random source: the seed's, the node's and the
// run's.
func (n *simNode) random() *rand.ChaCha8 {
	var seed [32]byte
	binary.BigEndian.PutUint64(seed[0:], n.s.seed)
	binary.BigEndian.PutUint32(seed[8:], n.id)
	binary.BigEndian.PutUint64(seed[12:], n.run)
	return rand.NewChaCha8(seed)
}

// logger is where the daemon logs: into the trace, if there is one.
func (n *simNode) logger() *slog.Logger {
	if n.s.trace == nil {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(logWriter{n}, &slog.HandlerOptions{Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey:
				return slog.Attr{} // the trace has the virtual time
			case "file":
				return slog.String(a.Key, filepath.Base(a.Value.String())) // the run's directory differs
			case "took":
				return slog.Attr{} // the real time a read took differs from run to run
			}
			return a
		}}))
}

// logWriter writes a daemon's log lines into the trace.
type logWriter struct{ n *simNode }

func (w logWriter) Write(p []byte) (int, error) {
	w.n.s.tracef("log node %d: %s", w.n.id, bytes.TrimSpace(p))
	return len(p), nil
}

// The kinds of a node's own events, for their order among the events of
// one time.
const (
	kindSender = iota + 1
	kindTimers
	kindTransfers
	kindDigests
	kindChecks
)

func (n *simNode) key(kind int) uint64 { return uint64(kind)<<40 | uint64(n.id)<<8 }

// wakeSender steps the sender at t, unless it is stepped sooner.
func (n *simNode) wakeSender(t time.Time) {
	n.wake(&n.sendAt, kindSender, t, func() time.Time {
		next, err := n.n.StepSender()
		if err != nil {
			n.s.fail("node %d: sender: %v", n.id, err)
			return time.Time{}
		}
		return next
	})
}

// wakeTransfers steps the snapshot transfers at t, unless they are
// stepped sooner.
func (n *simNode) wakeTransfers(t time.Time) {
	n.wake(&n.serveAt, kindTransfers, t, n.n.StepTransfers)
}

// wake runs step at t, unless *at says it runs sooner, and again when
// step asks to (in the node's time; zero: not until woken).
func (n *simNode) wake(at *time.Time, kind int, t time.Time, step func() time.Time) {
	if !at.IsZero() && !at.After(t) && !at.Before(n.s.now) {
		return
	}
	*at = t
	run := n.run
	n.s.at(t, n.key(kind), func() {
		if n.run != run || !n.up() || !at.Equal(n.s.now) {
			return // a daemon gone, or a step moved sooner
		}
		*at = time.Time{}
		if next := step(); !next.IsZero() {
			n.wake(at, kind, n.virtual(next), step)
		}
	})
}

// write is a write of the node's datapath to key, captured if a daemon
// runs.
func (n *simNode) write(op ops.Op, key, value []byte) {
	m := n.maps[0]
	if !m.write(op, key, value) {
		return // a new key in a full map: the kernel refuses it
	}
	if m.array() {
		m.written[string(key)] = true
	}
	n.s.tracef("write node %d %s %x %x", n.id, op, key, value)
	if n.up() {
		if !n.ring.capture(mapID, op, key, value) {
			n.lostCaptures = true
			n.s.tracef("capture of node %d lost the write", n.id)
		}
		n.wakeSender(n.s.now.Add(max(wakeLatency, n.s.sc.busy)))
	}
}

// writeInPlace changes key's value in place, as a BPF program does
// through the pointer bpf_map_lookup_elem returns: no capture sees it,
// and a key the map does not hold is left alone. It reports whether the
// map held the key.
func (n *simNode) writeInPlace(key, value []byte) bool {
	m := n.maps[0]
	if _, ok := m.entries[string(key)]; !ok {
		return false
	}
	m.entries[string(key)] = bytes.Clone(value)
	if m.array() {
		m.written[string(key)] = true
	}
	n.s.tracef("write in place node %d %x %x", n.id, key, value)
	return true
}

func (n *simNode) traceApply(op ops.Op, key, value []byte) {
	n.s.tracef("apply node %d %s %x %x", n.id, op, key, value)
}

func (n *simNode) evicted(key, value []byte) {
	n.s.tracef("evict node %d %x %x", n.id, key, value)
	n.s.work.evict(key, value)
}

// deliver hands one datagram to the daemon, if one runs.
func (n *simNode) deliver(from netip.AddrPort, d []byte, unicast bool) {
	if !n.up() {
		return
	}
	var h wire.Header
	if h.Unmarshal(d) == nil && (h.Kind == wire.KindChanges || h.Kind == wire.KindAnnounce) {
		k := streamKey{n.run, h.Node, h.Epoch}
		n.received[k] = max(n.received[k], h.Seq)
	}
	n.n.Deliver([]transport.Packet{{From: from, Data: d, Unicast: unicast}})
	n.wakeTransfers(n.s.now) // an acknowledgement or a request moves a transfer
}

// beginStop begins a clean stop: the state file is begun now, and the
// daemon stops once its capture has drained.
func (n *simNode) beginStop() {
	if !n.up() || n.stopping {
		return
	}
	n.s.tracef("node %d stops", n.id)
	n.stopping = true
	closing := time.Duration(n.s.rng.Int64N(int64(5 * time.Millisecond)))
	n.n.BeginStop()
	run := n.run
	n.s.at(n.s.now.Add(replication.CaptureSlack+time.Millisecond), n.key(kindSender)+1, func() {
		if n.run != run || !n.up() {
			return
		}
		// As Run does: the capture drains, then the node receives and
		// applies on for a moment, until its socket closes, and stops.
		if _, err := n.n.StepSender(); err != nil {
			n.s.fail("node %d: sender: %v", n.id, err)
		}
		n.s.at(n.s.now.Add(closing), n.key(kindSender)+1, func() {
			if n.run == run && n.up() {
				n.n.Stop()
				n.down()
			}
		})
	})
}

// crash ends the daemon without a state file: what its capture held and
// its sender had not sent is lost.
func (n *simNode) crash() {
	if !n.up() {
		return
	}
	n.s.tracef("node %d crashes", n.id)
	n.ring = nil
	node := n.n
	n.down()
	node.Stop() // frees what it holds; sends nothing: the node is down
}

func (n *simNode) down() {
	n.n, n.ring, n.stopping = nil, nil, false
	n.sendAt, n.serveAt = time.Time{}, time.Time{}
}

// endpoint is a daemon's socket on the simulated network; it closes when
// the daemon ends. It implements [replication.Transport].
type endpoint struct {
	n   *simNode
	run uint64 // the daemon's
}

func (e *endpoint) open() bool { return e.n.up() && e.n.run == e.run }

var errStepped = errors.New("a stepped node does not receive: the simulator delivers")

func (e *endpoint) Send(dgrams [][]byte) error {
	if !e.open() {
		return nil
	}
	for _, d := range dgrams {
		e.n.s.net.send(e.n.s, e.n, nil, d)
	}
	return nil
}

// groupAddr is the simulated multicast group: what is sent there goes to
// every other node, as [endpoint.Send] sends.
var groupAddr = netip.MustParseAddrPort("239.1.1.1:3870")

func (e *endpoint) SendTo(addr netip.AddrPort, dgrams [][]byte) error {
	if addr == groupAddr {
		return e.Send(dgrams)
	}
	to := e.n.s.node(addr)
	if !e.open() {
		return nil
	}
	if to == nil {
		return fmt.Errorf("no node at %v", addr)
	}
	for _, d := range dgrams {
		e.n.s.net.send(e.n.s, e.n, to, d)
	}
	return nil
}

func (e *endpoint) Receive() ([]transport.Packet, error) { return nil, errStepped }

// isReady reads whether n completed its initial sync without its receive
// lock, which is held while a datagram it sends is observed.
func isReady(n *replication.Node) bool {
	select {
	case <-n.Ready():
		return true
	default:
		return false
	}
}
