package replication

// Full resync between whole nodes (Sender and Receiver each) over an
// in-memory network with fake maps: the network and the kernel maps are
// mocked so the protocol's timing can be driven and its loss chosen. The
// same scenarios run over real sockets, maps and daemons in netns-test.

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/seal"
	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

// memNet delivers datagrams between memTransports like a LAN that drops
// what drop says, and what a full receive queue cannot take.
type memNet struct {
	mu    sync.Mutex
	nodes map[netip.AddrPort]*memTransport
	drop  func(d []byte) bool
	opts  map[uint32]mapopt.Options // per node, the options of its map; none if absent
	// valueSize is the value size of the nodes' map; 0 means 8 bytes.
	valueSize uint32
	// cpus makes a node's map a per-CPU hash of that many possible CPUs,
	// 8 bytes a slot; absent: a hash of valueSize-byte values.
	cpus map[uint32]uint32
}

type memTransport struct {
	net       *memNet
	addr      netip.AddrPort
	in        chan transport.Packet
	done      chan struct{}
	closeOnce sync.Once
}

func (n *memNet) attach(addr netip.AddrPort) *memTransport {
	t := &memTransport{net: n, addr: addr, in: make(chan transport.Packet, 1<<14), done: make(chan struct{})}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nodes == nil {
		n.nodes = map[netip.AddrPort]*memTransport{}
	}
	n.nodes[addr] = t
	return t
}

func (t *memTransport) deliver(to *memTransport, d []byte, unicast bool) {
	t.net.mu.Lock()
	drop := t.net.drop
	t.net.mu.Unlock()
	if drop != nil && drop(d) {
		return
	}
	select {
	case to.in <- transport.Packet{Data: append([]byte(nil), d...), From: t.addr, Unicast: unicast}:
	default:
	}
}

func (t *memTransport) Send(dgrams [][]byte) error {
	t.net.mu.Lock()
	others := make([]*memTransport, 0, len(t.net.nodes))
	for a, o := range t.net.nodes {
		if a != t.addr {
			others = append(others, o)
		}
	}
	t.net.mu.Unlock()
	for _, o := range others {
		for _, d := range dgrams {
			t.deliver(o, d, false)
		}
	}
	return nil
}

func (t *memTransport) SendTo(addr netip.AddrPort, dgrams [][]byte) error {
	t.net.mu.Lock()
	o := t.net.nodes[addr]
	t.net.mu.Unlock()
	for _, d := range dgrams {
		if o != nil {
			t.deliver(o, d, true)
		}
	}
	return nil
}

// Close ends a blocked Receive, as closing a socket does.
func (t *memTransport) Close() error {
	t.closeOnce.Do(func() { close(t.done) })
	return nil
}

func (t *memTransport) Receive() ([]transport.Packet, error) {
	select {
	case p := <-t.in:
		return []transport.Packet{p}, nil
	case <-t.done:
		return nil, errFakeClosed
	}
}

// memNode is one node: its map, the changes its "capture" reports, and
// the daemon's sender and receiver.
type memNode struct {
	flows  *fakeTarget
	src    *overflowSource
	stats  *Stats
	n      *Node
	stop   func()
	logs   *logBuffer
	flowID ebpf.MapID
}

// overflowSource is a chanSource whose overflow count a test sets.
type overflowSource struct {
	chanSource
	lost atomic.Uint64
}

func (s *overflowSource) Overflows() (uint64, error) { return s.lost.Load(), nil }

// memAnnounce is the nodes' announce interval. A node decides its initial
// sync alone after twice that without a ready peer: long enough for a
// test to start its other nodes on a loaded machine.
const memAnnounce = 100 * time.Millisecond

func startMemNode(t *testing.T, n *memNet, node uint32, state map[string]string) *memNode {
	t.Helper()
	return startMemNodeWith(t, n, node, state, nil)
}

