package sim

import (
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/replication"
	"github.com/udpmapsync/udpmapsync/wire"
)

// A run of counters (RunSum): the nodes are real replication.Nodes, as in
// every run, replicating one merge=sum map (package counter,
// replication.CounterTarget) whose kernel copy is a map in memory that
// the node's datapath increments in place, daemon or not, and now and
// then deletes from; the scans (stepped with the timers) find what it
// counted. The network, the clocks, the cuts, the stops and the crashes
// are the run's scenario's. The oracle: once healed, every node holds
// the same counts, and, in runs without deletes and crashes, exactly
// every increment made on any node; with them, no more than that (a
// reset clears what was counted before it, a crash what its node had
// not sent yet).

// sumScan is how often the nodes scan their counters.
const sumScan = 100 * time.Millisecond

// sumRun is what a run of counters adds to its Sim.
type sumRun struct {
	s       *Sim
	opts    mapopt.Options
	kernels []*memCounters               // by node: its kernel map, which outlives its daemons
	targets []*replication.CounterTarget // by node: its daemon's, kept over a clean stop as its file would keep it
	counted map[string][counterWords]uint64
	deletes bool // the run deletes keys
	deleted bool // and did
}

// RunSum runs the counters of seed, with the faults it draws of those in
// faults, to its end and checks them; see [Run].
func RunSum(seed uint64, faults Faults, trace io.Writer) error { return run(seed, faults, trace, true) }

// newSumRun makes the counters of s, whose scenario is drawn.
func newSumRun(s *Sim) (*sumRun, error) {
	r := &sumRun{s: s, counted: make(map[string][counterWords]uint64), deletes: s.rng.IntN(3) == 0}
	s.tracef("counters: deletes %v", r.deletes)
	var err error
	r.opts, err = mapopt.Resolve("counters", []mapopt.Option{{Key: "merge", Value: "sum"}, {Key: "scan", Value: sumScan.String()}}, 0,
		mapopt.Layout{ValueSize: 8 * counterWords, MaxEntries: maxEntries})
	for range s.sc.nodes {
		r.kernels = append(r.kernels, &memCounters{entries: make(map[string][]uint64)})
		r.targets = append(r.targets, nil)
	}
	return r, err
}

// schedule draws the datapaths' increments, and their deletes if the run
// has them: bursts on random nodes, whether a daemon runs there or not.
func (r *sumRun) schedule() {
	s := r.s
	for range s.sc.writes {
		at := writeFrom + time.Duration(s.rng.Int64N(int64(s.sc.writeUntil-writeFrom)))
		n := s.nodes[s.rng.IntN(len(s.nodes))]
		type inc struct {
			key   []byte
			words [counterWords]uint64
			del   bool
		}
		burst := make([]inc, 1+s.rng.IntN(s.sc.burst))
		for i := range burst {
			burst[i] = inc{key: binary.NativeEndian.AppendUint32(nil, uint32(s.rng.IntN(s.sc.keys))),
				words: [counterWords]uint64{1, uint64(64 + s.rng.IntN(1400))}}
			burst[i].del = r.deletes && s.rng.IntN(8) == 0
		}
		s.after(at, func() {
			k := r.kernels[n.id-1]
			for _, b := range burst {
				if b.del {
					k.delete(b.key)
					r.deleted = true
					s.tracef("datapath node %d deletes %x", n.id, b.key)
					continue
				}
				k.increment(b.key, b.words)
				c := r.counted[string(b.key)]
				for i := range c {
					c[i] += b.words[i]
				}
				r.counted[string(b.key)] = c
				s.tracef("datapath node %d %x +%v", n.id, b.key, b.words)
			}
		})
	}
}

// maps is the table of node n's daemon as it starts: the contribution map
// of its counters. After a clean stop (the state file is there) its
// contributions are the last daemon's; else it lost them, and clears its
// kernel map.
func (r *sumRun) maps(n *simNode) []replication.Map {
	i := n.id - 1
	_, err := os.Stat(n.state)
	if r.targets[i] == nil || err != nil {
		t := replication.NewCounterTarget(r.kernels[i], r.kernels[i], 4, 8*counterWords, 1, n.id, r.opts.Origins, n.Now)
		if r.targets[i] != nil {
			r.s.tracef("node %d forgets its counters", n.id)
			if err := t.Forget(); err != nil {
				panic(err)
			}
		}
		r.targets[i] = t
	}
	m := replication.Map{ID: mapID, Desc: wire.Descriptor{Name: "counters", Type: uint32(ebpf.Hash), KeySize: 4,
		ValueSize: 8 * counterWords, MaxEntries: maxEntries}}
	return []replication.Map{replication.CounterMap(m, r.targets[i], r.opts)}
}

