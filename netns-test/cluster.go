package netnstest

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// Requirements says why the harness cannot run here, or nil if it can:
// it needs root (namespaces, mounts, BPF), bpftool and nsenter.
func Requirements() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: it creates network namespaces, mounts bpffs and creates BPF maps")
	}
	for _, tool := range []struct{ name, pkg string }{{"bpftool", "bpftool"}, {"nsenter", "util-linux"}} {
		if _, err := exec.LookPath(tool.name); err != nil {
			return fmt.Errorf("needs %s in PATH: apt-get install %s (or make deps)", tool.name, tool.pkg)
		}
	}
	return nil
}

// ClusterConfig shapes a [Cluster].
type ClusterConfig struct {
	// Nodes is how many nodes to create.
	Nodes int
	// Maps are created, empty, on every node.
	Maps []MapSpec
	// Daemon is how to start the daemon on every node; with an empty
	// Binary no daemon is started, to test the harness itself. The cluster
	// fills in Maps, LogFile and ReadyFile.
	Daemon DaemonConfig
	// NodeArgs[i] are appended to Daemon.Args for the daemon of node i (an
	// index into Topology.Nodes) alone.
	NodeArgs map[int][]string
	// Later are the nodes whose daemon [NewCluster] does not start: a test
	// starts them with [Cluster.Start], to join late.
	Later []int
	// Dir receives the daemons' logs (NODE.log) and ready files.
	Dir string
}

// Cluster is a [Topology] whose nodes each have their own copy of the same
// maps, pinned on a private [BPFFS], and a daemon replicating them.
type Cluster struct {
	Topology *Topology
	FS       *BPFFS
	Maps     []MapSpec
	// Daemons[i] runs on Topology.Nodes[i]; empty without a daemon, nil
	// for a node whose daemon has not been started yet.
	Daemons []*Daemon

	cfg    ClusterConfig
	starts []int         // [node] daemons started so far, to name their files
	open   [][]*ebpf.Map // [node][map], for reading
}

