package netnstest

// The convergence model of issue 12 on the real daemon: every map is, key
// by key, a last-writer-wins register with deletes, and a daemon that
// (re)joins merges its node's map with the group's instead of adopting a
// peer's. Every test ends with every map of every node compared byte for
// byte with what must be there, and logs what it measured.
//
// TestMergeLateJoinLarge, TestMergeJoinUnderLoad and TestMergeRunningLoss
// are the slow ones: a million entries or changes each (a tenth with
// -short), written at the kernel's batch speed ([Cluster.WriteFast]).
// They report their speed and assert none; make perf holds the targets.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// startNodes starts the daemons of nodes together, as [NewCluster] does:
// each one's initial sync then finds the others.
func startNodes(t *testing.T, c *Cluster, nodes ...int) {
	t.Helper()
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for k, i := range nodes {
		wg.Go(func() { errs[k] = c.Start(i) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestMergeActiveRestart restarts the daemon of the node whose datapath
// writes: while it is down, that datapath adds 5,000 keys and changes
// 1,000 keys every node holds. The restarted daemon must merge, not adopt:
// every node ends with the writer's map, what was written while its daemon
// was down included.
func TestMergeActiveRestart(t *testing.T) {
	c := newScenario(t, ClusterConfig{})
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: 2000, DeleteRatio: 0.25, Seed: 21})
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, node1, w, 6000, 500)
	converge(t, c, w.Want())

	want := Union(w.Want())
	rng := rand.New(rand.NewPCG(21, 0))
	down := append(newKeys(rng, c.Maps, want, 0xa1, 5000), revalue(rng, heldKeys(rng, want, 1000))...)
	Apply(want, down)
	if err := c.Daemons[node1].Stop(StopGrace); err != nil {
		t.Fatal(err)
	}
	if err := c.Write(t.Context(), node1, down); err != nil {
		t.Fatal(err)
	}
	waitNode(t, c, node1, want)
	start := time.Now()
	if err := c.Start(node1); err != nil {
		t.Fatal(err)
	}
	t.Logf("node1's daemon ready %v after its restart; while it was down node1 added 5000 keys and changed 1000", time.Since(start).Round(time.Millisecond))
	converge(t, c, want)
	logCounters(t, c, counters(t, c), "resyncs_sent", "resyncs_received", "sync_deleted")
}

// TestMergeBothRestart stops both daemons of a pair; while they are down
// each node's datapath adds 5,000 keys of its own. Started again, the
// daemons must merge: both nodes end with both sides' keys.
//
// The maps are hashes only. An array slot always exists, so a slot written
// on one node while no daemon ran is, on the other node, another
// unstamped version of the same key (zeros or an older value), and no
// rule orders two unstamped versions; a hash key added on one node is
// simply missing on the other, which never beats an entry.
func TestMergeBothRestart(t *testing.T) {
	maps := slices.DeleteFunc(DefaultMaps(), func(m MapSpec) bool { return m.Type == ebpf.Array })
	c := newScenario(t, ClusterConfig{Nodes: 2, Maps: maps})
	var ws []*Workload
	for i := range 2 {
		w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: i + 1, Writers: 2, Keys: 1000, DeleteRatio: 0.25, Seed: 22})
		if err != nil {
			t.Fatal(err)
		}
		write(t, c, i, w, 3000, 500)
		ws = append(ws, w)
	}
	converge(t, c, Union(ws[0].Want(), ws[1].Want()))

	want := Union(ws[0].Want(), ws[1].Want())
	if err := c.Stop(StopGrace); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(22, 0))
	for i, tag := range []byte{0xa1, 0xa2} {
		down := newKeys(rng, c.Maps, want, tag, 5000)
		if err := c.Write(t.Context(), i, down); err != nil {
			t.Fatal(err)
		}
		Apply(want, down)
	}
	start := time.Now()
	startNodes(t, c, node1, node2)
	t.Logf("both daemons ready %v after their restart; while they were down each node added 5000 keys", time.Since(start).Round(time.Millisecond))
	converge(t, c, want)
	logCounters(t, c, counters(t, c), "resyncs_sent", "resyncs_received", "sync_deleted")
}

