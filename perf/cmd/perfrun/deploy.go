package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
	"github.com/udpmapsync/udpmapsync/perf/grpcsync"
	"github.com/udpmapsync/udpmapsync/perf/report"
	"github.com/udpmapsync/udpmapsync/perf/workload"
)

// mapName is the replicated map's name on every node.
const mapName = "perf"

// deployment is one system running on a fresh cluster of nodes, each with
// an empty map.
type deployment struct {
	system string
	dir    string // the run's files: logs, state, the latency samples with --keep
	c      *netnstest.Cluster
	// pids[i] is the replicator on node i; for udpmapsync the cluster's
	// daemons, for the baselines procs. 0 for a daemon not started yet.
	pids  []int
	procs []*proc
}

// proc is a baseline replicator process.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// setup is what a run arranges besides its system and workload.
type setup struct {
	// extra are added to udpmapsync's command line.
	extra []string
	// observe times every change's arrival on the peers (latency runs).
	observe bool
	// loss is the percentage of datagrams to udpmapsync's port that node2
	// drops at random as they arrive (netnstest's DropDatagrams); 0: none.
	loss int
	// join is when node2's daemon starts.
	join join
}

// join is when node2's daemon starts, relative to the workload.
type join int

const (
	// joinFirst starts it with the others, before the workload.
	joinFirst join = iota
	// joinWithWrites starts it as the writer starts: it joins under load.
	joinWithWrites
	// joinAfterWrites starts it once node1 holds the whole workload and
	// its daemon is idle: a late join, timed from the start.
	joinAfterWrites
)

func (j join) String() string {
	return [...]string{joinFirst: "first", joinWithWrites: "with the writes", joinAfterWrites: "after the writes"}[j]
}

// deploy builds a cluster of nodes with the map shaped by prof and starts
// system on every node, but on node2 when s says it joins later.
func deploy(ctx context.Context, f *Flags, system string, nodes int, prof workload.Profile, maxEntries uint32, s setup) (_ *deployment, err error) {
	dir, err := os.MkdirTemp(f.Work, fmt.Sprintf("%s-%dn-%s-", slug(system), nodes, slug(prof.Name)))
	if err != nil {
		return nil, err
	}
	cfg := netnstest.ClusterConfig{
		Nodes: nodes,
		Maps:  []netnstest.MapSpec{{Name: mapName, Type: ebpf.Hash, KeySize: uint32(prof.KeySize), ValueSize: uint32(prof.ValueSize), MaxEntries: maxEntries}},
		Dir:   dir,
	}
	if s.join != joinFirst {
		cfg.Later = []int{1}
	}
	if report.IsUDPMapSync(system) {
		args := append([]string{"--announce-interval", "200ms"}, s.extra...)
		if system == report.UDPMapSyncSealed {
			key, err := writeKeyFile(dir)
			if err != nil {
				return nil, err
			}
			args = append(args, "--key-file", key)
		}
		// A joiner is ready only once it holds its peer's entries, which
		// under loss may take long.
		// The plain daemon is measured as it runs on a trusted link; the
		// harness would give it a key otherwise.
		cfg.Daemon = netnstest.DaemonConfig{Binary: f.Daemon, Args: args, ReadyTimeout: f.Timeout,
			InsecureNoKey: system == report.UDPMapSync}
		if f.CPUProfile != "" {
			cfg.NodeArgs = make(map[int][]string)
			for i := range nodes {
				cfg.NodeArgs[i] = []string{"--cpuprofile", filepath.Join(f.CPUProfile, fmt.Sprintf("%s-node%d.pprof", filepath.Base(dir), i+1))}
			}
		}
	}
	c, err := netnstest.NewCluster(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("deploy %s on %d nodes: %w", system, nodes, err)
	}
	d := &deployment{system: system, dir: dir, c: c}
	defer func() {
		if err != nil {
			d.close()
		}
	}()
	if s.loss > 0 {
		// Removed with node2's namespace.
		if _, err := c.Topology.Nodes[1].DropDatagrams(ctx, s.loss); err != nil {
			return nil, err
		}
	}
	if report.IsUDPMapSync(system) {
		for _, dm := range c.Daemons {
			pid := 0 // not started yet
			if dm != nil {
				pid = dm.Pid()
			}
			d.pids = append(d.pids, pid)
		}
		if err := d.checkSealing(); err != nil {
			return nil, fmt.Errorf("%s on %d nodes: %w", system, nodes, err)
		}
		return d, nil
	}
	mode := grpcsync.Stream
	if system == report.GRPCUnary {
		mode = grpcsync.Unary
	}
	for i, n := range c.Topology.Nodes {
		var peers []string
		for _, o := range c.Topology.Nodes {
			if o != n {
				peers = append(peers, o.Addr.String())
			}
		}
		args := []string{"--mode", string(mode), "--map", c.PinPath(i, mapName), "--peers", strings.Join(peers, ","),
			"--ring-size", strconv.Itoa(f.RingSize), "--ready-file", filepath.Join(dir, n.Name+".ready")}
		p, err := startProc(n, f.GRPCSync, args, filepath.Join(dir, n.Name+".log"))
		if err != nil {
			return nil, err
		}
		d.procs = append(d.procs, p)
		d.pids = append(d.pids, p.cmd.Process.Pid)
	}
	for i, p := range d.procs {
		if err := p.waitReady(filepath.Join(dir, c.Topology.Nodes[i].Name+".ready"), 30*time.Second); err != nil {
			return nil, fmt.Errorf("grpcsync on %s: %w", c.Topology.Nodes[i].Name, err)
		}
	}
	return d, nil
}

