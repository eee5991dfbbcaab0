package replication

// In-place state, end to end: nodes of this package in network
// namespaces of the netns-test topology, with real sockets (sealed with a
// key), real kernel maps created with BTF, and a conntrack-like datapath
// (package netns-test/datapath) that writes them in place, run with
// BPF_PROG_TEST_RUN:
//
//	┌──── node1: A ─────┐   ┌──── node2: B ─────┐   ┌──── node3: C ─────┐
//	│ Node, maps, XDP   │   │ Node, maps, XDP   │   │ Node, maps, XDP   │
//	│ datapath          │   │ datapath          │   │ datapath          │
//	│ eth1 10.77.0.1/24 │   │ eth1 10.77.0.2/24 │   │ eth1 10.77.0.3/24 │
//	└─────────┬─────────┘   └─────────┬─────────┘   └─────────┬─────────┘
//	          └────────── veth ─ bridge ─ veth ───────────────┘
//
// Only the capture is faked (chanSource): the test reports its own
// user-space writes as the capture would, and the datapath's in-place
// writes, as on a real node, reach no capture at all. All nodes share one
// kernel and so one monotonic clock: each node reads it shifted by its
// own Config.MonoOffset, as hosts booted at different times would, so
// that a clock field copied as bytes would be visibly wrong.

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
	"github.com/udpmapsync/udpmapsync/netns-test/datapath"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/seal"
	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

// ipNode is one node of an in-place cluster.
type ipNode struct {
	dp     *datapath.Node
	maps   map[string]*loader.Map // by name: flows, lru_flows, locked
	local  []Map                  // the same, for its tables
	src    *chanSource
	node   *Node
	offset time.Duration // its MonoOffset
	state  string        // its state file
	epoch  uint64
	cancel context.CancelFunc
	done   chan error
}

// ipCluster is nodes replicating the datapath's maps with options.
type ipCluster struct {
	topo  *netnstest.Topology
	nodes []*ipNode
	keys  *seal.Keys
	log   *slog.Logger
}

// startInPlace starts one node per offset, replicating the maps named in
// opts with those options (mapopt's form), sealed with one key.
func startInPlace(t *testing.T, opts map[string]string, offsets ...time.Duration) *ipCluster {
	t.Helper()
	c := newIPCluster(t, len(offsets))
	dir := t.TempDir()
	for i, off := range offsets {
		dp, err := datapath.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dp.Close() })
		n := &ipNode{dp: dp, maps: map[string]*loader.Map{}, src: &chanSource{ch: make(chan loader.Change, 1<<14)}, offset: off,
			state: filepath.Join(dir, fmt.Sprintf("node%d.state", i+1))}
		for name, spec := range opts {
			km := map[string]*ebpf.Map{"flows": dp.Flows, "lru_flows": dp.LRUFlows, "locked": dp.Locked}[name]
			lm := openLoaderMap(t, km)
			sp, err := mapopt.ParseSpec(name + "," + spec)
			if err != nil {
				t.Fatal(err)
			}
			vt, err := lm.ValueType()
			if err != nil || vt == nil {
				t.Fatalf("%s: value type %v, %v: the map was created with BTF", name, vt, err)
			}
			o, err := mapopt.Resolve(name, sp.Options, 0, mapopt.Layout{ValueSize: int(lm.ValueSize), Value: vt})
			if err != nil {
				t.Fatal(err)
			}
			if o.Lock != nil {
				lm.UseSpinLock()
			}
			m := MapFromLoader(lm)
			m.Options = o
			n.local = append(n.local, m)
			n.maps[name] = lm
		}
		c.nodes = append(c.nodes, n)
	}
	c.startAll(t)
	return c
}

// newIPCluster makes the namespaces of n nodes, a key and a log for them;
// the caller adds the nodes.
func newIPCluster(t *testing.T, n int) *ipCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for namespaces and BPF")
	}
	topo, err := netnstest.NewTopology(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	keys, _, err := netnstest.RandomKeys()
	if err != nil {
		t.Fatal(err)
	}
	logs := new(logBuffer)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	})
	return &ipCluster{topo: topo, keys: keys, log: newLogger(logs)}
}