// startMemNodeWith starts a node that seals with keys, if not nil.
func startMemNodeWith(t *testing.T, n *memNet, node uint32, state map[string]string, keys *seal.Keys) *memNode {
	t.Helper()
	valueSize, cpus := cmp.Or(n.valueSize, 8), n.cpus[node]
	if cpus > 0 {
		valueSize = 8 * cpus
	}
	m := &memNode{flows: newFakeTarget(4, int(valueSize)), src: &overflowSource{chanSource: chanSource{ch: make(chan loader.Change, 1<<14)}},
		stats: new(Stats), logs: new(logBuffer), flowID: 10}
	maps.Copy(m.flows.state, state)
	flows := testMap("flows", m.flowID, 4, valueSize, m.flows)
	flows.Options = n.opts[node]
	if cpus > 0 {
		flows.Desc.Type, flows.CPUs = uint32(ebpf.PerCPUHash), cpus
	}
	tab := mustTable(t, testPayload, flows)
	tr := n.attach(netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(node)}), 3870))
	m.n = newTestNode(t, Config{Node: node, Epoch: uint64(node) * 1000, Table: tab, Source: m.src, Transport: tr,
		AnnounceInterval: memAnnounce, ResendBytes: 1 << 20, Keys: keys, Log: newLogger(m.logs)})
	m.stats = m.n.Stats()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.n.Run(ctx) }()
	m.stop = sync.OnceFunc(func() {
		cancel()
		<-done
	})
	t.Cleanup(m.stop)
	return m
}

// write changes the node's map as a local program would, and reports it
// to the capture unless lost says the ring had no room.
func (m *memNode) write(k, v string, lost bool) {
	m.flows.mu.Lock()
	if v == "" {
		delete(m.flows.state, k)
	} else {
		m.flows.state[k] = v
	}
	m.flows.mu.Unlock()
	if lost {
		return
	}
	c := loader.Change{MapID: m.flowID, Op: ops.Update, Key: []byte(k), Value: []byte(v)}
	if v == "" {
		c.Op, c.Value = ops.Delete, nil
	}
	m.src.ch <- c
}

func (m *memNode) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-m.n.Ready():
	case <-time.After(10 * time.Second):
		t.Fatalf("not ready after 10s; log:\n%s", m.logs)
	}
}

// waitSame waits until every node holds the first node's state.
func waitSame(t *testing.T, nodes ...*memNode) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		want, diff := nodes[0].flows.snapshot(), ""
		for i, n := range nodes[1:] {
			if got := n.flows.snapshot(); !maps.Equal(got, want) {
				diff = fmt.Sprintf("node %d holds %d entries, node 0 %d", i+1, len(got), len(want))
			}
		}
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not converged after 10s: %s; logs:\n%s\n%s", diff, nodes[0].logs, nodes[1].logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitCount waits until counter c reaches want: the serving side counts a
// resync once the requester's last acknowledgement arrives, after the
// requester is done.
func waitCount(t *testing.T, what string, c *atomic.Uint64, want uint64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); c.Load() < want && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if got := c.Load(); got != want {
		t.Errorf("%s = %d, want %d", what, got, want)
	}
}

func entries(n int, prefix byte, ver int) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[string([]byte{prefix, byte(i >> 16), byte(i >> 8), byte(i)})] = fmt.Sprintf("v%07d", ver*1_000_000+i)
	}
	return m
}

// A node that starts with a stale, unstamped map merges it with a ready
// peer's while that peer keeps writing, with a fifth of the snapshot lost
// on the way: keys the peer knows take the peer's values, keys the peer
// deleted are deleted, and keys the peer never saw go back to it; nothing
// is adopted wholesale.
func TestResyncLateJoiner(t *testing.T) {
	var n memNet
	n.drop = func(d []byte) bool { return d[3] == byte(wire.KindSnapshot) && rand.IntN(5) == 0 }
	a := startMemNode(t, &n, 1, entries(3000, 'a', 1))
	a.waitReady(t)
	if s := a.stats.Snapshot(); s.ResyncsReceived != 0 {
		t.Fatalf("a lone node: ready after %d resyncs; want ready without one", s.ResyncsReceived)
	}
	stale := entries(500, 'a', 0)          // old values of keys a holds
	maps.Copy(stale, entries(200, 'z', 0)) // keys only b holds
	for i := 2500; i < 2600; i++ {         // keys a deletes, and so remembers
		k := string([]byte{'a', 0, byte(i >> 8), byte(i)})
		a.write(k, "", false)
		stale[k] = "deleted!"
	}
	b := startMemNode(t, &n, 2, stale)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2000; i++ {
			a.write(string([]byte{'a', 0, byte(i >> 8), byte(i)}), fmt.Sprintf("w%07d", i), false)
			if i%100 == 0 {
				a.write(string([]byte{'a', 1, 0, byte(i / 100)}), "", false)
			}
		}
	}()
	b.waitReady(t)
	<-done
	waitSame(t, a, b)
	got := b.flows.snapshot()
	for k, v := range entries(200, 'z', 0) {
		if got[k] != v {
			t.Fatalf("b's own key %x = %q, want its value %q kept and sent to a", k, got[k], v)
		}
	}
	for k := range stale {
		if _, ok := got[k]; ok && stale[k] == "deleted!" {
			t.Fatalf("b holds %x, which a deleted", k)
		}
	}
	if s := b.stats.Snapshot(); s.ResyncsReceived != 1 || s.SyncPushed < 200 {
		t.Errorf("b: %d resyncs received, %d entries sent back; want 1 and at least its 200 own keys", s.ResyncsReceived, s.SyncPushed)
	}
	waitCount(t, "a's resyncs_sent", &a.stats.ResyncsSent, 1)
}

