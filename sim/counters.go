package sim

import (
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/udpmapsync/udpmapsync/counter"
	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/mapopt"
)

// The sum merge rule (merge=sum, package counter) is simulated in a model
// cluster of its own until replication.Node carries counter maps: each
// node holds a map of counters that its datapath increments in place and
// now and then deletes, reads its contribution from it as a scan does,
// multicasts what changed, and every second multicasts every
// contribution it holds, as a resync or a digest repair would carry them.
// The network loses, duplicates and reorders; partitions and clean stops
// (the daemon gone, the map and the datapath not) come from the run's
// faults. The oracle is the exact total per key: every increment counted
// from the key's last reset.

// counterWords is the counters per value: packets and bytes, say.
const counterWords = 2

// counterScenario is what a counter run draws.
type counterScenario struct {
	nodes, keys               int
	lossPermille, dupPermille int
	delay, jitter             time.Duration
	incs, deletes             int
	cuts                      []cut
	stops                     []lifecycle
	writeUntil, heal          time.Duration
}

func drawCounterScenario(r *rand.Rand, faults Faults) counterScenario {
	sc := counterScenario{nodes: 2 + r.IntN(3), keys: 1 + r.IntN(8)}
	sc.lossPermille = []int{0, 10, 100, 200}[r.IntN(4)]
	sc.dupPermille = []int{0, 10, 100}[r.IntN(3)]
	sc.delay = time.Duration(50+r.IntN(500)) * time.Microsecond
	sc.jitter = []time.Duration{0, 200 * time.Microsecond, 20 * time.Millisecond}[r.IntN(3)]
	sc.incs = 50 + r.IntN(500)
	sc.deletes = []int{0, 0, 2, 10}[r.IntN(4)]
	sc.writeUntil = time.Duration(2000+r.IntN(4000)) * time.Millisecond
	sc.heal = sc.writeUntil + 500*time.Millisecond
	for range r.IntN(3) {
		from := time.Duration(r.Int64N(int64(sc.writeUntil)))
		sc.cuts = append(sc.cuts, cut{side: 1 + uint32(r.IntN(1<<sc.nodes-1)), from: from,
			to: from + time.Duration(r.IntN(3000))*time.Millisecond})
	}
	for range r.IntN(3) {
		stop := time.Duration(r.Int64N(int64(sc.writeUntil)))
		sc.stops = append(sc.stops, lifecycle{node: r.IntN(sc.nodes), stop: stop,
			restart: stop + time.Duration(20+r.IntN(2000))*time.Millisecond})
	}
	if faults&Cuts == 0 {
		sc.cuts = nil
	}
	if faults&Stops == 0 {
		sc.stops = nil
	}
	for _, c := range sc.cuts {
		sc.heal = max(sc.heal, c.to)
	}
	for _, l := range sc.stops {
		sc.heal = max(sc.heal, l.restart)
	}
	return sc
}

// counterRun is one run of the model cluster.
type counterRun struct {
	*Sim // the virtual clock, the events, the trace, the first failure
	sc   counterScenario
	cut  [][]bool
	cs   []*counterNode
	// The oracle: every increment, with the reset its node counted it
	// from, and every reset made.
	incs   []increment
	resets []knowledge.Version // by key: the latest made
	// addWhole is a broken applier, for the test that the oracle finds
	// one: it adds a contribution whole instead of its delta.
	addWhole bool
}

type increment struct {
	key   int
	reset knowledge.Version
	words [counterWords]uint64
}

// counterNode is one node: its map (by key, nil where it holds none),
// which outlives its daemon, and the daemon's state of every key.
type counterNode struct {
	id    uint32
	clock *hlc.Clock
	up    bool
	value [][]uint64
	keys  []counter.Key
}

// counterMsg is a datagram: contributions and resets, by key.
type counterMsg struct {
	contribs []keyed
	resets   []keyedReset
}

type keyed struct {
	key int
	c   counter.Contribution
}

type keyedReset struct {
	key int
	v   knowledge.Version
}

// RunCounters runs the model cluster of the sum merge rule drawn from
// seed, with the faults it draws of those in faults (cuts and clean
// stops), and returns the first invariant found broken, nil if none.
func RunCounters(seed uint64, faults Faults, trace io.Writer) error {
	return runCounters(seed, faults, trace, false)
}