// startAll starts every node and waits until all are ready.
func (c *ipCluster) startAll(t *testing.T) {
	t.Helper()
	for i := range c.nodes {
		c.start(t, i)
	}
	for _, n := range c.nodes {
		select {
		case <-n.node.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("a node never became ready")
		}
	}
}

// start runs node i in a new epoch, as a restarted daemon would.
func (c *ipCluster) start(t *testing.T, i int) {
	t.Helper()
	n := c.nodes[i]
	tr := listen(t, c.topo.Nodes[i], transport.Config{Group: netip.MustParseAddr("239.1.1.1"), Port: transport.DefaultPort})
	tab, err := NewTable(n.local, tr.Payload()-wire.SealSize)
	if err != nil {
		t.Fatal(err)
	}
	n.epoch++
	n.node = newTestNode(t, Config{Node: uint32(i + 1), Epoch: n.epoch, Table: tab, Source: n.src, Transport: tr, Keys: c.keys,
		AnnounceInterval: 100 * time.Millisecond, MonoOffset: n.offset, StateFile: n.state,
		Log: c.log.With("node", string(rune('A'+i)), "epoch", n.epoch)})
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- n.node.Run(ctx) }()
	t.Cleanup(func() { c.halt(t, i) }) // before the transport's cleanup closes it
}

// halt stops node i, which saves its state file; a node halted already is
// left alone.
func (c *ipCluster) halt(t *testing.T, i int) {
	n := c.nodes[i]
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.cancel = nil
	if err := <-n.done; err != nil {
		t.Errorf("node %d: %v", i+1, err)
	}
}

// openLoaderMap opens km through the loader, as the daemon would.
func openLoaderMap(t testing.TB, km *ebpf.Map) *loader.Map {
	t.Helper()
	info, err := km.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	ms, err := loader.OpenMaps([]string{fmt.Sprintf("id:%d", id)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ms[0].Close() })
	return ms[0]
}

// write makes a user-space write to node i's map and reports it as the
// capture would.
func (c *ipCluster) write(t *testing.T, i int, name string, key uint32, value any) {
	t.Helper()
	m := c.nodes[i].maps[name]
	k := binary.NativeEndian.AppendUint32(nil, key)
	v, err := binary.Append(nil, binary.NativeEndian, value)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.UpdateBatch(k, v); err != nil {
		t.Fatal(err)
	}
	c.nodes[i].src.ch <- loader.Change{MapID: m.ID, Op: ops.Update, Key: k, Value: v}
}

// remove deletes key from node i's map and reports it as the capture
// would.
func (c *ipCluster) remove(t *testing.T, i int, name string, key uint32) {
	t.Helper()
	m := c.nodes[i].maps[name]
	k := binary.NativeEndian.AppendUint32(nil, key)
	if _, err := m.DeleteBatch(k); err != nil {
		t.Fatal(err)
	}
	c.nodes[i].src.ch <- loader.Change{MapID: m.ID, Op: ops.Delete, Key: k}
}