// Changes the capture lost to a full ring are never sent: the sender
// skips a sequence number, the peer's repair request for it is answered
// as gone, and the peer takes a full resync that brings the lost changes.
func TestResyncAfterOverflow(t *testing.T) {
	var n memNet
	a := startMemNode(t, &n, 1, entries(100, 'a', 1))
	a.waitReady(t)
	b := startMemNode(t, &n, 2, nil)
	b.waitReady(t)
	waitSame(t, a, b)

	for i := range 50 {
		a.write(string([]byte{'l', 0, 0, byte(i)}), fmt.Sprintf("lost%04d", i), true)
	}
	a.src.lost.Store(50)
	a.write("last", "latest!!", false)
	waitSame(t, a, b)
	waitCount(t, "a's resyncs_sent (b's initial sync, the overflow)", &a.stats.ResyncsSent, 2)
	if got := a.stats.RingOverflows.Load(); got != 50 {
		t.Errorf("a: ring_overflows %d, want 50", got)
	}
	if s := b.stats.Snapshot(); s.ResyncNeeded == 0 || s.ResyncsReceived != 2 {
		t.Errorf("b: resync_needed %d, resyncs_received %d; want >0 and 2 (initial, overflow)", s.ResyncNeeded, s.ResyncsReceived)
	}
}

// Two nodes with no ready peer: the lower node id seeds the group, here
// with an empty map, and the other merges with it: its own entries, which
// the seed never saw, go to the seed instead of being deleted.
func TestResyncColdStart(t *testing.T) {
	var n memNet
	hi := startMemNode(t, &n, 9, entries(10, 'h', 1))
	lo := startMemNode(t, &n, 3, nil)
	hi.waitReady(t)
	lo.waitReady(t)
	waitSame(t, lo, hi)
	if got := lo.flows.snapshot(); !maps.Equal(got, entries(10, 'h', 1)) {
		t.Errorf("the seed holds %d entries, want node 9's 10", len(got))
	}
	if s := lo.stats.Snapshot(); s.ResyncsReceived != 0 {
		t.Errorf("the seed received %d resyncs, want 0", s.ResyncsReceived)
	}
}

// syncStart is the peer's answer, in epoch 1, to our open resync request.
func (f *receiverFixture) syncStart(st wire.SyncStart) []byte {
	h := wire.Header{Kind: wire.KindSyncStart, Node: peerNode, Epoch: 1, Seq: wire.SyncSeq(f.n.client.id, 0)}
	b := make([]byte, wire.HeaderSize)
	_, _ = h.AppendTo(b[:0])
	b, _ = st.AppendTo(b)
	return b
}

// A peer that refuses a request because it is not ready yet is asked
// again later if it owes us lost changes, and passed over if we only
// wanted it for our initial sync.
func TestResyncRefusedByPeerNotReady(t *testing.T) {
	for _, owed := range []bool{true, false} {
		f := newReceiverFixture(t)
		f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
		p := f.n.peers.byNode[peerNode]
		p.needSync, p.ready = owed, true
		f.n.client.begin(p, time.Now())
		f.handle(peerA, f.syncStart(wire.SyncStart{Status: wire.SyncNotReady}))
		if f.n.client.phase != syncIdle || p.needSync != owed || p.ready {
			t.Errorf("owed %v: after the refusal phase %d, needSync %v, ready %v; want idle, %v, false",
				owed, f.n.client.phase, p.needSync, p.ready, owed)
		}
	}
}

