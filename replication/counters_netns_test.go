package replication

// Counters (merge=sum), end to end: three nodes of this package in the
// network namespaces of the in-place tests (see inplace_netns_test.go),
// each with its own kernel map of per-client counters that a rate
// limiter's datapath (package netns-test/datapath, run with
// BPF_PROG_TEST_RUN) bumps in place with atomic adds. Only the capture is
// left out: a sum map is replicated by its scans.

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/netns-test/datapath"
)

// counterNode is what a sum map adds to an in-place node: its loader map,
// the kernel program that adds to it, its contribution map's target and
// where a stopping daemon keeps its contributions.
type counterNode struct {
	kind   counterKind
	lm     *loader.Map
	adder  *loader.Adder
	target *CounterTarget
	saved  string
}

// counterKind is one of the datapath's counters maps, and how its
// datapath counts.
type counterKind struct {
	name  string
	kmap  func(*datapath.Node) *ebpf.Map
	count func(dp *datapath.Node, round int, first, clients, bytes, repeat uint32) error
}

var (
	hashCounters = counterKind{"counters", func(dp *datapath.Node) *ebpf.Map { return dp.Counters },
		func(dp *datapath.Node, _ int, first, clients, bytes, repeat uint32) error {
			return dp.Count(first, clients, bytes, repeat)
		}}
	// perCPUCounters counts on the CPUs in turn, round by round, each in
	// its own slot.
	perCPUCounters = counterKind{"counters_percpu", func(dp *datapath.Node) *ebpf.Map { return dp.CountersPerCPU },
		func(dp *datapath.Node, round int, first, clients, bytes, repeat uint32) error {
			return onCPU(round%runtime.NumCPU(), func() error { return dp.CountPerCPU(first, clients, bytes, repeat) })
		}}
)

// onCPU runs fn on a thread bound to cpu.
func onCPU(cpu int, fn func() error) error {
	errs := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // and never unlocked: the thread ends with the goroutine
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errs <- err
			return
		}
		errs <- fn()
	}()
	return <-errs
}

// startCounters starts n nodes replicating the datapath's counters map of
// kind with the options spec (mapopt's form, merge=sum among them).
func startCounters(t *testing.T, n int, kind counterKind, spec string) (*ipCluster, []*counterNode) {
	t.Helper()
	c := newIPCluster(t, n)
	dir := t.TempDir()
	var cns []*counterNode
	for i := range n {
		dp, err := datapath.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dp.Close() })
		lm := openLoaderMap(t, kind.kmap(dp))
		adder, err := loader.NewAdder(lm)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { adder.Close() })
		node := &ipNode{dp: dp, maps: map[string]*loader.Map{kind.name: lm}, src: &chanSource{ch: make(chan loader.Change, 16)},
			state: filepath.Join(dir, fmt.Sprintf("node%d.state", i+1))}
		cn := &counterNode{kind: kind, lm: lm, adder: adder, saved: filepath.Join(dir, fmt.Sprintf("node%d.counters", i+1))}
		c.nodes, cns = append(c.nodes, node), append(cns, cn)
		cn.open(t, c, i, spec)
	}
	c.startAll(t)
	return c, cns
}

// open makes node i's contribution map, taking the contributions its
// last daemon saved, as a starting daemon does.
func (cn *counterNode) open(t *testing.T, c *ipCluster, i int, spec string) {
	t.Helper()
	sp, err := mapopt.ParseSpec("counters," + spec)
	if err != nil {
		t.Fatal(err)
	}
	o, err := mapopt.Resolve("counters", sp.Options, 0, mapopt.Layout{ValueSize: int(cn.lm.ValueSize), MaxEntries: int(cn.lm.MaxEntries)})
	if err != nil {
		t.Fatal(err)
	}
	cn.target = NewCounterTarget(cn.lm, cn.adder, int(cn.lm.KeySize), int(cn.lm.ValueSize), int(max(cn.lm.CPUs, 1)), uint32(i+1), o.Origins, time.Now)
	if loaded, err := cn.target.Load(cn.saved); err != nil {
		t.Fatal(err)
	} else if !loaded && c.nodes[i].epoch > 0 {
		t.Fatalf("node %d restarted without its saved counters", i+1)
	}
	c.nodes[i].local = []Map{CounterMap(MapFromLoader(cn.lm), cn.target, o)}
}

// restart stops node i's daemon, which saves its contributions, lets its
// datapath run meanwhile, and starts a new daemon that takes them.
func (c *ipCluster) restartCounters(t *testing.T, i int, cn *counterNode, spec string, meanwhile func()) {
	t.Helper()
	c.halt(t, i)
	if err := cn.target.Save(cn.saved); err != nil {
		t.Fatal(err)
	}
	meanwhile()
	cn.open(t, c, i, spec)
	c.start(t, i)
}

