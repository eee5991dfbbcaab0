package replication

// Real sockets in real network namespaces, and a real kernel map, on two
// nodes of the netns-test topology (package netnstest):
//
//	┌─────── node1: A ───────────┐        ┌─────── node2: B ───────────┐
//	│ sender, fed by chanSource  │        │ receiver → kernel hash map │
//	│ UDP :3870                  │        │ UDP :3870                  │
//	│ eth1 10.77.0.1/24          │        │ eth1 10.77.0.2/24          │
//	│      fd77::1/64            │        │      fd77::2/64            │
//	└─────────────┬──────────────┘        └──────────────┬─────────────┘
//	              └──────── veth ─ bridge ─ veth ────────┘
//
// Only the capture is faked (chanSource): it needs the daemon's BPF
// programs, which are the loader's to test.

import (
	"context"
	"encoding/binary"
	"errors"
	"maps"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/loader"
	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/transport"
)

// listen opens a UDP transport on the node's interface, in its namespace.
func listen(t *testing.T, n *netnstest.Node, cfg transport.Config) (u *transport.UDP) {
	t.Helper()
	err := n.Do(func() (err error) {
		if cfg.Iface, err = net.InterfaceByName(netnstest.NodeIface); err == nil {
			u, err = transport.ListenUDP(cfg)
		}
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s: %v", n.Name, err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// openMap creates a kernel hash map and opens it through the loader, as
// the daemon would.
func openMap(t *testing.T, name string) *loader.Map {
	t.Helper()
	return openKernelMap(t, &ebpf.MapSpec{Name: name, Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 4096})
}

// openKernelMap creates a kernel map of spec and opens it through the
// loader.
func openKernelMap(t testing.TB, spec *ebpf.MapSpec) *loader.Map {
	t.Helper()
	km, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	defer km.Close()
	return openLoaderMap(t, km)
}

// mapContents reads a kernel map into key -> value. An iteration that
// deletes overtook returns nil: read again.
func mapContents(t *testing.T, id ebpf.MapID) map[uint32]uint64 {
	t.Helper()
	km, err := ebpf.NewMapFromID(id)
	if err != nil {
		t.Fatal(err)
	}
	defer km.Close()
	out := map[uint32]uint64{}
	var k uint32
	var v uint64
	it := km.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); errors.Is(err, ebpf.ErrIterationAborted) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	return out
}

// replica is node A's node, its capture faked by a chanSource, and node
// B's, each with a kernel map of one name and schema, as on two machines,
// running until stop.
type replica struct {
	a, b           *netnstest.Node
	mapA, mapB     *loader.Map
	src            *chanSource
	statsA, statsB *Stats
	nodeB          *Node

	ua, ub *transport.UDP
	cancel context.CancelFunc
	done   map[string]chan error
}

// startReplica sets up and starts a [replica] replicating maps named name.
// A announces (its heartbeat) every 100 ms. The logs are shown if the test
// fails.
func startReplica(t *testing.T, name string) *replica {
	t.Helper()
	r := &replica{src: &chanSource{ch: make(chan loader.Change, 1<<16)}}
	r.a, r.b = netnstest.NewPair(t)
	r.mapA, r.mapB = openMap(t, name), openMap(t, name)
	cfg := transport.Config{Group: netip.MustParseAddr("239.1.1.1"), Port: transport.DefaultPort}
	r.ua, r.ub = listen(t, r.a, cfg), listen(t, r.b, cfg)
	logs := new(logBuffer)
	log := newLogger(logs)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	})
	node := func(id uint32, m *loader.Map, src Source, tr *transport.UDP, name string) *Node {
		tab, err := NewTable([]Map{MapFromLoader(m)}, tr.Payload())
		if err != nil {
			t.Fatal(err)
		}
		return newTestNode(t, Config{Node: id, Epoch: 1, Table: tab, Source: src, Transport: tr,
			AnnounceInterval: 100 * time.Millisecond, Log: log.With("node", name)})
	}
	nodeA := node(1, r.mapA, r.src, r.ua, "A")
	r.nodeB = node(2, r.mapB, &chanSource{ch: make(chan loader.Change)}, r.ub, "B")
	r.statsA, r.statsB = nodeA.Stats(), r.nodeB.Stats()

	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.done = map[string]chan error{}
	for what, n := range map[string]*Node{"A": nodeA, "B": r.nodeB} {
		done := make(chan error, 1)
		r.done[what] = done
		go func() { done <- n.Run(ctx) }()
	}
	return r
}

// change makes one change to A's map, as a program on A would, queues it
// as the capture would report it, and records its effect in want. A's map
// holds A's state, so that a full resync from A brings B what A holds.
func (r *replica) change(t *testing.T, want map[uint32]uint64, op ops.Op, k uint32, v uint64) {
	t.Helper()
	c := loader.Change{MapID: r.mapA.ID, Op: op, Key: binary.NativeEndian.AppendUint32(nil, k)}
	var err error
	if op == ops.Update {
		c.Value = binary.NativeEndian.AppendUint64(nil, v)
		want[k] = v
		err = r.mapA.UpdateBatch(c.Key, c.Value)
	} else {
		delete(want, k)
		_, err = r.mapA.DeleteBatch(c.Key)
	}
	if err != nil {
		t.Fatalf("write A's map: %v", err)
	}
	r.src.ch <- c
}