func runCounters(seed uint64, faults Faults, trace io.Writer, addWhole bool) error {
	r := &counterRun{Sim: &Sim{seed: seed, rng: rand.New(rand.NewPCG(seed, 0xc0de)), now: epoch0, trace: trace}, addWhole: addWhole}
	r.sc = drawCounterScenario(r.rng, faults)
	r.tracef("counter scenario %+v", r.sc)
	r.resets = make([]knowledge.Version, r.sc.keys)
	r.cut = make([][]bool, r.sc.nodes)
	for i := range r.sc.nodes {
		r.cut[i] = make([]bool, r.sc.nodes)
		offset := time.Duration(r.rng.Int64N(int64(hlc.MaxSkew/2))) - hlc.MaxSkew/4
		n := &counterNode{id: uint32(i + 1), clock: hlc.New(func() time.Time { return r.now }, offset),
			value: make([][]uint64, r.sc.keys), keys: make([]counter.Key, r.sc.keys)}
		r.cs = append(r.cs, n)
		r.after(time.Duration(r.rng.IntN(600))*time.Millisecond, func() { r.start(n) })
	}
	r.schedule()
	r.loop(r.sc.heal)
	for _, row := range r.cut {
		clear(row)
	}
	r.loop(r.sc.heal + 10*time.Second)
	if r.failed == nil {
		r.check()
	}
	return r.failed
}

// schedule draws the workload and schedules it with the faults.
func (r *counterRun) schedule() {
	for range r.sc.incs {
		at := time.Duration(r.rng.Int64N(int64(r.sc.writeUntil)))
		n, key := r.cs[r.rng.IntN(len(r.cs))], r.rng.IntN(r.sc.keys)
		w := [counterWords]uint64{1, uint64(64 + r.rng.IntN(1400))}
		r.after(at, func() { r.increment(n, key, w) })
	}
	for range r.sc.deletes {
		at := time.Duration(r.rng.Int64N(int64(r.sc.writeUntil)))
		n, key := r.cs[r.rng.IntN(len(r.cs))], r.rng.IntN(r.sc.keys)
		r.after(at, func() { r.delete(n, key) })
	}
	for _, c := range r.sc.cuts {
		r.after(c.from, func() { r.setCut(c, true) })
		r.after(c.to, func() { r.setCut(c, false) })
	}
	for _, l := range r.sc.stops {
		n := r.cs[l.node]
		r.after(l.stop, func() { n.up = false; r.tracef("node %d stops", n.id) })
		r.after(l.restart, func() { n.up = true; r.tracef("node %d starts", n.id) })
	}
}

func (r *counterRun) setCut(c cut, on bool) {
	for a := range r.cut {
		for b := range r.cut {
			if inA, inB := c.side&(1<<a) != 0, c.side&(1<<b) != 0; inA != inB {
				r.cut[a][b] = on
			}
		}
	}
	r.tracef("cut %+v on=%v", c, on)
}

// start starts n's daemon for the first time, and its scans and syncs,
// which do nothing while it is stopped.
func (r *counterRun) start(n *counterNode) {
	n.up = true
	var scan, sync func()
	scan = func() {
		if n.up {
			r.scan(n)
		}
		r.at(r.now.Add(50*time.Millisecond), uint64(n.id), scan)
	}
	sync = func() {
		if n.up {
			r.sync(n)
		}
		r.at(r.now.Add(time.Second), uint64(n.id), sync)
	}
	scan()
	r.at(r.now.Add(time.Second), uint64(n.id), sync)
}

// increment is n's datapath counting in place, daemon or not.
func (r *counterRun) increment(n *counterNode, key int, w [counterWords]uint64) {
	if n.value[key] == nil {
		n.value[key] = make([]uint64, counterWords)
	}
	for i := range w {
		n.value[key][i] += w[i]
	}
	r.incs = append(r.incs, increment{key: key, reset: n.keys[key].Reset(), words: w})
	r.tracef("node %d key %d +%v", n.id, key, w)
}

// delete is a delete of the key on n while its daemon runs: a reset.
func (r *counterRun) delete(n *counterNode, key int) {
	if !n.up {
		return
	}
	n.value[key] = nil
	v := knowledge.Version{Stamp: n.clock.Now(), Origin: n.id}
	if !n.keys[key].ApplyReset(v) {
		r.fail("node %d: its own reset %v of key %d is not newer than %v", n.id, v, key, n.keys[key].Reset())
		return
	}
	if v.Newer(r.resets[key]) {
		r.resets[key] = v
	}
	r.tracef("node %d key %d reset %v", n.id, key, v)
	r.multicast(n, counterMsg{resets: []keyedReset{{key, v}}})
}