// flows reads node i's map name of CT entries.
func (c *ipCluster) flows(t *testing.T, i int, name string) map[uint32]datapath.CTEntry {
	t.Helper()
	km := c.nodes[i].dp.Flows
	if name == "lru_flows" {
		km = c.nodes[i].dp.LRUFlows
	}
	out := map[uint32]datapath.CTEntry{}
	var k uint32
	var e datapath.CTEntry
	it := km.Iterate()
	for it.Next(&k, &e) {
		out[k] = e
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitFor polls cond every 20 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// mono is the kernel's monotonic clock in ns, as a node with offset reads
// it.
func mono(offset time.Duration) int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano() + offset.Nanoseconds()
}

// flowEntry is a new flow on a node whose clock reads now: it expires
// timeout later.
func flowEntry(now int64, timeout time.Duration) datapath.CTEntry {
	exp := now + timeout.Nanoseconds()
	return datapath.CTEntry{Packets: 1, Bytes: 100, Expires: uint64(exp), Lifetime: uint32(exp / 1e9), RevNatIndex: 7, Flags: 1}
}

// The conntrack HA pair: the active node A refreshes 2,000 flows
// in place; the standby B runs a user-space GC that deletes the flows
// whose lifetime has passed on B's clock. Without scanning, B sees
// lifetimes that never move, deletes every flow, and the deletes, newer
// than the creates, take every live flow from A too. With scanning, A's
// refreshes reach B (lazily, by the refresh period), B deletes nothing
// and A keeps every flow.
func TestConntrackStandbyGC(t *testing.T) {
	const flows = 2000
	timeout := 2 * time.Second
	fields := "clock=expires:mono-ns,clock=lifetime:mono-s,local=ifindex"
	refresh := ",scan=200ms,refresh=expires:500ms,refresh=lifetime:500ms,refresh=packets:500ms,refresh=bytes:500ms"
	for _, tc := range []struct {
		name string
		opts string
	}{{"scanning off", fields}, {"scanning on", fields + refresh}} {
		t.Run(tc.name, func(t *testing.T) {
			c := startInPlace(t, map[string]string{"flows": tc.opts}, 0, time.Hour)
			a, b := c.nodes[0], c.nodes[1]
			for k := range uint32(flows) {
				c.write(t, 0, "flows", k, flowEntry(mono(a.offset), timeout))
			}
			if !waitFor(10*time.Second, func() bool { return len(c.flows(t, 1, "flows")) == flows }) {
				t.Fatalf("B holds %d flows, want %d", len(c.flows(t, 1, "flows")), flows)
			}
			// Run for twice the timeout: A's traffic every 100 ms, B's GC
			// every 250 ms.
			gcDeleted := 0
			end := time.Now().Add(2*timeout + 500*time.Millisecond)
			nextGC := time.Now()
			for time.Now().Before(end) {
				if err := a.dp.Refresh(0, flows, timeout, 100); err != nil {
					t.Fatal(err)
				}
				if time.Now().After(nextGC) {
					nextGC = time.Now().Add(250 * time.Millisecond)
					now := mono(b.offset)
					for k, e := range c.flows(t, 1, "flows") {
						if int64(e.Expires) < now {
							c.remove(t, 1, "flows", k)
							gcDeleted++
						}
					}
				}
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(300 * time.Millisecond) // the last deletes reach A
			onA, onB := len(c.flows(t, 0, "flows")), len(c.flows(t, 1, "flows"))
			sa := a.node.Stats().Snapshot()
			t.Logf("A holds %d flows, B %d; B's GC deleted %d; A's scans %d found %d changes, sent %d datagrams (%d B)",
				onA, onB, gcDeleted, sa.Scans, sa.ScanFound, sa.DatagramsSent, sa.BytesSent)
			if tc.name == "scanning off" {
				if gcDeleted != flows || onA != 0 {
					t.Errorf("without scanning the standby's GC should delete every flow and the active node lose them all: deleted %d, A holds %d", gcDeleted, onA)
				}
				return
			}
			if gcDeleted != 0 || onA != flows || onB != flows {
				t.Errorf("with scanning: B's GC deleted %d flows, A holds %d, B %d; want 0, %d, %d", gcDeleted, onA, onB, flows, flows)
			}
			if sb := b.node.Stats().Snapshot(); sb.ScanFound != 0 {
				t.Errorf("the standby's scans sent %d changes of an idle copy", sb.ScanFound)
			}
			// The refresh period holds each flow to about one send per
			// 500 ms, not one per scan (every 200 ms).
			if rounds := float64(sa.ScanFound) / flows; rounds > float64(2*timeout+time.Second)/float64(500*time.Millisecond) {
				t.Errorf("A sent each flow %.1f times in %s: more than once per refresh period", rounds, 2*timeout)
			}
		})
	}
}

// Three nodes whose clocks differ by hours: A's datapath bumps counters
// and moves timestamps in place; every node's copy converges within a
// few scan intervals, each clock field rebased onto the node's own clock
// (its remaining time equal to A's within a few ms), and each node's
// local field (ifindex) its own, applies or not. The standbys' scans of
// their idle copies send nothing, and a forged change datagram for the
// scanned map reaches no map.
func TestInPlaceThreeNodes(t *testing.T) {
	const flows = 500
	scan := 250 * time.Millisecond
	c := startInPlace(t, map[string]string{"flows": "scan=250ms,clock=expires:mono-ns,clock=lifetime:mono-s,local=ifindex"},
		0, time.Hour, 2*time.Hour)
	for k := range uint32(flows) {
		c.write(t, 0, "flows", k, flowEntry(mono(0), time.Minute))
	}
	for i := range c.nodes {
		if !waitFor(10*time.Second, func() bool { return len(c.flows(t, i, "flows")) == flows }) {
			t.Fatalf("node %d holds %d flows, want %d", i+1, len(c.flows(t, i, "flows")), flows)
		}
	}
	// Each node's own ifindex, written where no capture sees it, and
	// never sent: a change of local bytes alone is no change.
	for i, n := range c.nodes {
		for k, e := range c.flows(t, i, "flows") {
			e.Ifindex = uint32(10 + i)
			if err := n.dp.Flows.Put(k, e); err != nil {
				t.Fatal(err)
			}
		}
	}
	scansBefore := c.nodes[0].node.Stats().Scans.Load()
	if err := c.nodes[0].dp.Refresh(0, flows, 5*time.Minute, 1500); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	converged := func() bool {
		want := c.flows(t, 0, "flows")
		for i := range c.nodes[1:] {
			for k, e := range c.flows(t, i+1, "flows") {
				if e.Packets != want[k].Packets || e.Bytes != want[k].Bytes {
					return false
				}
			}
		}
		return true
	}
	if !waitFor(10*time.Second, converged) {
		t.Fatal("the in-place changes did not reach every node")
	}
	// Every record carrying the refresh was encoded after it and applied
	// before convergence was seen: no more than this passed in flight.
	inFlight := time.Since(began)
	// Counted in A's scans, not in time, so that a busy machine does not
	// fail it: the scan under way at the refresh and the next one find
	// every change; one more may complete before the poll notices.
	scans := c.nodes[0].node.Stats().Scans.Load() - scansBefore
	t.Logf("converged %s after the refresh, within %d of A's scans (scan interval %s)", time.Since(began).Round(time.Millisecond), scans, scan)
	if scans > 3 {
		t.Errorf("the nodes converged only %d scans after the refresh, want within two scan intervals", scans)
	}
	time.Sleep(2 * scan) // the standbys scan their copies

	now := mono(0) // one instant for every node, each with its offset
	ref := c.flows(t, 0, "flows")
	for i, n := range c.nodes {
		got := c.flows(t, i, "flows")
		if len(got) != flows {
			t.Errorf("node %d holds %d flows", i+1, len(got))
		}
		worst := time.Duration(0)
		for k, e := range got {
			a := ref[k]
			if e.Packets != 2 || e.Bytes != 1600 || e.RevNatIndex != 7 || e.Flags != 1 || e.Ifindex != uint32(10+i) {
				t.Fatalf("node %d flow %d: %+v (A's %+v)", i+1, k, e, a)
			}
			remA := time.Duration(int64(a.Expires) - now)
			rem := time.Duration(int64(e.Expires) - (now + n.offset.Nanoseconds()))
			if rem-remA < -time.Millisecond {
				t.Errorf("node %d flow %d: expires %s before the writer's", i+1, k, remA-rem)
			}
			worst = max(worst, rem-remA)
			remS := int64(e.Lifetime) - (now+n.offset.Nanoseconds())/1e9
			remAS := int64(a.Lifetime) - now/1e9
			if d := remS - remAS; d < -1 || d > 1 {
				t.Errorf("node %d flow %d: lifetime %d s from its clock, A's %d s", i+1, k, remS, remAS)
			}
		}
		// The time between the sender's encoding and the receiver's apply
		// is added to the remaining time: a few ms on an idle machine, and
		// never more than the whole time in flight. Copied as bytes, the
		// expiry would be off by the nodes' clock offsets, seconds.
		if bound := inFlight + time.Millisecond; worst > bound {
			t.Errorf("node %d: a rebased expiry is %s off the writer's remaining time, more than the %s in flight", i+1, worst, inFlight)
		}
		t.Logf("node %d: rebased expiries within %s of the writer's remaining time", i+1, worst)
	}
	for i, n := range c.nodes[1:] {
		if s := n.node.Stats().Snapshot(); s.ScanFound != 0 || s.Scans < 2 || s.Unauthenticated != 0 {
			t.Errorf("node %d: %d scans found %d changes in an idle copy (unauthenticated %d)", i+2, s.Scans, s.ScanFound, s.Unauthenticated)
		}
	}
	if s := c.nodes[0].node.Stats().Snapshot(); s.ScanFound < flows {
		t.Errorf("A's scans found %d changes, want at least %d", s.ScanFound, flows)
	}
	forgedChange(t, c)
}

// forgedChange sends, from node C's address and port, a change datagram
// for flow 0 of the scanned map sealed under a key the nodes do not hold:
// scan-driven changes travel in ordinary change datagrams, and a forged
// one is counted and dropped like every other.
func forgedChange(t *testing.T, c *ipCluster) {
	t.Helper()
	other, _, err := netnstest.RandomKeys()
	if err != nil {
		t.Fatal(err)
	}
	before := c.flows(t, 0, "flows")[0]
	val, err := binary.Append(nil, binary.NativeEndian, datapath.CTEntry{Packets: 999})
	if err != nil {
		t.Fatal(err)
	}
	var w wire.ChangeWriter
	w.Reset(make([]byte, 1400), 3, 0)
	w.Append(c.nodes[0].node.apply.table.maps[0].fp, ops.Update, uint64(c.nodes[2].node.clock.Now()), 3,
		binary.NativeEndian.AppendUint32(nil, 0), val)
	h := wire.Header{Kind: wire.KindChanges, Node: 3, Epoch: 1, Seq: 1 << 20, Count: 1}
	d := w.Finish(h)
	forged, err := netnstest.NewForger(other).Datagram(h, d[wire.HeaderSize:])
	if err != nil {
		t.Fatal(err)
	}
	from := c.topo.Nodes[2]
	att, err := netnstest.NewAttacker(from, "239.1.1.1", transport.DefaultPort+1)
	if err != nil {
		t.Fatal(err)
	}
	defer att.Close()
	port := uint16(transport.DefaultPort)
	if err := att.SendSpoofed(netip.AddrPortFrom(from.Addr, port), netip.AddrPortFrom(netip.MustParseAddr("239.1.1.1"), port), forged); err != nil {
		t.Fatal(err)
	}
	if !waitFor(5*time.Second, func() bool { return c.nodes[0].node.Stats().Unauthenticated.Load() > 0 }) {
		t.Fatal("the forged datagram was not counted")
	}
	if after := c.flows(t, 0, "flows")[0]; after != before {
		t.Errorf("a forged change reached A's map: %+v", after)
	}
}

// A's datapath churns its LRU map, which evicts entries where no delete
// hook sees it. By the map's rule, B keeps them (vanished=keep: an
// eviction is A's business) or deletes them too (vanished=delete).
func TestLRUVanished(t *testing.T) {
	const held = 200
	for _, rule := range []string{"keep", "delete"} {
		t.Run(rule, func(t *testing.T) {
			c := startInPlace(t, map[string]string{"lru_flows": "scan=100ms,vanished=" + rule}, 0, 0)
			a := c.nodes[0]
			for k := range uint32(held) {
				c.write(t, 0, "lru_flows", k, datapath.CTEntry{Packets: uint64(k)})
			}
			if !waitFor(10*time.Second, func() bool { return len(c.flows(t, 1, "lru_flows")) == held }) {
				t.Fatalf("B holds %d entries, want %d", len(c.flows(t, 1, "lru_flows")), held)
			}
			// A scan that ran before A's sender had stamped the writes
			// above sends them again, as its own: the same values, so
			// harmless, and only the churn's effect is counted below.
			before := a.node.Stats().Snapshot()
			// 100 inserts into 56 free slots of 256 evict some of A's.
			if err := a.dp.Churn(1000, 100); err != nil {
				t.Fatal(err)
			}
			left := c.flows(t, 0, "lru_flows")
			if len(left) == held {
				t.Fatal("the churn evicted nothing: the test tests nothing")
			}
			scans := a.node.Stats().Scans.Load()
			if !waitFor(5*time.Second, func() bool { return a.node.Stats().Scans.Load() >= scans+2 }) {
				t.Fatal("A does not scan")
			}
			time.Sleep(200 * time.Millisecond) // what the scans sent arrives
			onB := c.flows(t, 1, "lru_flows")
			s := a.node.Stats().Snapshot()
			t.Logf("the churn evicted %d of %d entries on A; A's scans found %d vanished; B holds %d", held-len(left), held, s.ScanVanished, len(onB))
			if vanished, found := s.ScanVanished-before.ScanVanished, s.ScanFound-before.ScanFound; vanished != uint64(held-len(left)) || found != 0 {
				t.Errorf("after the churn A's scans found %d vanished and %d changed, want %d and 0", vanished, found, held-len(left))
			}
			want := held
			if rule == "delete" {
				want = len(left)
			}
			if len(onB) != want {
				t.Errorf("B holds %d entries, want %d", len(onB), want)
			}
			for k := range left {
				if _, ok := onB[k]; !ok {
					t.Errorf("B lost key %d, which A holds", k)
				}
			}
			// A key back after its eviction, written where no capture sees
			// it, is a write of A's like any other.
			var back uint32
			for back = range uint32(held) {
				if _, ok := left[back]; !ok {
					break
				}
			}
			k := binary.NativeEndian.AppendUint32(nil, back)
			v, _ := binary.Append(nil, binary.NativeEndian, datapath.CTEntry{Packets: 4242})
			if err := a.maps["lru_flows"].UpdateBatch(k, v); err != nil {
				t.Fatal(err)
			}
			if !waitFor(5*time.Second, func() bool { return c.flows(t, 1, "lru_flows")[back].Packets == 4242 }) {
				t.Errorf("key %d, written again on A after its eviction, never reached B", back)
			}
		})
	}
}

// Both nodes' datapaths write every word of 64 spin-locked values, under
// the lock, as fast as they can, while the scans read the values and the
// applies write the peer's: every read takes the lock (BPF_F_LOCK), so no
// value read, sent or written is torn. A read without the lock, for
// comparison, sees torn values.
func TestSpinLockedValues(t *testing.T) {
	const entries = 64
	c := startInPlace(t, map[string]string{"locked": "scan=50ms,clock=lts:mono-ns"}, 0, 0)
	for k := range uint32(entries) {
		c.write(t, 0, "locked", k, datapath.LockedEntry{State: 1})
	}
	for i := range c.nodes {
		if !waitFor(10*time.Second, func() bool { return len(c.locked(t, i, true)) == entries }) {
			t.Fatalf("node %d holds %d entries", i+1, len(c.locked(t, i, true)))
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := n.dp.Bump(0, entries); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	tornLocked, tornPlain, reads := 0, 0, 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		for i := range c.nodes {
			for _, e := range c.locked(t, i, true) {
				if e.Torn() {
					tornLocked++
				}
			}
			for _, e := range c.locked(t, i, false) {
				if e.Torn() {
					tornPlain++
				}
			}
			reads += entries
		}
	}
	close(stop)
	wg.Wait()
	sa, sb := c.nodes[0].node.Stats().Snapshot(), c.nodes[1].node.Stats().Snapshot()
	t.Logf("%d reads of each kind: %d torn with the lock, %d without; scans found %d and %d changes, applied %d and %d",
		reads, tornLocked, tornPlain, sa.ScanFound, sb.ScanFound, sa.ChangesApplied, sb.ChangesApplied)
	if tornLocked != 0 {
		t.Errorf("%d values read under the lock were torn", tornLocked)
	}
	if sa.ScanFound == 0 || sb.ScanFound == 0 || sa.ChangesApplied == 0 || sb.ChangesApplied == 0 {
		t.Error("the scans did not send, or the applies did not write, while the datapaths wrote: the test tests nothing")
	}
	// Once the datapaths stop, the later of each key's last writes wins on
	// both nodes.
	same := func() bool {
		a, b := c.locked(t, 0, true), c.locked(t, 1, true)
		for k, e := range a {
			if b[k].Words != e.Words || e.Torn() {
				return false
			}
		}
		return len(a) == entries && len(b) == entries
	}
	if !waitFor(5*time.Second, same) {
		t.Error("the nodes' locked values did not converge once the datapaths stopped")
	}
}

// locked reads node i's locked map: through the loader, which takes each
// value's lock, or without the lock.
func (c *ipCluster) locked(t *testing.T, i int, withLock bool) map[uint32]datapath.LockedEntry {
	t.Helper()
	out := map[uint32]datapath.LockedEntry{}
	m := c.nodes[i].maps["locked"]
	if !withLock {
		var k uint32
		var e datapath.LockedEntry
		for it := c.nodes[i].dp.Locked.Iterate(); it.Next(&k, &e); {
			out[k] = e
		}
		return out
	}
	ks, vs := make([]byte, 256*4), make([]byte, 256*int(m.ValueSize))
	err := m.Dump(ks, vs, func(ks, vs []byte) error {
		for o := 0; o*4 < len(ks); o++ {
			var e datapath.LockedEntry
			if _, err := binary.Decode(vs[o*int(m.ValueSize):], binary.NativeEndian, &e); err != nil {
				return err
			}
			out[binary.NativeEndian.Uint32(ks[o*4:])] = e
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A's daemon stops, saving its state; its datapath goes on refreshing in
// place while none runs; the restarted daemon finds the refreshed
// entries against the state file and sends them as its writes (their
// clock fields rebased on B like any others), and its first scan then
// learns the prints without sending the entries again.
func TestInPlaceRestart(t *testing.T) {
	const flows = 300
	c := startInPlace(t, map[string]string{"flows": "scan=200ms,clock=expires:mono-ns,clock=lifetime:mono-s,local=ifindex"}, 0, time.Hour)
	a := c.nodes[0]
	for k := range uint32(flows) {
		c.write(t, 0, "flows", k, flowEntry(mono(0), time.Minute))
	}
	if !waitFor(10*time.Second, func() bool { return len(c.flows(t, 1, "flows")) == flows }) {
		t.Fatalf("B holds %d flows", len(c.flows(t, 1, "flows")))
	}
	c.halt(t, 0)
	if _, err := os.Stat(a.state); err != nil {
		t.Fatalf("no state file: %v", err)
	}
	if err := a.dp.Refresh(0, flows, 10*time.Minute, 100); err != nil {
		t.Fatal(err)
	}
	c.start(t, 0)
	if !waitFor(10*time.Second, func() bool {
		for _, e := range c.flows(t, 1, "flows") {
			if e.Packets != 2 {
				return false
			}
		}
		return true
	}) {
		t.Fatal("the refreshes made while A's daemon was down never reached B")
	}
	scans := a.node.Stats().Scans.Load()
	if !waitFor(5*time.Second, func() bool { return a.node.Stats().Scans.Load() >= scans+2 }) {
		t.Fatal("the restarted A does not scan")
	}
	now := mono(0)
	ref, got := c.flows(t, 0, "flows"), c.flows(t, 1, "flows")
	for k, e := range got {
		remA := time.Duration(int64(ref[k].Expires) - now)
		remB := time.Duration(int64(e.Expires) - (now + int64(time.Hour)))
		if (remB-remA).Abs() > 50*time.Millisecond || remA < 9*time.Minute {
			t.Fatalf("flow %d: %s left on A, %s on B", k, remA, remB)
		}
	}
	if s := a.node.Stats().Snapshot(); s.ScanFound != 0 || s.Relayed < flows {
		t.Errorf("the restarted A sent %d changes found against its state file and %d found by scans; want %d and 0", s.Relayed, s.ScanFound, flows)
	}
}