// TestMergePartition cuts node3 off while both sides write: node1 changes
// (updates, deletes, new keys) the keys of one workload, node3 those of
// another, each at least 150,000 changes (15,000 with -short), beyond what
// the resend buffer holds. Both sides knew every key before the
// partition and each key is written on one side only, so after the heal
// every node must hold each side's latest writes: the state before with
// both sides' changes applied.
func TestMergePartition(t *testing.T) {
	requireNft(t)
	// 256 KiB of resends: a few thousand changes of these maps, far fewer
	// than one side makes, so the heal takes a full resync (a merge), not
	// a repair.
	resend := []string{"--resend-buffer", "256KiB"}
	c := newScenario(t, ClusterConfig{NodeArgs: map[int][]string{node1: resend, node2: resend, node3: resend}})
	sides := []int{node1, node3}
	var ws []*Workload
	for k, i := range sides {
		w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: k + 1, Writers: 2, Keys: scale(8000), DeleteRatio: 0.3, Seed: 23})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WriteFast(i, nextChanges(w, scale(40_000))); err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	converge(t, c, Union(ws[0].Want(), ws[1].Want()))
	before := []map[string]Contents{Union(ws[0].Want()), Union(ws[1].Want())}

	cut := filter(t, func(ctx context.Context) (*Filter, error) { return c.Topology.Nodes[node3].Isolate(ctx) })
	var bulks []*bulkWriter
	for k, i := range sides {
		changes := nextChanges(ws[k], scale(150_000))
		var updated, deleted int
		for _, ch := range changes {
			if _, knew := before[k][ch.Map][string(ch.Key)]; knew && ch.Delete {
				deleted++
			} else if knew {
				updated++
			}
		}
		if updated == 0 || deleted == 0 {
			t.Fatalf("%s's changes update %d and delete %d keys held before the partition; want some of both", c.Topology.Nodes[i].Name, updated, deleted)
		}
		t.Logf("%s: %d changes during the partition, %d of them updates and %d deletes of keys held before", c.Topology.Nodes[i].Name, len(changes), updated, deleted)
		bulks = append(bulks, startBulk(c, i, changes, nil))
	}
	for k, b := range bulks {
		d, err := b.wait()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s wrote its changes in %v", c.Topology.Nodes[sides[k]].Name, d.Round(time.Millisecond))
	}
	// Each side holds its own writes and none of the other's: node2 has
	// node1's, and node3 is really cut off.
	waitNode(t, c, node2, Union(ws[0].Want(), before[1]))
	waitNode(t, c, node3, Union(before[0], ws[1].Want()))

	healed := time.Now()
	if err := cut.Remove(t.Context()); err != nil {
		t.Fatal(err)
	}
	converge(t, c, Union(ws[0].Want(), ws[1].Want()))
	t.Logf("every node holds both sides' writes %v after the heal", time.Since(healed).Round(time.Millisecond))
	logCounters(t, c, counters(t, c), "datagrams_sent", "gaps_seen", "repaired", "resync_needed", "resyncs_sent", "resyncs_received")
}

