// Package sim runs whole udpmapsync clusters in one goroutine at virtual
// time, with the faults a network, a kernel and an operator inflict, and
// checks the protocol's invariants; see "Simulation" in
// docs/ARCHITECTURE.md. Every run is drawn from one seed, and the same
// seed replays the same run, datagram for datagram.
//
// The nodes are real [replication.Node]s, stepped (see [replication.Node.Start]);
// what is simulated is what lies around them: the clock, the network,
// the BPF maps and the capture rings.
package sim

import (
	"container/heap"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"golang.org/x/sys/unix"
)

// epoch0 is the virtual time every run starts at.
var epoch0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// Sim is one run: a cluster, its network and its workload, at virtual
// time.
type Sim struct {
	seed  uint64
	sc    scenario
	rng   *rand.Rand // the scenario's and the workload's draws, in the run's order
	now   time.Time
	queue events
	seq   uint64
	nodes []*simNode
	net   network
	work  workload
	dir   string // the state files
	trace io.Writer
	// answered holds the snapshot requests answered, by node and id.
	answered map[[2]uint32]bool
	// resent is when each datagram was last resent to the group, by
	// node, epoch and sequence number.
	resent map[resend]time.Time
	// failed is the first invariant found broken; the run stops at it.
	failed error
	// sum, in a run of counters (RunSum), replaces the map, the workload
	// and the oracle; nil in the others.
	sum *sumRun
}

// Run runs the cluster of seed, with the faults it draws of those in
// faults, to its end and checks it: it returns the first invariant found
// broken, nil if none. With trace, every datagram, apply and fault is
// written to it as it happens.
func Run(seed uint64, faults Faults, trace io.Writer) error { return run(seed, faults, trace, false) }

// run is [Run], or [RunSum] with sum.
func run(seed uint64, faults Faults, trace io.Writer, sum bool) (err error) {
	dir, err := os.MkdirTemp(stateRoot(), "udpmapsync-sim-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	s := &Sim{seed: seed, rng: rand.New(rand.NewPCG(seed, 0x5eed)), now: epoch0, dir: dir, trace: trace,
		answered: make(map[[2]uint32]bool), resent: make(map[resend]time.Time)}
	s.sc = drawScenario(s.rng, faults)
	s.sc.drawMore(rand.New(rand.NewPCG(seed, 0x3a7e)), faults)
	s.sc.valueSize = valueSize
	if seed%largeEvery == largeEvery-1 {
		s.sc.valueSize = largeValueSize
	}
	s.tracef("scenario %+v", s.sc)
	if sum {
		if s.sum, err = newSumRun(s); err != nil {
			return err
		}
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic at %v: %v\n%s", s.elapsed(), r, debug.Stack())
		}
		for _, n := range s.nodes {
			n.crash() // ends what a running node holds; the run is over
		}
	}()
	s.build()
	s.loop(s.sc.heal)
	s.heal()
	if s.failed == nil {
		s.settle()
	}
	if s.failed == nil {
		s.checkEnd()
	}
	return s.failed
}

// stateRoot is where the runs' state files go: a tmpfs if the machine
// has one, where the daemons' fsyncs of their state files cost nothing
// (on a disk they were most of a run's time), else the temporary
// directory.
func stateRoot() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() && unix.Access("/dev/shm", unix.W_OK) == nil {
		return "/dev/shm"
	}
	return ""
}

// elapsed is the virtual time since the run began.
func (s *Sim) elapsed() time.Duration { return s.now.Sub(epoch0) }

func (s *Sim) tracef(format string, args ...any) {
	if s.trace != nil {
		fmt.Fprintf(s.trace, "%12v  %s\n", s.elapsed(), fmt.Sprintf(format, args...))
	}
}

// fail records a broken invariant; the run stops.
func (s *Sim) fail(format string, args ...any) {
	if s.failed == nil {
		s.failed = fmt.Errorf("at %v: %s", s.elapsed(), fmt.Sprintf(format, args...))
		s.tracef("FAIL %v", s.failed)
	}
}

// build makes the nodes, starts them, and schedules the workload and the
// faults.
func (s *Sim) build() {
	for i := range s.sc.nodes {
		id := uint32(i + 1)
		n := &simNode{s: s, id: id, addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(id)}), 3870),
			offset: s.sc.offsets[i], state: filepath.Join(s.dir, fmt.Sprintf("node%d.state", id))}
		if s.sum == nil {
			n.maps = []*memMap{newMemMap(keySize, s.sc.valueSize, s.sc.maxEntries, s.sc.mapType())}
		}
		for _, m := range n.maps {
			m.applied, m.evicted = n.traceApply, n.evicted
		}
		s.nodes = append(s.nodes, n)
	}
	for i, n := range s.nodes {
		s.after(s.sc.starts[i], n.start)
	}
	if s.sum != nil {
		s.sum.schedule()
	} else {
		s.work.schedule(s)
	}
	s.net.schedule(s)
	s.scheduleLifecycles()
}

// node returns the node at addr, nil if none.
func (s *Sim) node(addr netip.AddrPort) *simNode {
	for _, n := range s.nodes {
		if n.addr == addr {
			return n
		}
	}
	return nil
}

// event is something that happens at a virtual time. Events of the same
// time run in the order of key, then of scheduling: key is what keeps
// the order the same when what schedules them (a node's Go maps) does
// not do it in the same order on every run.
type event struct {
	at  time.Time
	key uint64
	seq uint64
	fn  func()
}

type events []event

func (q events) Len() int { return len(q) }
func (q events) Less(i, j int) bool {
	switch {
	case !q[i].at.Equal(q[j].at):
		return q[i].at.Before(q[j].at)
	case q[i].key != q[j].key:
		return q[i].key < q[j].key
	}
	return q[i].seq < q[j].seq
}
func (q events) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *events) Push(x any)   { *q = append(*q, x.(event)) }
func (q *events) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// at schedules fn at t (at the earliest now), ordered by key among the
// events of that time.
func (s *Sim) at(t time.Time, key uint64, fn func()) {
	if t.Before(s.now) {
		t = s.now
	}
	s.seq++
	heap.Push(&s.queue, event{at: t, key: key, seq: s.seq, fn: fn})
}

// after schedules fn d after the run's start.
func (s *Sim) after(d time.Duration, fn func()) { s.at(epoch0.Add(d), 0, fn) }

// loop runs events until the virtual time reaches until, or an
// invariant breaks.
func (s *Sim) loop(until time.Duration) {
	end := epoch0.Add(until)
	for s.queue.Len() > 0 && s.failed == nil {
		if s.queue[0].at.After(end) {
			break
		}
		e := heap.Pop(&s.queue).(event)
		s.now = e.at
		e.fn()
	}
	if s.now.Before(end) {
		s.now = end
	}
}
