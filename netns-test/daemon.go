package netnstest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Where the daemons of a cluster meet.
const (
	Group = "239.1.1.1"
	Port  = 3870
)

// EnvCapture, when set, is the --capture of every daemon whose
// [DaemonConfig] leaves Capture empty: `make vmtest` sets it to fentry so
// the convergence test runs on the fentry backend in a VM whose kernel
// allows it.
const EnvCapture = "UDPMAPSYNC_CAPTURE"

// DaemonConfig is how to start one udpmapsync daemon.
type DaemonConfig struct {
	// Binary is the udpmapsync executable.
	Binary string
	// Maps are the pinned paths passed as --map.
	Maps []string
	// LogFile receives the daemon's stdout and stderr.
	LogFile string
	// ReadyFile is passed as --ready-file; it must not exist yet.
	ReadyFile string
	// Capture is --capture; empty means $UDPMAPSYNC_CAPTURE ([EnvCapture]),
	// else auto.
	Capture string
	// LogLevel is --log-level; empty means info.
	LogLevel string
	// StatsInterval is --stats-interval, the period of the "stats" line
	// [Daemon.Stats] reads; zero means 5 s.
	StatsInterval time.Duration
	// ControlSocket is --control-socket; empty means NAME.sock beside the
	// log file NAME.log, so that daemons of one host do not share the
	// default socket (the second would refuse to start).
	ControlSocket string
	// StateDir is --state-dir; empty means NODE.state beside the log file,
	// one per node: a restarted daemon continues from its node's last
	// epoch, as it would on a host of its own.
	StateDir string
	// Args are appended to the command line.
	Args []string
	// KeyFile is --key-file; empty means [KeyFileName] in the log file's
	// directory, made with a fresh random key by the first daemon started
	// there, so that the daemons of one cluster share it and those of two
	// clusters do not. Args that give --key-file or --insecure-no-key
	// themselves replace it.
	KeyFile string
	// InsecureNoKey starts the daemon with --insecure-no-key instead of a
	// key: only for the tests about the unkeyed mode.
	InsecureNoKey bool
	// ReadyTimeout bounds the wait for the ready file; zero means 30 s.
	ReadyTimeout time.Duration
}

// Daemon is a udpmapsync process running inside a node's network
// namespace (and only there: it shares the harness's mounts, so it sees
// the bpffs holding the maps).
type Daemon struct {
	// Node is where the daemon runs.
	Node *Node
	// LogFile holds its stdout and stderr.
	LogFile string
	// ControlSocket is where it answers `udpmapsync status`.
	ControlSocket string

	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been waited for
	err  error         // what Wait returned; valid once done is closed

	stopOnce sync.Once
	stopErr  error
}

// StartDaemon starts the daemon in node's namespace and waits until it has
// written its ready file. If it exits first or is not ready in time, the
// error ends with the last lines of its log.
func StartDaemon(node *Node, cfg DaemonConfig) (*Daemon, error) {
	if cfg.Capture == "" {
		cfg.Capture = os.Getenv(EnvCapture)
	}
	if cfg.Capture == "" {
		cfg.Capture = "auto"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "info"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 30 * time.Second
	}
	if cfg.StatsInterval == 0 {
		cfg.StatsInterval = 5 * time.Second
	}
	dir := filepath.Dir(cfg.LogFile)
	if cfg.ControlSocket == "" {
		cfg.ControlSocket = filepath.Join(dir, strings.TrimSuffix(filepath.Base(cfg.LogFile), ".log")+".sock")
	}
	if len(cfg.ControlSocket) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("start daemon on %s: control socket path %s is too long for a unix socket; set a shorter TMPDIR", node.Name, cfg.ControlSocket)
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(dir, node.Name+".state")
	}
	args := []string{
		"--iface", NodeIface,
		"--group", Group,
		"--port", strconv.Itoa(Port),
		"--capture", cfg.Capture,
		"--log-level", cfg.LogLevel,
		"--stats-interval", cfg.StatsInterval.String(),
		"--ready-file", cfg.ReadyFile,
		"--control-socket", cfg.ControlSocket,
		"--state-dir", cfg.StateDir,
	}
	for _, m := range cfg.Maps {
		args = append(args, "--map", m)
	}
	args = append(args, cfg.Args...)
	switch {
	case hasFlag(cfg.Args, "--key-file") || hasFlag(cfg.Args, "--insecure-no-key"):
	case cfg.InsecureNoKey:
		args = append(args, "--insecure-no-key")
	default:
		if cfg.KeyFile == "" {
			cfg.KeyFile = filepath.Join(dir, KeyFileName)
		}
		if err := EnsureKeyFile(cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("start daemon on %s: %w", node.Name, err)
		}
		args = append(args, "--key-file", cfg.KeyFile)
	}

	log, err := os.Create(cfg.LogFile)
	if err != nil {
		return nil, fmt.Errorf("start daemon on %s: %w", node.Name, err)
	}
	defer log.Close() // the child has its own copy
	// The daemon is stopped with SIGTERM by Stop, not by a context.
	cmd := node.Command(context.Background(), cfg.Binary, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start daemon on %s: %w", node.Name, err)
	}
	d := &Daemon{Node: node, LogFile: cfg.LogFile, ControlSocket: cfg.ControlSocket, cmd: cmd, done: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()

	timeout := time.NewTimer(cfg.ReadyTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(cfg.ReadyFile); err == nil {
			return d, nil
		}
		select {
		case <-d.done:
			return nil, fmt.Errorf("daemon on %s exited before it was ready: %v; %s", node.Name, d.err, d.Tail(20))
		case <-timeout.C:
			d.Kill()
			return nil, fmt.Errorf("daemon on %s: no ready file %s after %v; %s", node.Name, cfg.ReadyFile, cfg.ReadyTimeout, d.Tail(20))
		case <-tick.C:
		}
	}
}