// diff says how the nodes' counters differ, nil if they do not.
func (r *sumRun) diff() error {
	for i, k := range r.kernels[1:] {
		if d := r.kernels[0].diff(k); d != "" {
			return fmt.Errorf("nodes 1 and %d differ: %s", i+2, d)
		}
	}
	return nil
}

// checkEnd checks node 1's counts (the others hold the same) against the
// increments made.
func (r *sumRun) checkEnd() {
	exact := !r.deleted && !r.s.sc.crashes()
	k := r.kernels[0]
	for _, key := range slices.Sorted(maps.Keys(r.counted)) {
		want := r.counted[key]
		got := k.entries[key]
		for i := range want {
			var g uint64
			if got != nil {
				g = got[i]
			}
			if exact && g != want[i] || g > want[i] {
				r.s.fail("key %x counts %v, of %v counted by the datapaths (exact: %v)", key, got, want, exact)
				return
			}
		}
	}
}

// memCounters is a kernel map of counters in memory: the datapath's
// increments and deletes, and what a [replication.CounterTarget] reads
// and adds. Its values are counterWords words.
type memCounters struct {
	entries map[string][]uint64
}

func (m *memCounters) increment(key []byte, w [counterWords]uint64) {
	v := m.entries[string(key)]
	if v == nil {
		v = make([]uint64, counterWords)
		m.entries[string(key)] = v
	}
	for i := range w {
		v[i] += w[i]
	}
}

func (m *memCounters) delete(key []byte) { delete(m.entries, string(key)) }

// Dump reads the map in key order, a batch at a time.
func (m *memCounters) Dump(keys, values []byte, fn func(keys, values []byte) error) error {
	n, vs := len(keys)/4, 8*counterWords
	i := 0
	for _, k := range slices.Sorted(maps.Keys(m.entries)) {
		copy(keys[4*i:], k)
		for w, x := range m.entries[k] {
			binary.NativeEndian.PutUint64(values[vs*i+8*w:], x)
		}
		if i++; i == n {
			if err := fn(keys[:4*i], values[:vs*i]); err != nil {
				return err
			}
			i = 0
		}
	}
	if i > 0 {
		return fn(keys[:4*i], values[:vs*i])
	}
	return nil
}

func (m *memCounters) Lookup(key, value []byte) (bool, error) {
	v, ok := m.entries[string(key)]
	for w, x := range v {
		binary.NativeEndian.PutUint64(value[8*w:], x)
	}
	return ok, nil
}

func (m *memCounters) DeleteBatch(keys []byte) (int, error) {
	missing := 0
	for o := 0; o+4 <= len(keys); o += 4 {
		if _, ok := m.entries[string(keys[o:o+4])]; !ok {
			missing++
		}
		delete(m.entries, string(keys[o:o+4]))
	}
	return missing, nil
}

// UpdateBatch writes values: the zeros a reset writes into an array.
func (m *memCounters) UpdateBatch(keys, values []byte) error {
	for o := 0; 4*o < len(keys); o++ {
		v := make([]uint64, counterWords)
		for i := range v {
			v[i] = binary.NativeEndian.Uint64(values[8*(o*counterWords+i):])
		}
		m.entries[string(keys[4*o:4*o+4])] = v
	}
	return nil
}

// Add adds each delta vector to its key's counters, creating the key: as
// the kernel program does, but the datapath of a stepped node never runs
// at the same moment.
func (m *memCounters) Add(keys, deltas []byte) (int, error) {
	for o := 0; 4*o < len(keys); o++ {
		var w [counterWords]uint64
		for i := range w {
			w[i] = binary.NativeEndian.Uint64(deltas[8*(o*counterWords+i):])
		}
		m.increment(keys[4*o:4*o+4], w)
	}
	return 0, nil
}

// diff describes the first key, in key order, that m and o hold
// differently; "" if none.
func (m *memCounters) diff(o *memCounters) string {
	keys := slices.Concat(slices.Collect(maps.Keys(m.entries)), slices.Collect(maps.Keys(o.entries)))
	slices.Sort(keys)
	zero := make([]uint64, counterWords) // a key not held counts zero
	or := func(v []uint64) []uint64 {
		if v == nil {
			return zero
		}
		return v
	}
	for _, k := range slices.Compact(keys) {
		if !slices.Equal(or(m.entries[k]), or(o.entries[k])) {
			return fmt.Sprintf("key %x: %v and %v", k, m.entries[k], o.entries[k])
		}
	}
	return ""
}
