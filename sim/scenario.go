package sim

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/hlc"
)

// scenario is what one seed draws: the cluster, the faults and the
// workload's shape.
type scenario struct {
	nodes   int
	starts  []time.Duration // when each node's first daemon starts
	offsets []time.Duration // each node's clock offset, within hlc.MaxSkew of every other's

	lossPermille, dupPermille int
	// upstreamPermille: a datagram a node sends is lost for every
	// receiver, as on the sender's own link.
	upstreamPermille int
	// unicast: the nodes send to each peer (--peers), not to a group.
	unicast       bool
	delay, jitter time.Duration // a datagram's delay: delay plus up to jitter
	ringBytes     int           // each capture ring's size

	cuts  []cut
	stops []lifecycle // clean stops and crashes, each followed by a restart
	// lru: the replicated map is an LRU hash map of maxEntries, fewer
	// than the keys written, so it evicts.
	lru        bool
	maxEntries int
	// array: the replicated map is an array of maxEntries, a few more
	// than the keys written, whose entries are never deleted: the
	// workload's deletes zero them, as a BPF program resets an entry.
	array bool
	// scan is the map's scan period (its vanished keys deleted on the
	// peers), 0 if it is not scanned; inPlace, how many values the
	// datapath changes in place, unseen by the capture, for the scans to
	// find.
	scan    time.Duration
	inPlace int
	writes  int // the workload's bursts of writes
	burst   int // the most writes in one burst
	keys    int // the keys they choose from: few, so nodes write the same ones
	// valueSize is the map's value size: valueSize, or largeValueSize in
	// one run of largeEvery, chosen by the seed, not drawn, so that the
	// other draws of a seed stay what they were.
	valueSize int
	// writeUntil is when the workload stops; heal when the faults end.
	writeUntil, heal time.Duration
	// busy is how long after a change is captured the sender wakes to
	// read it on a busy machine, where the daemon waits for a processor
	// (0: at once, after wakeLatency): meanwhile its maps change under
	// what the capture holds.
	busy time.Duration
	// cutNodes is how many nodes cuts and stops may touch: the first.
	cutNodes int
	// lateWrites are writes drawn until lateUntil, after writeUntil: in
	// a run with a long partition, so that writes go on through it and
	// its heal.
	lateWrites int
	lateUntil  time.Duration
}

// silence is how long a peer not heard is remembered (peerSilence
// announce intervals, at least 10 s: replication/peers.go), and a bit.
const silence = 10*time.Second + 500*time.Millisecond

// cut separates the nodes in side (a bit per node) from the others from
// one time to another: both ways, or only from side to the others.
type cut struct {
	side     uint32
	oneWay   bool
	from, to time.Duration
}

// lifecycle stops a node, cleanly or not, and restarts it later.
type lifecycle struct {
	node          int
	crash         bool
	stop, restart time.Duration
}

// Faults is a set of the faults a run may draw; loss, duplication,
// reordering, delay and clock offsets are always in.
type Faults uint8

// The faults a run may be given.
const (
	Cuts      Faults = 1 << iota // partitions and one-way cuts
	Overflows                    // capture rings a few records long
	Stops                        // clean stops with state files, and restarts
	Crashes                      // crashes without state files, and restarts
	Evictions                    // an LRU map that evicts
	InPlace                      // values changed in place, which no capture sees, and the scans that find them
	Arrays                       // an array map, whose entries are never deleted: the datapath zeroes them

	AllFaults = Cuts | Overflows | Stops | Crashes | Evictions | InPlace | Arrays
	// DefaultFaults are those every run of go test ./sim draws from,
	// besides the network's (loss, duplication, reordering, delay) and the
	// clocks' offsets: all of them. A fault left out of it must say here
	// which seeds still fail under it, and why.
	DefaultFaults = AllFaults
)

