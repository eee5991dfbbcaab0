package sim

import (
	"flag"
	"os"
	"testing"
)

var counterSeeds = flag.Int("sim.counter-seeds", 2000, "how many seeds TestCounterSeeds runs")

// TestCounterSeeds runs the model cluster of the sum merge rule per seed,
// with partitions and clean stops, and checks that every node ends with
// the exact total of every key.
func TestCounterSeeds(t *testing.T) {
	n := *counterSeeds
	if testing.Short() {
		n = min(n, 100)
	}
	for seed := *firstSeed; seed < *firstSeed+uint64(n); seed++ {
		var err error
		if *trace {
			err = RunCounters(seed, Cuts|Stops, os.Stdout)
		} else {
			err = RunCounters(seed, Cuts|Stops, nil)
		}
		if err != nil {
			t.Errorf("seed %d: %v\nreplay: go test ./sim -run '^TestCounterSeeds$' -sim.seed=%d -sim.counter-seeds=1 -sim.trace", seed, err, seed)
		}
	}
}

// The oracle finds an applier that adds a contribution whole instead of
// its delta, the double count the per-origin slots exist to prevent.
func TestCounterOracleFindsDoubleCount(t *testing.T) {
	failed := 0
	for seed := uint64(1); seed <= 20; seed++ {
		if runCounters(seed, Cuts|Stops, nil, true) != nil {
			failed++
		}
	}
	if failed < 15 {
		t.Errorf("the oracle found the double count in %d of 20 seeds", failed)
	}
}
