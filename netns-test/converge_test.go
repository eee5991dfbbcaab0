package netnstest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

var seedFlag = flag.Uint64("seed", 0, "seed of TestConverge's workloads; 0 picks one (the test logs it)")

// daemon is the udpmapsync binary the tests run, built once by TestMain.
var daemon struct {
	path string
	err  error
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	// UDPMAPSYNC_BIN lets a prebuilt daemon be tested where there is no Go
	// toolchain (a VM) or a build is already at hand.
	if p := os.Getenv("UDPMAPSYNC_BIN"); p != "" {
		daemon.path = p
	} else if Requirements() == nil {
		dir, err := os.MkdirTemp("", "udpmapsync-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "build daemon:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		daemon.path = filepath.Join(dir, "udpmapsync")
		out, err := exec.Command("go", "build", "-o", daemon.path, "github.com/udpmapsync/udpmapsync/cmd/udpmapsync").CombinedOutput()
		if err != nil {
			daemon.err = fmt.Errorf("go build ./cmd/udpmapsync: %v\n%s", err, out)
		}
	}
	return m.Run()
}

// startCluster builds cfg's cluster, with the daemon TestMain built unless
// cfg names another Daemon.Binary and in a test directory unless cfg
// names a Dir, and closes it when the test ends, after showing the
// daemons' logs if the test failed.
func startCluster(t *testing.T, cfg ClusterConfig) *Cluster {
	t.Helper()
	requireHarness(t)
	if daemon.err != nil {
		t.Fatal(daemon.err)
	}
	if cfg.Daemon.Binary == "" {
		cfg.Daemon.Binary = daemon.path
	}
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	c, err := NewCluster(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs(40))
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// TestConverge runs three daemons on three nodes, writes thousands of
// random updates and deletes with bpftool on node1 and, at the same time,
// on node2 (other keys, other array slots), and waits until every map on
// every node holds exactly what was written.
func TestConverge(t *testing.T) {
	begin := time.Now()
	c := startCluster(t, ClusterConfig{Nodes: 3, Maps: DefaultMaps()})
	t.Logf("3 nodes with ready daemons in %v", time.Since(begin).Round(time.Millisecond))
	ctx := t.Context()

	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("workload seed %d (rerun with -seed %d)", seed, seed)
	// node2 writes the plain hash, the LRU and the array.
	node2Maps := slices.DeleteFunc(slices.Clone(c.Maps), func(m MapSpec) bool { return m.Name == "odd" })
	writers := []struct {
		node, changes, batch int
		cfg                  WorkloadConfig
	}{
		{0, 8000, 250, WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 2, Keys: 1500, DeleteRatio: 0.25, Seed: seed}},
		{1, 3000, 100, WorkloadConfig{Maps: node2Maps, Writer: 2, Writers: 2, Keys: 500, DeleteRatio: 0.25, Seed: seed}},
	}
	if testing.Short() {
		// make vmtest runs this in a VM with emulated CPUs (TCG) to prove
		// the fentry capture path end to end; a tenth of the writes does.
		for i := range writers {
			writers[i].changes /= 10
		}
	}
	workloads := make([]*Workload, len(writers))
	errs := make([]error, len(writers))
	start := time.Now()
	var wg sync.WaitGroup
	for i, wr := range writers {
		w, err := NewWorkload(wr.cfg)
		if err != nil {
			t.Fatal(err)
		}
		workloads[i] = w
		wg.Go(func() {
			for left := wr.changes; left > 0 && errs[i] == nil; left -= wr.batch {
				batch := make([]Change, min(left, wr.batch))
				for k := range batch {
					batch[k] = w.Next()
				}
				errs[i] = c.Write(ctx, wr.node, batch)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	wrote := time.Since(start)

	want := Union(workloads[0].Want(), workloads[1].Want())
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	s, err := c.WaitConverged(wctx, want, 100*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d+%d changes in %v; %s %v after the last write",
		writers[0].changes, writers[1].changes, wrote.Round(time.Millisecond), s, (time.Since(start) - wrote).Round(time.Millisecond))

	stopping := time.Now()
	if err := c.Stop(StopGrace); err != nil {
		t.Error(err)
	}
	t.Logf("daemons stopped in %v", time.Since(stopping).Round(time.Millisecond))
}