// While a resync request waits for its answer, a gap in the serving peer's
// stream that times out must not apply what was held behind it: those
// changes may be older than the snapshot, and a change applied during a
// resync marks its key as newer than the snapshot, which would then keep
// the older value.
func TestResyncHoldsThroughRepairTimeout(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 3, "key3", "old"))
	p := f.n.peers.byNode[peerNode]
	p.needSync = true
	f.n.client.begin(p, t0)
	f.n.dispatch.onTimers(t0.Add(repairTimeout), nil) // the gap's timeout, before the request's
	if got := f.value("key3"); got != "" {
		t.Fatalf("key3 = %q applied while the resync request waits", got)
	}
	// The peer read its maps after datagram 3, and key3 changed since.
	t1 := t0.Add(repairTimeout + time.Millisecond)
	f.handleAt(t1, peerA, f.syncStart(wire.SyncStart{AsOf: 3}))
	var b changesBuilder
	b.start()
	b.add(t, f.fpFlow, ops.Update, "key1", "       1")
	b.add(t, f.fpFlow, ops.Update, "key3", "     new")
	snap := bytes.Clone(b.w.Finish(wire.Header{Kind: wire.KindSnapshot, Node: peerNode, Epoch: 1, Seq: wire.SyncSeq(f.n.client.id, 1)}))
	f.handleAt(t1, peerA, snap)
	if got := f.value("key3"); got != "     new" {
		t.Errorf("key3 = %q after the snapshot, want its value", got)
	}
	if s := f.stats.Snapshot(); s.ResyncNeeded != 0 {
		t.Errorf("resync_needed %d: the gap behind the request was given up", s.ResyncNeeded)
	}
}

// A node in its initial sync starts a peer heard for the first time at
// its next datagram only while no request is out: the server may have
// read its maps already, without what that peer sent before (as after a
// partition healed); then the peer's stream starts at 1, and what its
// resend buffer no longer holds comes by a resync from it.
func TestInitialSyncStartsLateHeardPeerAtOne(t *testing.T) {
	f := newReceiverFixture(t)
	f.handle(peerA, announce(t, peerNode, 1, 4))
	if next := f.n.peers.byNode[peerNode].stream.next; next != 5 {
		t.Fatalf("a peer heard before the request starts at %d, want 5, after its announce", next)
	}
	f.n.client.begin(f.n.peers.byNode[peerNode], time.Now())
	f.handle(peerB, announce(t, 9, 1, 4))
	if next := f.n.peers.byNode[9].stream.next; next != 1 {
		t.Fatalf("a peer heard first while the initial sync was asked for starts at %d, want 1", next)
	}
}

// A ready node that first hears a run of a peer's that is ready already
// (both became ready apart, as across a partition, or the peer restarted
// and decided alone) merges with it by a full resync: the peer's stream
// from 1 carries only what it wrote in this run, not what its maps held
// before, which may be newer than what this node holds. Without it, a
// node that crashed and became ready alone kept, and took from the peer's
// old datagrams, older values than the peer's (LRU maps, which no digest
// round heals: simulated seeds 387 and 1824). A peer first heard while
// it waits for its initial sync, which merges it, is not resynced from.
func TestReadyPeerHeardReadyIsMerged(t *testing.T) {
	f := newReceiverFixture(t)
	f.n.ready.become("test", 0)
	t0 := time.Now()
	f.handleAt(t0, peerA, readyAnnounce(t, peerNode, 1, 3))
	f.handleAt(t0, peerB, announce(t, 9, 1, 0))
	f.handleAt(t0.Add(time.Second), peerB, readyAnnounce(t, 9, 1, 0))
	if p := f.n.peers.byNode[peerNode]; !p.needSync {
		t.Errorf("a peer ready when first heard by a ready node: no full resync from it owed")
	}
	if p := f.n.peers.byNode[9]; p.needSync {
		t.Errorf("a peer first heard in its initial sync: a full resync from it owed once it is ready")
	}
}