// TestMergeConcurrentWriters has node1 and node2 write the same 200,000
// keys (20,000 with -short) at the same moment at full speed, each its own
// values, while node3 watches. Whichever value wins a key, every node must
// end with the same maps, holding every key with one of its two values.
func TestMergeConcurrentWriters(t *testing.T) {
	n := scale(200_000)
	c := newScenario(t, ClusterConfig{Maps: ConnMaps(n)})
	rng := rand.New(rand.NewPCG(24, 0))
	keys := newKeys(rng, c.Maps, nil, 0xc4, n)
	writes := [][]Change{revalue(rng, keys), revalue(rng, keys)}
	gate := make(chan struct{})
	var bulks []*bulkWriter
	for i := range writes {
		bulks = append(bulks, startBulk(c, i, writes[i], gate))
	}
	close(gate)
	for i, b := range bulks {
		d, err := b.wait()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s wrote %d keys in %v (%.0f/s), starting %v after node1", c.Topology.Nodes[i].Name, n, d.Round(time.Millisecond), rate(n, d), b.start.Sub(bulks[0].start))
	}

	have := waitIdentical(t, c, 60*time.Second)
	held := have[c.Maps[0].Name]
	var wins [2]int
	var wrong []string
	for k, ch := range keys {
		switch held[string(ch.Key)] {
		case string(writes[0][k].Value):
			wins[0]++
		case string(writes[1][k].Value):
			wins[1]++
		default:
			wrong = append(wrong, fmt.Sprintf("%x", ch.Key))
		}
	}
	if len(wrong) > 0 || len(held) != n {
		t.Errorf("every node holds %d entries; want the %d keys written, %d of them hold neither written value (or are missing): %s",
			len(held), n, len(wrong), strings.Join(wrong[:min(len(wrong), maxDiffExamples)], " "))
	}
	t.Logf("node1's value won %d keys, node2's %d", wins[0], wins[1])

	// Identical for good: nothing left in flight changes a node.
	time.Sleep(5 * scenarioInterval)
	s, err := c.Status(have)
	if err != nil {
		t.Fatal(err)
	}
	if !s.Converged() {
		t.Errorf("identical once, then no longer:\n%s", s)
	}
	logCounters(t, c, counters(t, c), "datagrams_sent", "gaps_seen", "repaired", "resyncs_sent", "resyncs_received")
}

// waitIdentical waits until every node's maps hold the same, compared
// by digest, and returns node1's contents once a byte-for-byte comparison
// finds the others' identical.
func waitIdentical(t *testing.T, c *Cluster, timeout time.Duration) map[string]Contents {
	t.Helper()
	start := time.Now()
	var differ []string
	for deadline := start.Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		differ = differ[:0]
		first, err := c.Digest(node1)
		if err != nil {
			t.Fatal(err)
		}
		for i := node2; i < len(c.Topology.Nodes); i++ {
			d, err := c.Digest(i)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(d, first) {
				differ = append(differ, fmt.Sprintf("%s %v, node1 %v", c.Topology.Nodes[i].Name, d, first))
			}
		}
		if len(differ) > 0 {
			continue
		}
		have, err := c.Read(node1)
		if err != nil {
			t.Fatal(err)
		}
		if s, err := c.Status(have); err != nil {
			t.Fatal(err)
		} else if s.Converged() {
			t.Logf("%s %v after the last write", s, time.Since(start).Round(time.Millisecond))
			return have
		}
	}
	// One last byte-for-byte comparison says how they differ.
	have, err := c.Read(node1)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Status(have)
	if err != nil {
		t.Fatal(err)
	}
	t.Fatalf("nodes not identical after %v (digests: %s); compared with node1:\n%s", timeout, strings.Join(differ, "; "), s)
	return nil
}

// convergeLarge waits until every map of every node holds want, polling
// digests ([Cluster.WaitDigest]), which a map of a million entries
// allows, then compares every map byte for byte once. It returns how long
// the nodes took to hold want.
func convergeLarge(t *testing.T, c *Cluster, want map[string]Contents) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	err := c.WaitDigest(ctx, DigestOf(c.Maps, want), 50*time.Millisecond)
	took := time.Since(start)
	s, serr := c.Status(want)
	if serr != nil {
		t.Fatal(serr)
	}
	if err != nil || !s.Converged() {
		t.Fatalf("%v; byte for byte:\n%s", err, s)
	}
	t.Logf("%s after %v", s, took.Round(time.Millisecond))
	return took
}

