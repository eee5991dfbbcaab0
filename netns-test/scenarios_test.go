package netnstest

// The failure scenarios of issue 3, each on three nodes with the real
// daemon: loss, a lost tail, a crashed receiver, a restarted sender, a
// partition, an overflowing capture ring and a late joiner. Every scenario
// ends with every map on every node compared byte for byte with what was
// written, and checks in the daemons' "stats" lines that the repair it
// provokes is the one that happened.

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Node indexes of the three-node clusters.
const (
	node1 = iota
	node2
	node3
)

// scenarioInterval is the daemons' --stats-interval and
// --announce-interval: counters and heartbeats show up within a fifth of
// a second.
const scenarioInterval = 200 * time.Millisecond

// newScenario starts a cluster of three nodes (unless cfg says otherwise)
// replicating [DefaultMaps] (unless cfg names others), whose daemons log
// stats and announce every [scenarioInterval], as [startCluster] does.
// Like every daemon of the harness they share a key, unless
// cfg.Daemon.InsecureNoKey says this test is about the unkeyed mode.
func newScenario(t *testing.T, cfg ClusterConfig) *Cluster {
	t.Helper()
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Maps == nil {
		cfg.Maps = DefaultMaps()
	}
	cfg.Daemon = DaemonConfig{
		StatsInterval: scenarioInterval,
		Args:          []string{"--announce-interval", scenarioInterval.String()},
		InsecureNoKey: cfg.Daemon.InsecureNoKey,
	}
	return startCluster(t, cfg)
}

// requireNft skips t where nftables, which makes the loss, is missing.
func requireNft(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft to drop datagrams: apt-get install nftables (or make deps)")
	}
}