// scan reads n's contribution to every key and sends what changed.
func (r *counterRun) scan(n *counterNode) {
	var m counterMsg
	local := make([]uint64, counterWords)
	zero := make([]uint64, counterWords)
	for key := range n.keys {
		k := &n.keys[key]
		v := n.value[key]
		if v == nil {
			v = zero
		}
		k.Local(n.id, v, local)
		changed, err := k.SetOwn(n.id, n.clock.Now(), local, mapopt.DefaultOrigins)
		if err != nil {
			r.fail("node %d key %d: %v", n.id, key, err)
			return
		}
		if changed {
			c, _ := k.Own(n.id)
			m.contribs = append(m.contribs, keyed{key, clone(c)})
		}
	}
	if len(m.contribs) > 0 {
		r.multicast(n, m)
	}
}

// sync sends every contribution and reset n holds.
func (r *counterRun) sync(n *counterNode) {
	var m counterMsg
	for key := range n.keys {
		k := &n.keys[key]
		if v := k.Reset(); v != (knowledge.Version{}) {
			m.resets = append(m.resets, keyedReset{key, v})
		}
		k.Contributions(func(c counter.Contribution) { m.contribs = append(m.contribs, keyed{key, clone(c)}) })
	}
	r.multicast(n, m)
}

func clone(c counter.Contribution) counter.Contribution {
	c.Words = slices.Clone(c.Words)
	return c
}

// multicast sends m to every other node, each copy lost, duplicated and
// delayed by chance, or dropped by a cut.
func (r *counterRun) multicast(from *counterNode, m counterMsg) {
	for _, to := range r.cs {
		if to == from || r.cut[from.id-1][to.id-1] || r.rng.IntN(1000) < r.sc.lossPermille {
			continue
		}
		copies := 1
		if r.rng.IntN(1000) < r.sc.dupPermille {
			copies = 2
		}
		for range copies {
			delay := r.sc.delay + time.Duration(r.rng.Int64N(int64(r.sc.jitter)+1))
			r.at(r.now.Add(delay), uint64(to.id), func() { r.receive(to, from.id, m) })
		}
	}
}

// receive merges m into n, if its daemon runs, and applies the effects
// to its map as the kernel program would: a reset deletes the key, a
// delta is added.
func (r *counterRun) receive(n *counterNode, from uint32, m counterMsg) {
	if !n.up {
		return
	}
	for _, kr := range m.resets {
		n.clock.Observe(kr.v.Stamp)
		if n.keys[kr.key].ApplyReset(kr.v) {
			n.value[kr.key] = nil
			r.tracef("node %d key %d reset %v from %d", n.id, kr.key, kr.v, from)
		}
	}
	delta := make([]uint64, counterWords)
	for _, kc := range m.contribs {
		n.clock.Observe(kc.c.Stamp)
		if kc.c.Origin == n.id {
			continue // its own, relayed back: it holds the latest
		}
		reset, add, err := n.keys[kc.key].Merge(kc.c, mapopt.DefaultOrigins, delta)
		if err != nil {
			r.fail("node %d key %d: %v", n.id, kc.key, err)
			return
		}
		if r.addWhole && add {
			copy(delta, kc.c.Words)
		}
		if reset {
			n.value[kc.key] = nil
		}
		if add {
			if n.value[kc.key] == nil {
				n.value[kc.key] = make([]uint64, counterWords)
			}
			for i, d := range delta {
				n.value[kc.key][i] += d
			}
		}
	}
}

// check compares every node's map with the oracle: per key, the sum of
// the increments counted from the key's last reset.
func (r *counterRun) check() {
	want := make([][counterWords]uint64, r.sc.keys)
	for _, inc := range r.incs {
		if inc.reset == r.resets[inc.key] {
			for i := range inc.words {
				want[inc.key][i] += inc.words[i]
			}
		}
	}
	for _, n := range r.cs {
		for key, v := range n.value {
			var got [counterWords]uint64
			if v != nil {
				got = [counterWords]uint64(v)
			}
			if got != want[key] {
				r.fail("node %d key %d holds %v, want %v (the increments since reset %v)", n.id, key, got, want[key], r.resets[key])
				return
			}
		}
	}
}

// String describes the run for failure messages.
func (sc counterScenario) String() string {
	return fmt.Sprintf("%d nodes, %d keys, loss %d‰, %d increments, %d deletes, %d cuts, %d stops",
		sc.nodes, sc.keys, sc.lossPermille, sc.incs, sc.deletes, len(sc.cuts), len(sc.stops))
}