// TestMergeClockOffset runs node2 with its clock 2 s ahead (the daemon's
// --clock-offset test hook), within the skew the model tolerates. Keys
// node2 wrote are then, as soon as the others hold them, rewritten on
// node1 and deleted on node3, each well within node2's lead: these later
// writes must win everywhere, because a node's clock advances past every
// stamp it receives.
func TestMergeClockOffset(t *testing.T) {
	const offset = 2 * time.Second
	c := newScenario(t, ClusterConfig{NodeArgs: map[int][]string{node2: {"--clock-offset", offset.String()}}})
	var parts []map[string]Contents
	for i := range 3 {
		w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: i + 1, Writers: 3, Keys: 500, DeleteRatio: 0.25, Seed: 25})
		if err != nil {
			t.Fatal(err)
		}
		write(t, c, i, w, scale(3000), 300)
		parts = append(parts, w.Want())
	}
	want := Union(parts...)
	converge(t, c, want)

	rng := rand.New(rand.NewPCG(25, 0))
	for _, later := range []struct {
		node int
		what string
		make func([]Change) []Change
	}{
		{node1, "rewrote", func(first []Change) []Change { return revalue(rng, first) }},
		{node3, "deleted", deletes},
	} {
		first := newKeys(rng, c.Maps, want, 0xf5, 100)
		written := time.Now()
		if err := c.Write(t.Context(), node2, first); err != nil {
			t.Fatal(err)
		}
		held := make(map[string]Contents)
		Apply(held, first)
		if err := waitHolding(t.Context(), c, []int{later.node}, held, 10*time.Second); err != nil {
			t.Fatalf("%s did not get node2's writes: %v", c.Topology.Nodes[later.node].Name, err)
		}
		second := later.make(first)
		if err := c.Write(t.Context(), later.node, second); err != nil {
			t.Fatal(err)
		}
		after := time.Since(written)
		if after >= offset {
			t.Fatalf("%s %s node2's keys %v after node2 wrote them, not within node2's lead of %v: the case tests no clock", c.Topology.Nodes[later.node].Name, later.what, after, offset)
		}
		t.Logf("%s %s 100 keys %v after node2 wrote them", c.Topology.Nodes[later.node].Name, later.what, after.Round(time.Millisecond))
		Apply(want, first)
		Apply(want, second)
	}
	converge(t, c, want)
}

// TestMergeLateJoinLarge starts node2's daemon next to node1's, whose map
// holds 1M entries (100,000 with -short) of 16-byte keys and 64-byte
// values, and reports the join's rate beside the kernel's raw batch-write
// rate measured in the same run.
func TestMergeLateJoinLarge(t *testing.T) {
	n := scale(1_000_000)
	c := newScenario(t, ClusterConfig{Nodes: 2, Maps: ConnMaps(n), Later: []int{node2}})
	rng := rand.New(rand.NewPCG(26, 0))
	fill := newKeys(rng, c.Maps, nil, 0x26, n)
	want := make(map[string]Contents)
	Apply(want, fill)
	raw, err := RawWriteRate(c.Maps[0], fill)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFast(node1, fill); err != nil {
		t.Fatal(err)
	}
	// Not while node1's daemon still reads its capture ring.
	waitCounters(t, c, "node1 has read its capture", func(s []Stats) bool {
		return s[node1]["captured"] >= uint64(n) || s[node1]["ring_overflows"] > 0
	})

	start := time.Now()
	if err := c.Start(node2); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	atReady, err := c.Digest(node2)
	if err != nil {
		t.Fatal(err)
	}
	all := ready + convergeLarge(t, c, want)
	t.Logf("node2 joined a peer holding %d entries: ready after %v holding %d entries (all of node1's: %v), all %v after its start; %.0f entries/s to ready, %.2f of the raw batch-write rate (%.0f entries/s)",
		n, ready.Round(time.Millisecond), atReady[0].Entries, slices.Equal(atReady, DigestOf(c.Maps, want)), all.Round(time.Millisecond), rate(n, ready), rate(n, ready)/raw, raw)
	for i, d := range c.Daemons {
		if rss, err := RSS(d.Pid()); err == nil {
			t.Logf("%s daemon RSS %.1f MiB with %d entries", c.Topology.Nodes[i].Name, mib(rss), n)
		}
	}
	logCounters(t, c, counters(t, c), "ring_overflows", "resyncs_sent", "resyncs_received")
}

