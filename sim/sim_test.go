package sim

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"testing"
)

var (
	seeds     = flag.Int("sim.seeds", 2000, "how many seeds TestSeeds runs")
	firstSeed = flag.Uint64("sim.seed", 1, "the first seed TestSeeds runs")
	trace     = flag.Bool("sim.trace", false, "write every datagram, apply and fault of the runs to stdout")
	// Every fault, by default: see DefaultFaults.
	faults = flag.Uint("sim.faults", uint(DefaultFaults), "the faults runs may draw: 1 cuts (some longer than the peers' silence period), 2 capture overflows, 4 clean stops, 8 crashes, 16 LRU maps that evict, 32 values changed in place and scans, 64 array maps")
)

// TestSeeds runs a cluster per seed and checks every invariant. A
// failure prints the command that replays its seed with a trace.
func TestSeeds(t *testing.T) {
	n := *seeds
	if testing.Short() {
		n = min(n, 100)
	}
	for seed := *firstSeed; seed < *firstSeed+uint64(n); seed++ {
		var err error
		if *trace {
			err = Run(seed, Faults(*faults), os.Stdout)
		} else {
			err = Run(seed, Faults(*faults), nil)
		}
		if err != nil {
			t.Errorf("seed %d: %v\nreplay: go test ./sim -run '^TestSeeds$' -sim.seed=%d -sim.seeds=1 -sim.faults=%d -sim.trace", seed, err, seed, *faults)
		}
	}
}

// The same seed replays the same run: the same trace, datagram for
// datagram.
func TestReplay(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		var a, b traceBuffer
		errA, errB := Run(seed, AllFaults, &a), Run(seed, AllFaults, &b)
		if fmt.Sprint(errA) != fmt.Sprint(errB) || a.String() != b.String() {
			t.Fatalf("seed %d ran two ways: %d and %d trace bytes, %v and %v", seed, a.Len(), b.Len(), errA, errB)
		}
	}
}

type traceBuffer = bytes.Buffer
