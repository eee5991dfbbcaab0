// Command demo shows udpmapsync at work on one machine (`make demo`): three
// nodes in network namespaces on one bridge, a daemon on each, the same
// four maps on each, and one key: the daemons seal their traffic, as they
// do by default. It writes changes on node1 with bpftool, shows how
// many entries every node holds while they replicate, and reports when all
// maps are identical. It needs root, bpftool and nsenter.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
)

// Flags are the demo's command line.
type Flags struct {
	Daemon  string
	Changes int
	Timeout time.Duration
}

func main() {
	var f Flags
	fs := pflag.NewFlagSet("demo", pflag.ExitOnError)
	fs.StringVar(&f.Daemon, "daemon", "bin/udpmapsync", "udpmapsync binary to run on every node (make build)")
	fs.IntVar(&f.Changes, "changes", 20000, "changes to write on node1 (mostly updates, some deletes)")
	fs.DurationVar(&f.Timeout, "timeout", time.Minute, "give up when the nodes have not converged this long after the last write")
	fs.Parse(os.Args[1:])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, f); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

const (
	nodes     = 3
	batchSize = 1000 // changes per bpftool batch run
)

func run(ctx context.Context, f Flags) (err error) {
	if err := netnstest.Requirements(); err != nil {
		return err
	}
	if f.Changes < 1 {
		return fmt.Errorf("--changes %d: want at least 1", f.Changes)
	}
	bin, err := filepath.Abs(f.Daemon)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		return fmt.Errorf("--daemon %s: %w; build it with make build", f.Daemon, err)
	}
	dir, err := os.MkdirTemp("", "udpmapsync-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	key := filepath.Join(dir, netnstest.KeyFileName)
	if err := netnstest.EnsureKeyFile(key); err != nil {
		return err
	}
	fmt.Printf("starting %d nodes, each with a daemon and the maps %s, sealed with the key in %s\n", nodes, mapNames(), key)
	c, err := netnstest.NewCluster(ctx, netnstest.ClusterConfig{
		Nodes:  nodes,
		Maps:   netnstest.DefaultMaps(),
		Daemon: netnstest.DaemonConfig{Binary: bin, KeyFile: key},
		Dir:    dir,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, c.Logs(15))
		}
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", cerr))
		}
	}()
	fmt.Printf("daemons ready in namespaces ums-%[1]s-node1..%[2]d (bridge in ums-%[1]s-sw)\n", c.Topology.Suffix, nodes)

	w, err := netnstest.NewWorkload(netnstest.WorkloadConfig{
		Maps:    c.Maps,
		Writer:  1,
		Writers: 1,
		// About two writes per key; capped so no hash gets over half full.
		Keys:        max(1, min(f.Changes/(2*len(c.Maps)), netnstest.KeyRoom(c.Maps, 1))),
		DeleteRatio: 0.2,
		Seed:        uint64(time.Now().UnixNano()),
	})
	if err != nil {
		return err
	}

	fmt.Printf("writing %d changes on node1 with bpftool batch\n", f.Changes)
	start := time.Now()
	var expected atomic.Int64
	written := make(chan error, 1)
	go func() { written <- write(ctx, c, w, f.Changes, &expected) }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for writing := true; writing; {
		select {
		case err := <-written:
			if err != nil {
				return interrupted(ctx, err)
			}
			writing = false
		case <-tick.C:
			held, err := heldCounts(c)
			if err != nil {
				return err
			}
			progress(held, int(expected.Load()), time.Since(start))
		}
	}
	wrote := time.Since(start)

	wctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	var last time.Time
	s, err := c.WaitConverged(wctx, w.Want(), 25*time.Millisecond, func(s *netnstest.Status) {
		if time.Since(last) >= 100*time.Millisecond || s.Converged() {
			last = time.Now()
			held := make([]int, len(s.Diffs))
			for i, row := range s.Diffs {
				for _, d := range row {
					held[i] += d.Have
				}
			}
			_, want := s.Held(0)
			progress(held, want, time.Since(start))
		}
	})
	fmt.Println()
	if ctx.Err() != nil {
		return interrupted(ctx, err)
	}
	took := time.Since(start)
	if err == nil {
		fmt.Printf("wrote %d changes in %d ms; all nodes converged %d ms after the first write (%d ms after the last): %.0f changes/s end to end\n",
			f.Changes, wrote.Milliseconds(), took.Milliseconds(), (took - wrote).Milliseconds(), float64(f.Changes)/took.Seconds())
	}
	if s != nil {
		for j, name := range s.Maps {
			identical := "yes"
			for i := range s.Diffs {
				if !s.Diffs[i][j].Equal() {
					identical = "no"
				}
			}
			fmt.Printf("  %-6s %6d entries  identical on all nodes: %s\n", name, s.Diffs[0][j].Want, identical)
		}
	}
	if err != nil {
		return err
	}
	if err := c.Stop(netnstest.StopGrace); err != nil {
		return err
	}
	return nil
}

// write makes n changes on node1 in bpftool batches, publishing in
// expected how many entries the maps should hold after each batch.
func write(ctx context.Context, c *netnstest.Cluster, w *netnstest.Workload, n int, expected *atomic.Int64) error {
	for left := n; left > 0; left -= batchSize {
		batch := make([]netnstest.Change, min(left, batchSize))
		for i := range batch {
			batch[i] = w.Next()
		}
		if err := c.Write(ctx, 0, batch); err != nil {
			return err
		}
		total := 0
		for _, contents := range w.Want() {
			total += len(contents)
		}
		expected.Store(int64(total))
	}
	return nil
}

// heldCounts counts the entries every node holds.
func heldCounts(c *netnstest.Cluster) ([]int, error) {
	held := make([]int, len(c.Topology.Nodes))
	for i := range held {
		contents, err := c.Read(i)
		if err != nil {
			return nil, err
		}
		for _, m := range contents {
			held[i] += len(m)
		}
	}
	return held, nil
}

// progress redraws the one progress line.
func progress(held []int, expected int, elapsed time.Duration) {
	var b strings.Builder
	b.WriteString("\r")
	for i, h := range held {
		fmt.Fprintf(&b, "node%d %6d/%-6d  ", i+1, h, expected)
	}
	fmt.Fprintf(&b, "%6.2fs ", elapsed.Seconds())
	fmt.Print(b.String())
}

// interrupted says that the user stopped the demo, rather than the error
// that followed from it.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		fmt.Println()
		return errors.New("interrupted; cleaned up")
	}
	return err
}

func mapNames() string {
	var names []string
	for _, m := range netnstest.DefaultMaps() {
		names = append(names, m.Name)
	}
	return strings.Join(names, ", ")
}