// waitB waits up to timeout for B's map to hold want and returns what it
// holds last.
func (r *replica) waitB(t *testing.T, want map[uint32]uint64, timeout time.Duration) map[uint32]uint64 {
	t.Helper()
	var got map[uint32]uint64
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = mapContents(t, r.mapB.ID); maps.Equal(got, want) {
			break
		}
	}
	return got
}

// stop ends both nodes and fails the test if either returns an error.
func (r *replica) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	for what, done := range r.done {
		if err := <-done; err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
}

// Node A's sender reaches node B's receiver over multicast through the
// bridge, and B's kernel map ends up holding exactly A's final state.
func TestEndToEnd(t *testing.T) {
	r := startReplica(t, "e2e_flows")

	// Updates, overwrites and deletes, many of them coalescing.
	want := map[uint32]uint64{}
	for i := range uint32(3000) {
		r.change(t, want, ops.Update, i, uint64(i)*3)
		if i%7 == 0 {
			r.change(t, want, ops.Delete, i/2, 0)
		}
		if i%5 == 0 {
			r.change(t, want, ops.Update, i/3, uint64(i))
		}
	}

	got := r.waitB(t, want, 20*time.Second)
	if !maps.Equal(got, want) {
		t.Errorf("B's map has %d entries, want %d; A %+v; B %+v", len(got), len(want), r.statsA.Snapshot(), r.statsB.Snapshot())
	}
	r.stop(t)
	sa, sb := r.statsA.Snapshot(), r.statsB.Snapshot()
	if sb.Malformed+sb.Forged+sb.UnknownMap+sb.ApplyErrors+sb.GapsSeen+sb.Duplicates+sb.ResyncNeeded != 0 {
		t.Errorf("receiver dropped or missed something: %+v", sb)
	}
	if p := r.nodeB.Peers(); len(p) != 1 || p[0].Node != 1 || p[0].Addr != netip.AddrPortFrom(r.a.Addr, transport.DefaultPort) {
		t.Errorf("peers %+v, want node 1 at %s", p, r.a.Addr)
	}
	if sa.ChangesSent != sb.ChangesApplied+sb.DeletesMissing {
		t.Errorf("sent %d changes, applied %d and %d deletes of missing keys", sa.ChangesSent, sb.ChangesApplied, sb.DeletesMissing)
	}
	if sa.Coalesced == 0 {
		t.Error("nothing coalesced: the test does not exercise coalescing")
	}
}

// With 30% of the datagrams arriving at B dropped at random (requests'
// answers included), A's resends fill every gap and B's kernel map ends up
// holding exactly A's final state, without giving up on any gap.
func TestRepairOverLossyLink(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft to drop datagrams")
	}
	r := startReplica(t, "lossy_flows")
	loss, err := r.b.DropDatagrams(t.Context(), 30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := loss.Remove(context.Background()); err != nil {
			t.Error(err)
		}
	})

	// Until B completed its initial sync, A's changes may come with the
	// snapshot instead of by repair, which is not what this test is about:
	// B asks for the snapshot two announce intervals after it heard A,
	// and A answers it once B's address proved itself, which takes a
	// round trip or, when a cookie is lost, several.
	select {
	case <-r.nodeB.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("B not ready after 20 s: A %+v; B %+v", r.statsA.Snapshot(), r.statsB.Snapshot())
	}
	want := map[uint32]uint64{}
	for i := range uint32(20000) {
		if i%7 == 0 {
			r.change(t, want, ops.Delete, i%3000, 0)
		} else {
			r.change(t, want, ops.Update, i%3000, uint64(i))
		}
		if i%500 == 0 {
			time.Sleep(time.Millisecond) // several bursts, so that tails are lost too
		}
	}

	got := r.waitB(t, want, 30*time.Second)
	// At 30% loss each way a gap can, rarely, outlast the 2 s repair
	// deadline. A full resync from A must follow (once A is ready, 2 s
	// after it started) and leave B as it should be.
	if r.statsB.ResyncNeeded.Load() != 0 {
		for deadline := time.Now().Add(10 * time.Second); r.statsB.ResyncsReceived.Load() == 0 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		got = r.waitB(t, want, 10*time.Second)
	}
	r.stop(t)
	sa, sb := r.statsA.Snapshot(), r.statsB.Snapshot()
	if !maps.Equal(got, want) {
		t.Errorf("B's map has %d entries, want %d", len(got), len(want))
	}
	if sb.GapsSeen == 0 || sb.NacksSent == 0 || sb.Repaired == 0 || sa.DatagramsResent == 0 {
		t.Errorf("no loss repaired: the drop rule did not work? A %+v; B %+v", sa, sb)
	}
	if sb.ResyncNeeded != 0 && sb.ResyncsReceived == 0 || sb.Held != 0 || sb.Malformed+sb.Forged+sb.ApplyErrors != 0 {
		t.Errorf("B gave up on a gap without a resync, or dropped something: %+v", sb)
	}
	t.Logf("A: sent %d datagrams, resent %d; B: gaps %d, requests %d (%d ranges), repaired %d, duplicates %d, resync_needed %d",
		sa.DatagramsSent, sa.DatagramsResent, sb.GapsSeen, sb.NacksSent, sb.RangesRequested, sb.Repaired, sb.Duplicates, sb.ResyncNeeded)
}