// counts reads every client's counter on node i of cns, summed over
// the CPUs of a per-CPU map.
func (c *ipCluster) counts(t *testing.T, i int, cns []*counterNode) map[uint32]datapath.Counter {
	t.Helper()
	out := map[uint32]datapath.Counter{}
	var k uint32
	var v datapath.Counter
	var per []datapath.Counter
	km := cns[i].kind.kmap(c.nodes[i].dp)
	perCPU := loader.PerCPU(km.Type())
	it := km.Iterate()
	for perCPU && it.Next(&k, &per) || !perCPU && it.Next(&k, &v) {
		for _, s := range per {
			v.Packets += s.Packets
			v.Bytes += s.Bytes
		}
		out[k], v = v, datapath.Counter{}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// converge waits until every node holds want, and fails t if they do not
// within timeout.
func (c *ipCluster) converge(t *testing.T, cns []*counterNode, want map[uint32]datapath.Counter, timeout time.Duration) {
	t.Helper()
	var got []map[uint32]datapath.Counter
	ok := waitFor(timeout, func() bool {
		got = got[:0]
		same := true
		for i := range c.nodes {
			m := c.counts(t, i, cns)
			got = append(got, m)
			same = same && fmt.Sprint(m) == fmt.Sprint(want)
		}
		return same
	})
	if !ok {
		for i, m := range got {
			t.Errorf("node %d holds %v", i+1, m)
		}
		t.Fatalf("want %v on every node", want)
	}
}

const counterSpec = "merge=sum,origins=3,scan=50ms"

// Three nodes count the same clients in place, in interleaved rounds (on
// a per-CPU map on every CPU in turn),
// while replication runs with 10 % of the datagrams lost, and one daemon
// is restarted while its datapath goes on counting: every node ends with
// the exact cluster-wide totals. A delete on one node then resets the
// client on every node, which counts from zero again.
func TestCountersSum(t *testing.T) {
	for _, kind := range []counterKind{hashCounters, perCPUCounters} {
		t.Run(kind.name, func(t *testing.T) { testCountersSum(t, kind) })
	}
}

func testCountersSum(t *testing.T, kind counterKind) {
	c, cns := startCounters(t, 3, kind, counterSpec)
	ctx := context.Background()
	for _, n := range c.topo.Nodes {
		f, err := n.DropDatagrams(ctx, 10)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Remove(ctx) })
	}
	want := map[uint32]datapath.Counter{}
	round := 0
	count := func(i int, first, clients, bytes, repeat uint32) {
		t.Helper()
		round++
		if err := kind.count(c.nodes[i].dp, round, first, clients, bytes, repeat); err != nil {
			t.Fatal(err)
		}
		for k := first; k < first+clients; k++ {
			w := want[k]
			w.Packets += uint64(repeat)
			w.Bytes += uint64(repeat * bytes)
			want[k] = w
		}
	}
	for round := range uint32(20) {
		for i := range c.nodes {
			count(i, 1, 3, 100+uint32(i), 10+round)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.restartCounters(t, 1, cns[1], counterSpec, func() {
		for round := range uint32(5) {
			for i := range c.nodes {
				count(i, 1, 3, 64, 7+round)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	for round := range uint32(10) {
		for i := range c.nodes {
			count(i, 2, 3, 1000, 5+round)
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.converge(t, cns, want, 20*time.Second)

	// A delete on node 3 resets client 1 everywhere.
	k := binary.NativeEndian.AppendUint32(nil, 1)
	if _, err := cns[2].lm.DeleteBatch(k); err != nil {
		t.Fatal(err)
	}
	delete(want, 1)
	c.converge(t, cns, want, 10*time.Second)
	count(0, 1, 1, 10, 3)
	count(1, 1, 1, 10, 4)
	c.converge(t, cns, want, 10*time.Second)
	for i, n := range c.nodes {
		st := n.node.Stats().Snapshot()
		t.Logf("node %d: %d scans found %d contributions; %d datagrams sent", i+1, st.Scans, st.ScanFound, st.DatagramsSent)
	}
}

// A cluster-wide rate limit: one client's packets spread over three
// nodes, each running a limiter that passes a packet while the client's
// count is at most limit. Without replication each node passes limit
// packets, three times the limit in all; with a merge=sum map each node
// sees the cluster's count, late by at most a scan period and the time
// in flight, so the cluster passes the limit and what arrives in that
// time.
func TestCountersRateLimit(t *testing.T) {
	const (
		limit   = 600
		packets = 3 * 2 * limit // twice what the limit lets through without replication
		scan    = 50 * time.Millisecond
	)
	// play sends the client's packets to the limiters in turn, three every
	// millisecond, and returns how many passed and how fast they came.
	play := func(dps []*datapath.Node) (passed int, perSecond float64) {
		start := time.Now()
		for p := range packets {
			ok, err := dps[p%len(dps)].Limit(7, limit)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				passed++
			}
			if p%3 == 2 {
				time.Sleep(time.Millisecond)
			}
		}
		return passed, packets / time.Since(start).Seconds()
	}
	var alone []*datapath.Node
	for range 3 {
		dp, err := datapath.New()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dp.Close() })
		alone = append(alone, dp)
	}
	without, _ := play(alone)

	c, _ := startCounters(t, 3, hashCounters, fmt.Sprintf("merge=sum,origins=3,scan=%s", scan))
	var dps []*datapath.Node
	for _, n := range c.nodes {
		dps = append(dps, n.dp)
	}
	with, rate := play(dps)
	// One scan period of traffic, and as much again for the time in
	// flight and a busy machine's scheduling.
	bound := limit + int(2*rate*scan.Seconds())
	t.Logf("limit %d on 3 nodes, %d packets at %.0f/s: %d passed without udpmapsync, %d with (bound %d)", limit, packets, rate, without, with, bound)
	if without != 3*limit {
		t.Errorf("without replication %d passed, want 3 × %d", without, limit)
	}
	if with < limit || with > bound {
		t.Errorf("with a sum map %d passed, want %d to %d", with, limit, bound)
	}
}
