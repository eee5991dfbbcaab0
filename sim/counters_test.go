package sim

import (
	"flag"
	"fmt"
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

var sumSeeds = flag.Int("sim.sum-seeds", 300, "how many seeds TestSumSeeds runs")

// TestSumSeeds runs real nodes replicating a merge=sum map per seed, with
// the network's faults, partitions, clean stops and crashes, and checks
// that every node ends with the same counts, exactly the datapaths'
// increments where nothing was deleted and no daemon crashed.
func TestSumSeeds(t *testing.T) {
	n := *sumSeeds
	if testing.Short() {
		n = min(n, 50)
	}
	faults := Cuts | Stops | Crashes
	for seed := *firstSeed; seed < *firstSeed+uint64(n); seed++ {
		var err error
		if *trace {
			err = RunSum(seed, faults, os.Stdout)
		} else {
			err = RunSum(seed, faults, nil)
		}
		if err != nil {
			t.Errorf("seed %d: %v\nreplay: go test ./sim -run '^TestSumSeeds$' -sim.seed=%d -sim.sum-seeds=1 -sim.trace", seed, err, seed)
		}
	}
}

// The same seed replays the same run of counters, datagram for datagram.
func TestSumReplay(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		var a, b traceBuffer
		errA, errB := RunSum(seed, AllFaults, &a), RunSum(seed, AllFaults, &b)
		if fmt.Sprint(errA) != fmt.Sprint(errB) || a.String() != b.String() {
			t.Fatalf("seed %d ran two ways: %d and %d trace bytes, %v and %v", seed, a.Len(), b.Len(), errA, errB)
		}
	}
}