// NewCluster builds the topology, creates the maps with bpftool and starts
// the daemons (but those of [ClusterConfig.Later]), returning once every
// daemon started is ready. On error nothing is left behind.
func NewCluster(ctx context.Context, cfg ClusterConfig) (_ *Cluster, err error) {
	c := &Cluster{Maps: cfg.Maps, cfg: cfg}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	if c.Topology, err = NewTopology(cfg.Nodes); err != nil {
		return nil, err
	}
	if c.FS, err = MountBPFFS(); err != nil {
		return nil, err
	}
	for i := range c.Topology.Nodes {
		var open []*ebpf.Map
		for _, spec := range cfg.Maps {
			path := c.PinPath(i, spec.Name)
			if err := CreateMap(ctx, path, spec); err != nil {
				return nil, err
			}
			m, err := ebpf.LoadPinnedMap(path, nil)
			if err != nil {
				return nil, fmt.Errorf("open map %s: %w", path, err)
			}
			open = append(open, m)
		}
		c.open = append(c.open, open)
	}
	if cfg.Daemon.Binary == "" {
		return c, nil
	}

	// One after the other, a start takes about as long as attaching the
	// capture: start them together.
	c.Daemons = make([]*Daemon, len(c.Topology.Nodes))
	c.starts = make([]int, len(c.Topology.Nodes))
	errs := make([]error, len(c.Topology.Nodes))
	var wg sync.WaitGroup
	for i := range c.Topology.Nodes {
		if !slices.Contains(cfg.Later, i) {
			wg.Go(func() { errs[i] = c.Start(i) })
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// Start starts the daemon of node i (an index into Topology.Nodes) and
// returns once it is ready: a daemon left for later
// ([ClusterConfig.Later]), or one that was stopped or killed, which then
// restarts on the maps as they are. Every start has a log and a ready
// file of its own (node3.log, then node3.2.log, ...).
func (c *Cluster) Start(i int) error {
	n := c.Topology.Nodes[i]
	if d := c.Daemons[i]; d != nil {
		if exited, _ := d.Exited(); !exited {
			return fmt.Errorf("start daemon on %s: it is running", n.Name)
		}
	}
	c.starts[i]++
	name := n.Name
	if c.starts[i] > 1 {
		name = fmt.Sprintf("%s.%d", n.Name, c.starts[i])
	}
	dc := c.cfg.Daemon
	dc.Maps = nil
	for _, spec := range c.Maps {
		m, opts := c.PinPath(i, spec.Name), spec.Options
		if o, ok := spec.NodeOptions[i]; ok {
			opts = o
		}
		if opts != "" {
			m += "," + opts
		}
		dc.Maps = append(dc.Maps, m)
	}
	dc.Args = append(slices.Clone(dc.Args), c.cfg.NodeArgs[i]...)
	dc.LogFile = filepath.Join(c.cfg.Dir, name+".log")
	dc.ReadyFile = filepath.Join(c.cfg.Dir, name+".ready")
	d, err := StartDaemon(n, dc)
	if err != nil {
		return err
	}
	c.Daemons[i] = d
	return nil
}

// PinPath is where map name of node i (an index into Topology.Nodes) is
// pinned.
func (c *Cluster) PinPath(i int, name string) string {
	return filepath.Join(c.FS.Dir, c.Topology.Nodes[i].Name, name)
}

// Write applies changes to the maps of node i with one `bpftool batch`
// run inside the node's namespace, so the writes are plain bpf(2) calls
// of another process, as an operator's would be.
func (c *Cluster) Write(ctx context.Context, i int, changes []Change) error {
	f, err := os.CreateTemp("", "udpmapsync-batch-")
	if err != nil {
		return fmt.Errorf("write batch: %w", err)
	}
	defer os.Remove(f.Name())
	w := bufio.NewWriter(f)
	for _, ch := range changes {
		path := c.PinPath(i, ch.Map)
		if ch.Delete {
			fmt.Fprintf(w, "map delete pinned %s key hex %s\n", path, spacedHex(ch.Key))
		} else {
			fmt.Fprintf(w, "map update pinned %s key hex %s value hex %s\n", path, spacedHex(ch.Key), spacedHex(ch.Value))
		}
	}
	err = errors.Join(w.Flush(), f.Close())
	if err != nil {
		return fmt.Errorf("write batch %s: %w", f.Name(), err)
	}
	node := c.Topology.Nodes[i]
	if _, err := bpftool(node.Command(ctx, "bpftool", "batch", "file", f.Name())); err != nil {
		return fmt.Errorf("%s: %w", node.Name, err)
	}
	return nil
}

// spacedHex formats b as bpftool reads bytes: "0a 1b 2c".
func spacedHex(b []byte) string {
	var s strings.Builder
	for i, c := range b {
		if i > 0 {
			s.WriteByte(' ')
		}
		s.WriteString(hex.EncodeToString([]byte{c}))
	}
	return s.String()
}

// Read returns the contents of node i's maps, by map name.
func (c *Cluster) Read(i int) (map[string]Contents, error) {
	out := make(map[string]Contents)
	for j, spec := range c.Maps {
		got, err := ReadContents(c.open[i][j])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", c.PinPath(i, spec.Name), err)
		}
		out[spec.Name] = got
	}
	return out, nil
}

// Status is how every node's maps compare with the wanted contents.
type Status struct {
	// Nodes and Maps name the rows and columns of Diffs.
	Nodes, Maps []string
	// Diffs[i][j] compares map Maps[j] of node Nodes[i] with what is wanted.
	Diffs [][]Diff
}

// Status compares every node's maps with want (contents by map name; a map
// missing from want is wanted empty). A node whose daemon is yet to be
// started ([ClusterConfig.Later]) is left out.
func (c *Cluster) Status(want map[string]Contents) (*Status, error) {
	s := &Status{}
	for _, spec := range c.Maps {
		s.Maps = append(s.Maps, spec.Name)
	}
	for i, n := range c.Topology.Nodes {
		if len(c.Daemons) > 0 && c.Daemons[i] == nil {
			continue
		}
		have, err := c.Read(i)
		if err != nil {
			return nil, err
		}
		var row []Diff
		for _, spec := range c.Maps {
			row = append(row, Compare(want[spec.Name], have[spec.Name]))
		}
		s.Nodes = append(s.Nodes, n.Name)
		s.Diffs = append(s.Diffs, row)
	}
	return s, nil
}

// Converged reports whether every map of every node holds what is wanted.
func (s *Status) Converged() bool {
	for _, row := range s.Diffs {
		for _, d := range row {
			if !d.Equal() {
				return false
			}
		}
	}
	return true
}

// Held sums over the maps of node i (an index into Nodes) the entries held
// with the wanted value and the entries wanted.
func (s *Status) Held(i int) (matching, want int) {
	for _, d := range s.Diffs[i] {
		matching += d.Matching()
		want += d.Want
	}
	return matching, want
}

// String has one line per node and map that differs, or says that all
// are identical.
func (s *Status) String() string {
	var b strings.Builder
	for i, row := range s.Diffs {
		for j, d := range row {
			if !d.Equal() {
				fmt.Fprintf(&b, "%s %s: %s\n", s.Nodes[i], s.Maps[j], d)
			}
		}
	}
	if b.Len() == 0 {
		return fmt.Sprintf("all %d maps identical on %d nodes", len(s.Maps), len(s.Nodes))
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// WaitConverged compares the nodes' maps with want every poll until all
// are identical, and returns the last comparison. It gives up when ctx
// ends or a daemon exits. progress, if not nil, sees every comparison.
func (c *Cluster) WaitConverged(ctx context.Context, want map[string]Contents, poll time.Duration, progress func(*Status)) (*Status, error) {
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		for _, d := range c.Daemons {
			if d == nil {
				continue
			}
			if exited, err := d.Exited(); exited {
				return nil, fmt.Errorf("wait for convergence: daemon on %s exited: %v", d.Node.Name, err)
			}
		}
		s, err := c.Status(want)
		if err != nil {
			return nil, fmt.Errorf("wait for convergence: %w", err)
		}
		if progress != nil {
			progress(s)
		}
		if s.Converged() {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("wait for convergence: %w; still differing:\n%s", context.Cause(ctx), s)
		case <-t.C:
		}
	}
}

// Logs returns the last n lines of every daemon's log.
func (c *Cluster) Logs(n int) string {
	var parts []string
	for _, d := range c.Daemons {
		if d != nil {
			parts = append(parts, d.Node.Name+" "+d.Tail(n))
		}
	}
	return strings.Join(parts, "\n")
}

// Stop stops every daemon with SIGTERM (killing those that do not exit
// within grace) and reports the ones that did not exit cleanly.
func (c *Cluster) Stop(grace time.Duration) error {
	errs := make([]error, len(c.Daemons))
	var wg sync.WaitGroup
	for i, d := range c.Daemons {
		if d != nil {
			wg.Go(func() { errs[i] = d.Stop(grace) })
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close stops the daemons, unpins the maps and removes the namespaces. It
// returns what went wrong, daemons that did not exit cleanly included.
func (c *Cluster) Close() error {
	errs := []error{c.Stop(StopGrace)}
	for _, open := range c.open {
		for _, m := range open {
			errs = append(errs, m.Close())
		}
	}
	c.open = nil
	if c.FS != nil {
		errs = append(errs, c.FS.Close())
		c.FS = nil
	}
	if c.Topology != nil {
		errs = append(errs, c.Topology.Close())
	}
	return errors.Join(errs...)
}