// filter installs a [Filter] made by add and removes it when the test
// ends, if the test has not already.
func filter(t *testing.T, add func(context.Context) (*Filter, error)) *Filter {
	t.Helper()
	f, err := add(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	// The test's context is done by the time cleanups run.
	t.Cleanup(func() {
		if err := f.Remove(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return f
}

// scale divides a count by ten under -short, as [TestConverge] does.
func scale(n int) int {
	if testing.Short() {
		return n / 10
	}
	return n
}

// write makes n changes of w on node i, batch changes per bpftool run.
func write(t *testing.T, c *Cluster, i int, w *Workload, n, batch int) {
	t.Helper()
	for left := n; left > 0; left -= batch {
		changes := make([]Change, min(left, batch))
		for k := range changes {
			changes[k] = w.Next()
		}
		if err := c.Write(t.Context(), i, changes); err != nil {
			t.Fatal(err)
		}
	}
}

// writer writes a workload's changes to one node in the background, a
// batch per bpftool run with a pause between runs, until stopped.
type writer struct {
	batches atomic.Int64
	ctx     context.Context
	stop    chan struct{}
	done    chan struct{}
	err     error // valid once done is closed
	once    sync.Once
}

// startWriter starts writing w to node i; it stops when the test ends, if
// the test does not stop it first with [writer.halt].
func startWriter(t *testing.T, c *Cluster, i int, w *Workload, batch int, pause time.Duration) *writer {
	wr := &writer{ctx: t.Context(), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(wr.done)
		for {
			changes := make([]Change, batch)
			for k := range changes {
				changes[k] = w.Next()
			}
			if wr.err = c.Write(wr.ctx, i, changes); wr.err != nil {
				return
			}
			wr.batches.Add(1)
			select {
			case <-wr.stop:
				return
			case <-time.After(pause):
			}
		}
	}()
	t.Cleanup(func() { wr.halt(t) })
	return wr
}

// waitBatches waits until the writer has written n batches in all.
func (wr *writer) waitBatches(t *testing.T, n int64) {
	t.Helper()
	for wr.batches.Load() < n {
		select {
		case <-wr.done:
			t.Fatalf("writer stopped after %d batches, want %d: %v", wr.batches.Load(), n, wr.err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// halt stops the writer, after the batch it is writing, and fails the test
// if a write failed while the test ran. The writer's workload is safe to
// read afterwards.
func (wr *writer) halt(t *testing.T) {
	t.Helper()
	wr.once.Do(func() {
		close(wr.stop)
		<-wr.done
		if wr.err != nil && wr.ctx.Err() == nil {
			t.Errorf("background write: %v", wr.err)
		}
	})
}

// converge waits until every map of every node holds want.
func converge(t *testing.T, c *Cluster, want map[string]Contents) {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	s, err := c.WaitConverged(ctx, want, 100*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s after %v", s, time.Since(start).Round(time.Millisecond))
}

// waitNode waits until node i's maps hold want, whatever the other nodes
// hold.
func waitNode(t *testing.T, c *Cluster, i int, want map[string]Contents) {
	t.Helper()
	var diffs []string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		have, err := c.Read(i)
		if err != nil {
			t.Fatal(err)
		}
		diffs = diffs[:0]
		for _, spec := range c.Maps {
			if d := Compare(want[spec.Name], have[spec.Name]); !d.Equal() {
				diffs = append(diffs, spec.Name+": "+d.String())
			}
		}
		if len(diffs) == 0 {
			return
		}
	}
	t.Fatalf("%s does not hold what was written after 30s:\n%s", c.Topology.Nodes[i].Name, strings.Join(diffs, "\n"))
}

// counters returns the last stats line of every node's daemon, nil for a
// node without one.
func counters(t *testing.T, c *Cluster) []Stats {
	t.Helper()
	s := make([]Stats, len(c.Daemons))
	for i, d := range c.Daemons {
		if d == nil {
			continue
		}
		var err error
		if s[i], err = d.Stats(); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// waitCounters waits until ok holds for the last stats lines of the nodes'
// daemons (nil for a node without one, or whose daemon logged none yet)
// and returns them. It fails the test, showing what the counters say, if
// they do not show what is wanted within 15 s.
func waitCounters(t *testing.T, c *Cluster, what string, ok func(s []Stats) bool) []Stats {
	t.Helper()
	var s []Stats
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if s = counters(t, c); ok(s) {
			return s
		}
	}
	var b strings.Builder
	for i, st := range s {
		fmt.Fprintf(&b, "\n%s: %v", c.Topology.Nodes[i].Name, st)
	}
	t.Fatalf("counters do not show %s after 15s; last stats lines:%s", what, b.String())
	return nil
}

// readyCounters waits for a stats line of every running daemon logged once
// it was ready, so that counts of the initial sync are in it: the
// baseline a scenario's counters grow from.
func readyCounters(t *testing.T, c *Cluster) []Stats {
	t.Helper()
	return waitCounters(t, c, "every daemon ready", func(s []Stats) bool {
		for i, d := range c.Daemons {
			if d != nil && (s[i] == nil || s[i]["ready"] != 1) {
				return false
			}
		}
		return true
	})
}

// logCounters logs the counters a scenario is about, per node.
func logCounters(t *testing.T, c *Cluster, s []Stats, names ...string) {
	t.Helper()
	for i, st := range s {
		var parts []string
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%s=%d", n, st[n]))
		}
		t.Logf("%s: %s", c.Topology.Nodes[i].Name, strings.Join(parts, " "))
	}
}

// TestScenarioLoss drops 5% and 30% of the datagrams arriving at one
// receiver, at random, while node1 writes in bursts: that receiver repairs
// its gaps with node1's resends and every node converges.
func TestScenarioLoss(t *testing.T) {
	requireNft(t)
	for _, percent := range []int{5, 30} {
		t.Run(fmt.Sprintf("%d%%", percent), func(t *testing.T) {
			c := newScenario(t, ClusterConfig{})
			before := readyCounters(t, c)
			filter(t, func(ctx context.Context) (*Filter, error) { return c.Topology.Nodes[node3].DropDatagrams(ctx, percent) })

			w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: 1500, DeleteRatio: 0.25, Seed: uint64(percent)})
			if err != nil {
				t.Fatal(err)
			}
			// Many small bursts: some datagrams of a burst are lost, some
			// tails too. Not fewer under -short: with a few dozen
			// datagrams, 5% loss may well lose none.
			write(t, c, node1, w, 6000, 100)
			converge(t, c, w.Want())

			s := waitCounters(t, c, "node3's gaps repaired by node1's resends", func(s []Stats) bool {
				return s[node3]["repaired"] > before[node3]["repaired"] && s[node1]["datagrams_resent"] > before[node1]["datagrams_resent"]
			})
			logCounters(t, c, s, "datagrams_sent", "datagrams_resent", "gaps_seen", "nacks_sent", "repaired", "resync_needed", "resyncs_received")
		})
	}
}

// TestScenarioTailLoss loses the last datagrams of a burst at one
// receiver: it has everything before, drops everything while the burst
// goes out, and then no change follows. Only node1's heartbeat, the
// announce carrying its latest sequence number, shows that receiver what
// it missed; it asks for it and converges without a full resync.
func TestScenarioTailLoss(t *testing.T) {
	requireNft(t)
	c := newScenario(t, ClusterConfig{})
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: 1000, DeleteRatio: 0.25, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, node1, w, scale(2000), 200)
	converge(t, c, w.Want())
	before := readyCounters(t, c)

	drop := filter(t, func(ctx context.Context) (*Filter, error) { return c.Topology.Nodes[node3].DropDatagrams(ctx, 100) })
	write(t, c, node1, w, 50, 50)
	// Once node2 holds the burst, it has been sent, and node3 lost it.
	waitNode(t, c, node2, w.Want())
	if err := drop.Remove(t.Context()); err != nil {
		t.Fatal(err)
	}
	converge(t, c, w.Want())

	s := waitCounters(t, c, "node3's lost tail repaired", func(s []Stats) bool {
		return s[node3]["gaps_seen"] > before[node3]["gaps_seen"] && s[node3]["repaired"] > before[node3]["repaired"]
	})
	if s[node3]["resync_needed"] != before[node3]["resync_needed"] {
		t.Errorf("node3 needed a full resync for the tail (resync_needed %d, was %d); want a repair", s[node3]["resync_needed"], before[node3]["resync_needed"])
	}
	logCounters(t, c, s, "datagrams_sent", "datagrams_resent", "gaps_seen", "repaired", "resync_needed")
}

// TestScenarioReceiverKilled kills node3's daemon with SIGKILL while node1
// keeps writing (updates and deletes), and restarts it while the writes go
// on: the restarted daemon gets a full resync, which also removes what was
// deleted while it was down, and every node converges.
func TestScenarioReceiverKilled(t *testing.T) {
	c := newScenario(t, ClusterConfig{})
	before := readyCounters(t, c)
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: 1000, DeleteRatio: 0.3, Seed: 4})
	if err != nil {
		t.Fatal(err)
	}
	wr := startWriter(t, c, node1, w, scale(200), 20*time.Millisecond)
	wr.waitBatches(t, 5)
	c.Daemons[node3].Kill()
	wr.waitBatches(t, 10)
	if err := c.Start(node3); err != nil {
		t.Fatal(err)
	}
	n := wr.batches.Load()
	wr.waitBatches(t, n+5)
	wr.halt(t)
	converge(t, c, w.Want())

	// node3's counters start again from zero with its new daemon.
	s := waitCounters(t, c, "a full resync of node3", func(s []Stats) bool {
		return s[node3]["resyncs_received"] > 0 ||
			s[node1]["resyncs_sent"] > before[node1]["resyncs_sent"] || s[node2]["resyncs_sent"] > before[node2]["resyncs_sent"]
	})
	logCounters(t, c, s, "resyncs_sent", "resyncs_received", "sync_deleted", "gaps_seen", "repaired")
}

// TestScenarioSenderRestart stops node1's daemon, the writer, and starts it
// again, while node2 writes meanwhile. The other nodes notice node1's new
// epoch ("peer restarted") and take its new stream, which numbers from 1
// again; node1 takes what node2 wrote while it was down; every node
// converges.
func TestScenarioSenderRestart(t *testing.T) {
	c := newScenario(t, ClusterConfig{})
	w1, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 2, Keys: 1000, DeleteRatio: 0.25, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	w2, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 2, Writers: 2, Keys: 1000, DeleteRatio: 0.25, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, node1, w1, scale(3000), 200)
	// A restarted daemon adopts the group's state: what node1 wrote but had
	// not sent when it stopped would rightly be reverted. Converging first
	// makes what every node must hold in the end plain.
	converge(t, c, w1.Want())

	if err := c.Daemons[node1].Stop(StopGrace); err != nil {
		t.Fatal(err)
	}
	write(t, c, node2, w2, scale(1000), 200)
	if err := c.Start(node1); err != nil {
		t.Fatal(err)
	}
	write(t, c, node1, w1, scale(3000), 200)
	converge(t, c, Union(w1.Want(), w2.Want()))

	for _, i := range []int{node2, node3} {
		d := c.Daemons[i]
		if ok, err := d.Logged("peer restarted"); err != nil {
			t.Fatal(err)
		} else if !ok {
			t.Errorf("%s did not log that node1 restarted; %s", d.Node.Name, d.Tail(20))
		}
	}
	logCounters(t, c, counters(t, c), "datagrams_sent", "gaps_seen", "repaired", "resyncs_sent", "resyncs_received")
}

// TestScenarioPartition cuts node3 off for 10 s (1 s with -short) while
// node1 and node2 write, then heals the partition: node3 catches up,
// by repair or by full resync, and every node converges.
func TestScenarioPartition(t *testing.T) {
	requireNft(t)
	c := newScenario(t, ClusterConfig{})
	before := readyCounters(t, c)
	var workloads []*Workload
	var writers []*writer
	for i := range 2 {
		w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: i + 1, Writers: 2, Keys: 1000, DeleteRatio: 0.25, Seed: 6})
		if err != nil {
			t.Fatal(err)
		}
		workloads = append(workloads, w)
		writers = append(writers, startWriter(t, c, i, w, 50, 50*time.Millisecond))
	}
	for _, wr := range writers {
		wr.waitBatches(t, 3)
	}
	cut := filter(t, func(ctx context.Context) (*Filter, error) { return c.Topology.Nodes[node3].Isolate(ctx) })
	time.Sleep(time.Duration(scale(10)) * time.Second)
	if err := cut.Remove(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, wr := range writers {
		n := wr.batches.Load()
		wr.waitBatches(t, n+3)
		wr.halt(t)
	}
	converge(t, c, Union(workloads[0].Want(), workloads[1].Want()))

	s := waitCounters(t, c, "node3 catching up after the partition", func(s []Stats) bool {
		return s[node3]["gaps_seen"] > before[node3]["gaps_seen"] &&
			(s[node3]["repaired"] > before[node3]["repaired"] || s[node3]["resyncs_received"] > before[node3]["resyncs_received"])
	})
	logCounters(t, c, s, "datagrams_sent", "datagrams_resent", "gaps_seen", "repaired", "resync_needed", "resyncs_sent", "resyncs_received")
}

// TestScenarioTinyRing gives node1 a capture ring of 4 KiB and writes a
// burst of large values into it at once: the ring overflows, node1 counts
// it, and the other nodes, which cannot be sent what the kernel dropped,
// converge by a full resync from node1.
func TestScenarioTinyRing(t *testing.T) {
	// Records of over 512 bytes: a few fill the ring.
	maps := []MapSpec{{Name: "big", Type: ebpf.Hash, KeySize: 8, ValueSize: 512, MaxEntries: 8192}}
	c := newScenario(t, ClusterConfig{Maps: maps, NodeArgs: map[int][]string{node1: {"--ring-size", "4096"}}})
	before := readyCounters(t, c)
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: 2000, DeleteRatio: 0.1, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	n := scale(3000)
	write(t, c, node1, w, n, n)
	converge(t, c, w.Want())

	s := waitCounters(t, c, "node1's ring overflows, repaired by full resyncs", func(s []Stats) bool {
		return s[node1]["ring_overflows"] > 0 &&
			s[node2]["resyncs_received"] > before[node2]["resyncs_received"] &&
			s[node3]["resyncs_received"] > before[node3]["resyncs_received"]
	})
	logCounters(t, c, s, "captured", "ring_overflows", "resync_needed", "resyncs_sent", "resyncs_received")
}

// TestScenarioLateJoin starts node3's daemon only once node1 has written
// 100,000 entries (10,000 with -short) and node2 holds them: node3 must
// hold all of them when it says it is ready, that is as soon as its ready
// file appears, not some time later.
func TestScenarioLateJoin(t *testing.T) {
	maps := DefaultMaps()
	for i := range maps {
		if maps[i].Type != ebpf.Array {
			maps[i].MaxEntries = 1 << 17 // room for 65,536 keys per hash
		}
	}
	c := newScenario(t, ClusterConfig{Maps: maps, Later: []int{node3}})
	entries := scale(100_000)
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: entries * 6 / 10, Seed: 8})
	if err != nil {
		t.Fatal(err)
	}
	// Random keys from a pool of about twice the entries wanted, until
	// that many are held.
	held := func() int {
		n := 0
		for _, m := range w.Want() {
			n += len(m)
		}
		return n
	}
	for batch := min(5000, entries/4); held() < entries; {
		write(t, c, node1, w, batch, batch)
	}
	converge(t, c, w.Want())

	start := time.Now()
	if err := c.Start(node3); err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	have3, err := c.Read(node3)
	if err != nil {
		t.Fatal(err)
	}
	have1, err := c.Read(node1)
	if err != nil {
		t.Fatal(err)
	}
	var errs []error
	for _, spec := range c.Maps {
		if d := Compare(have1[spec.Name], have3[spec.Name]); !d.Equal() {
			errs = append(errs, fmt.Errorf("%s compared with node1's: %s", spec.Name, d))
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("node3 was ready before it held node1's %d entries:\n%v", held(), err)
	}
	t.Logf("node3 ready with all %d entries %v after its start", held(), ready.Round(time.Millisecond))
	converge(t, c, w.Want())
	s := waitCounters(t, c, "node3's initial full resync", func(s []Stats) bool { return s[node3]["resyncs_received"] > 0 })
	logCounters(t, c, s, "resyncs_sent", "resyncs_received")
}