// newLoadPair starts the pair of TestMergeJoinUnderLoad and
// TestMergeRunningLoss, and the workload that loads it: n changes, n is
// 1M (100,000 with -short), over n/2 keys, 5% of them deletes.
func newLoadPair(t *testing.T, seed uint64) (*Cluster, *Workload, int) {
	t.Helper()
	requireNft(t)
	n := scale(1_000_000)
	c := newScenario(t, ClusterConfig{Nodes: 2, Maps: ConnMaps(n / 2)})
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: n / 2, DeleteRatio: 0.05, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	return c, w, n
}

// loseInto drops 5% of the datagrams arriving at node i, until the test
// ends.
func loseInto(t *testing.T, c *Cluster, i int) {
	t.Helper()
	filter(t, func(ctx context.Context) (*Filter, error) { return c.Topology.Nodes[i].DropDatagrams(ctx, 5) })
}

// TestMergeJoinUnderLoad restarts node2's daemon while node1 writes 1M
// changes (100,000 with -short) at full speed, with 5% of the datagrams
// into node2 lost: node2 must end with every entry. It reports how long
// that took.
func TestMergeJoinUnderLoad(t *testing.T) {
	c, w, n := newLoadPair(t, 27)
	// What node2 holds when its daemon stops.
	if err := c.WriteFast(node1, nextChanges(w, n/5)); err != nil {
		t.Fatal(err)
	}
	convergeLarge(t, c, w.Want())
	if err := c.Daemons[node2].Stop(StopGrace); err != nil {
		t.Fatal(err)
	}
	loseInto(t, c, node2)

	load := startBulk(c, node1, nextChanges(w, n), nil)
	if err := load.waitWritten(n / 10); err != nil {
		t.Fatal(err)
	}
	joined, atJoin := time.Now(), load.written.Load()
	if err := c.Start(node2); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(joined)
	atReady := load.written.Load()
	wrote, err := load.wait()
	if err != nil {
		t.Fatal(err)
	}
	held := time.Since(load.end) + convergeLarge(t, c, w.Want())
	t.Logf("node1 wrote %d changes in %v (%.0f/s); node2's daemon started after %d of them, with 5%% loss into it: ready after %v (%d changes written by then), holding every entry %v after its start, %v after the last write",
		n, wrote.Round(time.Millisecond), rate(n, wrote), atJoin, ready.Round(time.Millisecond), atReady,
		(load.end.Sub(joined) + held).Round(time.Millisecond), held.Round(time.Millisecond))
	logCounters(t, c, counters(t, c), "datagrams_sent", "datagrams_resent", "gaps_seen", "repaired", "resync_needed", "resyncs_sent", "resyncs_received")
}

// TestMergeRunningLoss has node1 write 1M changes (100,000 with -short) at
// full speed to a running node2 that loses 5% of the datagrams it
// receives: node2 must end with every entry. It reports how long that
// took.
func TestMergeRunningLoss(t *testing.T) {
	c, w, n := newLoadPair(t, 28)
	changes := nextChanges(w, n)
	loseInto(t, c, node2)

	start := time.Now()
	if err := c.WriteFast(node1, changes); err != nil {
		t.Fatal(err)
	}
	wrote := time.Since(start)
	held := convergeLarge(t, c, w.Want())
	t.Logf("node1 wrote %d changes in %v (%.0f/s); node2, losing 5%%, held every entry %v after the first write, %v after the last",
		n, wrote.Round(time.Millisecond), rate(n, wrote), (wrote + held).Round(time.Millisecond), held.Round(time.Millisecond))
	logCounters(t, c, counters(t, c), "datagrams_sent", "datagrams_resent", "gaps_seen", "repaired", "resync_needed", "resyncs_received")
}