// writeKeyFile writes a fresh random key for --key-file into dir, readable
// by its owner alone as the daemon requires, and returns its path.
func writeKeyFile(dir string) (string, error) {
	key := make([]byte, 32)
	rand.Read(key) // never fails (crypto/rand)
	path := filepath.Join(dir, "sync.key")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("key file: %w", err)
	}
	// WriteFile's mode is subject to the umask, which can only narrow it;
	// say it outright all the same.
	if err := os.Chmod(path, 0o600); err != nil {
		return "", fmt.Errorf("key file: %w", err)
	}
	return path, nil
}

// slug turns a system's or profile's name into part of a file name:
// "udpmapsync (sealed)" is udpmapsync-sealed, "16 B / 64 B" 16B-64B.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9':
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
			dash = false
		case r != ' ':
			dash = true
		}
	}
	return b.String()
}

func startProc(n *netnstest.Node, bin string, args []string, logPath string) (*proc, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := n.Command(context.Background(), bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s on %s: %w", bin, n.Name, err)
	}
	p := &proc{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) waitReady(file string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(file); err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("exited before it was ready: %v; see %s", p.err, p.log)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("not ready after %v; see %s", timeout, p.log)
}

func (p *proc) stop() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		return errors.New("killed after 5 s")
	}
}

// close stops the replicators and removes the cluster.
func (d *deployment) close() error {
	var errs []error
	for _, p := range d.procs {
		errs = append(errs, p.stop())
	}
	return errors.Join(append(errs, d.c.Close())...)
}

// start starts the daemon of node i that deploy left for later.
func (d *deployment) start(i int) error {
	if err := d.c.Start(i); err != nil {
		return err
	}
	d.pids[i] = d.c.Daemons[i].Pid()
	return nil
}

// daemonStats reads the last "stats" line of udpmapsync's log on node i,
// which the daemon writes when it stops.
func (d *deployment) daemonStats(i int) (map[string]uint64, error) {
	if !report.IsUDPMapSync(d.system) {
		return nil, nil
	}
	fields, err := d.logLine(i, "stats")
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64)
	for k, v := range fields {
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			out[k] = n
		}
	}
	return out, nil
}

// logLine returns the fields (key=value) of the last line of udpmapsync's
// log on node i whose message starts with msg.
func (d *deployment) logLine(i int, msg string) (map[string]string, error) {
	f, err := os.Open(d.c.Daemons[i].LogFile)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "msg="+msg) || strings.Contains(sc.Text(), `msg="`+msg) {
			last = sc.Text()
		}
	}
	if last == "" {
		return nil, fmt.Errorf("no %q line in %s", msg, d.c.Daemons[i].LogFile)
	}
	return logFields(last), nil
}

// logFields parses a line of slog's text format: key=value pairs, a value
// with spaces or quotes quoted as Go does.
func logFields(line string) map[string]string {
	out := make(map[string]string)
	for line != "" {
		k, rest, ok := strings.Cut(strings.TrimLeft(line, " "), "=")
		if !ok {
			break
		}
		v, after, _ := strings.Cut(rest, " ")
		if strings.HasPrefix(rest, `"`) {
			if q, err := strconv.QuotedPrefix(rest); err == nil {
				v, _ = strconv.Unquote(q)
				after = rest[len(q):]
			}
		}
		out[k] = v
		line = after
	}
	return out
}