// drawScenario draws a run's scenario from r. Every draw is made whatever
// faults leaves out, so a seed keeps its network and workload.
func drawScenario(r *rand.Rand, faults Faults) scenario {
	sc := scenario{nodes: 2 + r.IntN(3)}
	skew := hlc.MaxSkew / 2 // any two nodes within MaxSkew
	if r.IntN(2) == 0 {
		skew = 50 * time.Millisecond
	}
	for range sc.nodes {
		sc.starts = append(sc.starts, time.Duration(r.IntN(600))*time.Millisecond)
		sc.offsets = append(sc.offsets, time.Duration(r.Int64N(int64(skew)))-skew/2)
	}
	sc.lossPermille = []int{0, 10, 50, 200}[r.IntN(4)]
	sc.dupPermille = []int{0, 10, 100}[r.IntN(3)]
	sc.delay = time.Duration(50+r.IntN(500)) * time.Microsecond
	sc.jitter = []time.Duration{0, 200 * time.Microsecond, 5 * time.Millisecond}[r.IntN(3)]
	sc.ringBytes = []int{1 << 20, 1 << 20, 200}[r.IntN(3)] // a few records: overflows
	sc.writes = 10 + r.IntN(100)
	sc.burst = []int{1, 4, 24}[r.IntN(3)]
	sc.keys = 4 + r.IntN(40)
	sc.writeUntil = time.Duration(1500+r.IntN(2500)) * time.Millisecond
	sc.heal = sc.writeUntil + 500*time.Millisecond
	for range r.IntN(3) {
		from := time.Duration(r.Int64N(int64(sc.writeUntil)))
		sc.cuts = append(sc.cuts, cut{side: 1 + uint32(r.IntN(1<<sc.nodes-1)), oneWay: r.IntN(3) == 0,
			from: from, to: from + time.Duration(r.IntN(3000))*time.Millisecond})
	}
	for range r.IntN(3) {
		stop := time.Duration(800 + r.Int64N(int64(sc.writeUntil)))
		sc.stops = append(sc.stops, lifecycle{node: r.IntN(sc.nodes), crash: r.IntN(3) == 0,
			stop: stop, restart: stop + time.Duration(20+r.IntN(1500))*time.Millisecond})
	}
	sc.lru, sc.maxEntries = r.IntN(4) == 0, maxEntries
	if lruMax := 2 + r.IntN(sc.keys); sc.lru {
		sc.maxEntries = lruMax
	}
	if scan, writes := time.Duration(100+r.IntN(900))*time.Millisecond, 5+r.IntN(40); r.IntN(3) == 0 && !sc.lru {
		sc.scan, sc.inPlace = scan, writes
	}
	if faults&Cuts == 0 {
		sc.cuts = nil
	}
	if faults&Overflows == 0 {
		sc.ringBytes = 1 << 20
	}
	if faults&Stops == 0 {
		sc.stops = slices.DeleteFunc(sc.stops, func(l lifecycle) bool { return !l.crash })
	}
	if faults&Crashes == 0 {
		sc.stops = slices.DeleteFunc(sc.stops, func(l lifecycle) bool { return l.crash })
	}
	if faults&Evictions == 0 {
		sc.lru, sc.maxEntries = false, maxEntries
	}
	if faults&InPlace == 0 {
		sc.scan, sc.inPlace = 0, 0
	}
	sc.cutNodes = sc.nodes // the larger group's nodes drawn below are never cut
	sc.upstreamPermille = []int{0, 0, 20, 100}[r.IntN(4)]
	sc.unicast = r.IntN(4) == 0
	if r.IntN(8) == 0 { // a larger group, whose nodes are neither cut nor stopped
		for range 2 + r.IntN(3) {
			sc.nodes++
			sc.starts = append(sc.starts, time.Duration(r.IntN(600))*time.Millisecond)
			sc.offsets = append(sc.offsets, time.Duration(r.Int64N(int64(skew)))-skew/2)
		}
	}
	for _, l := range sc.stops {
		sc.heal = max(sc.heal, l.restart+100*time.Millisecond)
	}
	for _, c := range sc.cuts {
		sc.heal = max(sc.heal, c.to)
	}
	return sc
}

// drawMore draws into sc what runs were given after the first draws,
// from r, a source of their own: so the draws of drawScenario, and the
// workload's after them, stay what they were for every seed.
func (sc *scenario) drawMore(r *rand.Rand, faults Faults) {
	if array, extra := r.IntN(4) == 0, r.IntN(8); array && !sc.lru && faults&Arrays != 0 {
		sc.array, sc.maxEntries = true, sc.keys+extra
	}
	// A partition longer than the peers' silence period, after which
	// each side has forgotten the other and hears it anew, ready (see
	// "Full resync"), with writes on both sides until after it heals.
	long := cut{side: 1 + uint32(r.IntN(1<<sc.cutNodes-1)), from: writeFrom + time.Duration(r.Int64N(int64(sc.writeUntil-writeFrom)))}
	long.to = long.from + silence + time.Duration(r.IntN(4000))*time.Millisecond
	if r.IntN(8) == 0 && faults&Cuts != 0 {
		sc.cuts = append(sc.cuts, long)
		sc.lateWrites, sc.lateUntil = 5+r.IntN(20), long.to+time.Second
	}
	if busy := time.Duration(1+r.IntN(20)) * time.Millisecond; r.IntN(4) == 0 {
		sc.busy = busy
	}
	sc.heal = max(sc.heal, sc.lateUntil)
}

// mapType is the type of the replicated map.
func (sc *scenario) mapType() ebpf.MapType {
	switch {
	case sc.lru:
		return ebpf.LRUHash
	case sc.array:
		return ebpf.Array
	}
	return ebpf.Hash
}

// crashes reports whether a daemon of the run crashes.
func (sc *scenario) crashes() bool {
	for _, l := range sc.stops {
		if l.crash {
			return true
		}
	}
	return false
}

// scheduleLifecycles schedules the stops and restarts.
func (s *Sim) scheduleLifecycles() {
	for _, l := range s.sc.stops {
		n := s.nodes[l.node]
		s.after(l.stop, func() {
			if l.crash {
				n.crash()
			} else {
				n.beginStop()
			}
		})
		s.after(l.restart, n.start)
	}
}