// hasFlag reports whether args give the flag name, as "name" or "name=...".
func hasFlag(args []string, name string) bool {
	return slices.ContainsFunc(args, func(a string) bool { return a == name || strings.HasPrefix(a, name+"=") })
}

// Kill ends the daemon at once with SIGKILL, as a crash would, and waits
// for it. A later [Daemon.Stop] reports that it had exited.
func (d *Daemon) Kill() {
	d.cmd.Process.Kill()
	<-d.done
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int {
	return d.cmd.Process.Pid
}

// Exited reports whether the daemon has exited, and how. A daemon exits on
// its own only when something went wrong.
func (d *Daemon) Exited() (bool, error) {
	select {
	case <-d.done:
		return true, d.err
	default:
		return false, nil
	}
}

// StopGrace is how long a daemon is given to exit after SIGTERM before it
// is killed and reported. Exiting detaches the capture: with the fentry
// backend that is nine fexit trampolines, each unregistered from ftrace
// under one global lock with an RCU-tasks grace period, about 1.2 s per
// daemon on an idle TCG VM and several seconds with three daemons
// detaching at once. A daemon that hangs on exit still fails the test.
const StopGrace = 30 * time.Second

// Stop sends SIGTERM and waits up to grace for the daemon to exit, then
// kills it. It returns an error unless the daemon was running and exited
// with status 0 within grace. Later calls return the first call's result.
func (d *Daemon) Stop(grace time.Duration) error {
	d.stopOnce.Do(func() { d.stopErr = d.stop(grace) })
	return d.stopErr
}

func (d *Daemon) stop(grace time.Duration) error {
	if exited, err := d.Exited(); exited {
		return fmt.Errorf("daemon on %s had exited before it was stopped: %v", d.Node.Name, err)
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		d.Kill()
		return fmt.Errorf("stop daemon on %s: %w", d.Node.Name, err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-d.done:
		if d.err != nil {
			return fmt.Errorf("daemon on %s exited after SIGTERM: %w", d.Node.Name, d.err)
		}
		return nil
	case <-t.C:
		d.Kill()
		return fmt.Errorf("daemon on %s still running %v after SIGTERM; killed it", d.Node.Name, grace)
	}
}

// Tail returns the last n lines of the daemon's log, introduced by where
// the log is.
func (d *Daemon) Tail(n int) string {
	b, err := os.ReadFile(d.LogFile)
	if err != nil {
		return fmt.Sprintf("log %s: %v", d.LogFile, err)
	}
	b = bytes.TrimRight(b, "\n")
	var lines [][]byte
	if len(b) > 0 {
		// The periodic stats lines would crowd out the events: of them
		// only the last is kept.
		all := bytes.Split(b, []byte("\n"))
		lastStats := -1
		for i, l := range all {
			if bytes.Contains(l, []byte("msg=stats")) {
				lastStats = i
			}
		}
		for i, l := range all {
			if i == lastStats || !bytes.Contains(l, []byte("msg=stats")) {
				lines = append(lines, l)
			}
		}
	}
	head := fmt.Sprintf("last %d lines of %s:", min(n, len(lines)), d.LogFile)
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	var out bytes.Buffer
	out.WriteString(head)
	for _, l := range lines {
		out.WriteString("\n  | ")
		out.Write(l)
	}
	return out.String()
}
