package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
)

// Requests of conntrackd's UNIX socket (conntrackd.h): the client writes
// one native int and reads text until the daemon closes the connection.
const (
	reqDumpExternal = 17 // conntrackd -e
	reqStats        = 21 // conntrackd -s
	reqStatsRuntime = 30 // conntrackd -s runtime
)

// netlinkBufferMax bounds the event socket buffer conntrackd asks for.
const netlinkBufferMax = 1 << 30

// Multicast settings shared by both daemons.
const (
	mcastGroup = "225.0.0.50"
	mcastPort  = 3780
)

// configText is conntrackd.conf(5) for one node: FTFW over multicast on
// the bridge, kernel-space event filtering that lets only the flows the
// injector creates through (their sources are in 10.128.0.0/9), and
// buffers large enough for a whole run, so the figures show the
// daemon's own speed rather than overruns of a default-sized buffer.
var configText = template.Must(template.New("conntrackd.conf").Parse(`Sync {
	Mode FTFW {
		ResendQueueSize {{.ResendQueue}}
		ACKWindowSize 300
		DisableExternalCache Off
	}
	Multicast {
		IPv4_address {{.Group}}
		Group {{.Port}}
		IPv4_interface {{.Addr}}
		Interface {{.Iface}}
		SndSocketBuffer {{.SocketBuffer}}
		RcvSocketBuffer {{.SocketBuffer}}
		Checksum on
	}
}
General {
	HashSize {{.HashSize}}
	HashLimit {{.HashLimit}}
	LogFile {{.Dir}}/conntrackd.log
	Syslog off
	LockFile {{.Dir}}/conntrackd.lock
	UNIX {
		Path {{.Dir}}/conntrackd.sock
	}
	NetlinkBufferSize {{.NetlinkBuffer}}
	NetlinkBufferSizeMaxGrowth {{.NetlinkBufferMax}}
	NetlinkOverrunResync On
	Filter From Kernelspace {
		Protocol Accept {
			UDP
		}
		Address Accept {
			IPv4_address 10.128.0.0/9
		}
	}
}
`))

// configParams fills [configText].
type configParams struct {
	Dir              string
	Group            string
	Port             int
	Addr             netip.Addr
	Iface            string
	ResendQueue      int
	SocketBuffer     int
	HashSize         int
	HashLimit        int
	NetlinkBuffer    int
	NetlinkBufferMax int
}

// newConfig sizes the daemon's tables and buffers for entries entries.
func newConfig(dir string, addr netip.Addr, entries int) configParams {
	return configParams{
		Dir:          dir,
		Group:        mcastGroup,
		Port:         mcastPort,
		Addr:         addr,
		Iface:        netnstest.NodeIface,
		ResendQueue:  max(131072, 2*entries),
		SocketBuffer: 16 << 20,
		HashSize:     max(65536, entries),
		HashLimit:    max(262144, 4*entries),
		// A queued ct-new event takes 2560 bytes of socket memory here
		// (the kernel doubles the size asked for), and in --preload mode
		// the whole run queues up. Beyond 1 GiB (about 800k events)
		// events are lost and counted as netlink overruns.
		NetlinkBuffer:    min(max(8<<20, entries<<11), netlinkBufferMax),
		NetlinkBufferMax: netlinkBufferMax,
	}
}

// daemon is one conntrackd running in the foreground inside a node.
type daemon struct {
	node *netnstest.Node
	dir  string
	cmd  *exec.Cmd
	done chan error
}

// startDaemon writes the node's configuration under dir and starts
// conntrackd in the node's namespace.
func startDaemon(ctx context.Context, node *netnstest.Node, dir string, entries int) (*daemon, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	var conf bytes.Buffer
	if err := configText.Execute(&conf, newConfig(dir, node.Addr, entries)); err != nil {
		return nil, fmt.Errorf("render conntrackd.conf for %s: %w", node.Name, err)
	}
	path := filepath.Join(dir, "conntrackd.conf")
	if err := os.WriteFile(path, conf.Bytes(), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	// Without -d conntrackd stays in the foreground, so the pid we hold
	// is the daemon's (nsenter execs it) and its CPU can be read.
	cmd := node.Command(ctx, "conntrackd", "-C", path)
	// Should this harness die without cleaning up, the daemon goes too.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 5 * time.Second
	out, err := os.Create(filepath.Join(dir, "console.log"))
	if err != nil {
		return nil, fmt.Errorf("create console log for %s: %w", node.Name, err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start conntrackd on %s: %w", node.Name, err)
	}
	d := &daemon{node: node, dir: dir, cmd: cmd, done: make(chan error, 1)}
	go func() { d.done <- cmd.Wait() }()
	return d, nil
}

// waitReady waits until the daemon answers on its UNIX socket.
func (d *daemon) waitReady(ctx context.Context) error {
	for {
		if _, err := d.request(reqStats); err == nil {
			return nil
		}
		select {
		case err := <-d.done:
			d.done <- err
			return fmt.Errorf("conntrackd on %s exited (%v); see %s", d.node.Name, err, d.logs())
		case <-ctx.Done():
			return fmt.Errorf("wait for conntrackd on %s: %w", d.node.Name, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// logs names the files that tell why the daemon failed.
func (d *daemon) logs() string {
	return filepath.Join(d.dir, "conntrackd.log") + " and " + filepath.Join(d.dir, "console.log")
}

// stop terminates the daemon and waits for it.
func (d *daemon) stop() error {
	select {
	case err := <-d.done:
		d.done <- err
		return nil
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop conntrackd on %s: %w", d.node.Name, err)
	}
	select {
	case <-d.done:
		return nil
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("stop conntrackd on %s: still running 5s after SIGTERM, killed", d.node.Name)
	}
}

// signal sends sig to the daemon.
func (d *daemon) signal(sig syscall.Signal) error {
	if err := d.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("send %v to conntrackd on %s: %w", sig, d.node.Name, err)
	}
	return nil
}

// request sends one request over the daemon's UNIX socket and returns the
// answer. Talking to the socket directly rather than running
// `conntrackd -s` saves a process start per poll on a 2-core machine.
func (d *daemon) request(req int32) ([]byte, error) {
	c, err := net.DialTimeout("unix", filepath.Join(d.dir, "conntrackd.sock"), time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to conntrackd on %s: %w", d.node.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(binary.NativeEndian.AppendUint32(nil, uint32(req))); err != nil {
		return nil, fmt.Errorf("send request %d to conntrackd on %s: %w", req, d.node.Name, err)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, fmt.Errorf("read answer %d from conntrackd on %s: %w", req, d.node.Name, err)
	}
	return b, nil
}

// stats is what the run needs from `conntrackd -s`.
type stats struct {
	InternalActive  int // entries in the internal cache (local flows)
	ExternalActive  int // entries in the external cache (flows from peers)
	PacketsSent     int // multicast datagrams sent
	PacketsReceived int // multicast datagrams received
	Lost            int // "Lost msgs": sequence gaps seen
}

// stats asks the daemon for its counters.
func (d *daemon) stats() (stats, error) {
	b, err := d.request(reqStats)
	if err != nil {
		return stats{}, err
	}
	s, err := parseStats(b)
	if err != nil {
		return stats{}, fmt.Errorf("conntrackd on %s: %w", d.node.Name, err)
	}
	return s, nil
}

// parseStats reads the text of a STATS answer: sections "cache
// internal:", "cache external:", "multicast traffic ...:" and "message
// tracking:", each with labelled counters.
func parseStats(b []byte) (stats, error) {
	var s stats
	var section string
	seen := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasSuffix(line, ":") && !strings.HasPrefix(line, " ") {
			section = line
			continue
		}
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "current active connections:") && len(f) == 4:
			n, err := strconv.Atoi(f[3])
			if err != nil {
				return s, fmt.Errorf("parse stats line %q: %w", line, err)
			}
			switch section {
			case "cache internal:":
				s.InternalActive, seen = n, seen|1
			case "cache external:":
				s.ExternalActive, seen = n, seen|2
			}
		case strings.HasPrefix(section, "multicast traffic") && len(f) == 6 && f[1] == "Pckts":
			sent, err1 := strconv.Atoi(f[0])
			recv, err2 := strconv.Atoi(f[3])
			if err := errors.Join(err1, err2); err != nil {
				return s, fmt.Errorf("parse stats line %q: %w", line, err)
			}
			s.PacketsSent, s.PacketsReceived, seen = sent, recv, seen|4
		case section == "message tracking:" && len(f) == 6 && f[4] == "Lost":
			n, err := strconv.Atoi(f[3])
			if err != nil {
				return s, fmt.Errorf("parse stats line %q: %w", line, err)
			}
			s.Lost, seen = n, seen|8
		}
	}
	if seen != 15 {
		return s, fmt.Errorf("parse stats: missing counters (have mask %#x of 0xf) in %q", seen, b)
	}
	return s, nil
}

// netlinkStats is what the run needs from `conntrackd -s runtime`.
type netlinkStats struct {
	Events   int // ct events read from the kernel
	Overruns int // times the event socket overflowed and events were lost
	Resyncs  int // dumps of the kernel table that followed overruns
}

// netlinkStats asks the daemon for its event socket counters.
func (d *daemon) netlinkStats() (netlinkStats, error) {
	b, err := d.request(reqStatsRuntime)
	if err != nil {
		return netlinkStats{}, err
	}
	var s netlinkStats
	fields := map[string]*int{
		"events received:":          &s.Events,
		"netlink overrun:":          &s.Overruns,
		"resync with kernel table:": &s.Resyncs,
	}
	seen := 0
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		for label, p := range fields {
			v, ok := strings.CutPrefix(line, label)
			if !ok {
				continue
			}
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return s, fmt.Errorf("conntrackd on %s: parse runtime stats line %q: %w", d.node.Name, line, err)
			}
			*p = n
			seen++
		}
	}
	if seen != len(fields) {
		return s, fmt.Errorf("conntrackd on %s: runtime stats: %d of %d counters in %q", d.node.Name, seen, len(fields), b)
	}
	return s, nil
}

// countExternal dumps the external cache and counts the entries whose
// source address lies in [base, base+n). It runs once, after the
// measurement: a dump of the whole cache is too heavy to poll.
func (d *daemon) countExternal(base uint32, n int) (int, error) {
	b, err := d.request(reqDumpExternal)
	if err != nil {
		return 0, err
	}
	count := 0
	for line := range bytes.Lines(b) {
		i := bytes.Index(line, []byte("src="))
		if i < 0 {
			continue
		}
		f := line[i+len("src="):]
		if j := bytes.IndexByte(f, ' '); j >= 0 {
			f = f[:j]
		}
		a, err := netip.ParseAddr(string(f))
		if err != nil || !a.Is4() {
			continue
		}
		v := a.As4()
		if u := binary.BigEndian.Uint32(v[:]); u >= base && u-base < uint32(n) {
			count++
		}
	}
	return count, nil
}

// cpuTicks returns the daemon's user+system time in clock ticks.
func (d *daemon) cpuTicks() (int64, error) {
	return procCPUTicks(d.cmd.Process.Pid)
}

// procCPUTicks reads utime+stime of pid from /proc/PID/stat.
func procCPUTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time of %d: %w", pid, err)
	}
	// The command name may hold spaces and parentheses: fields are
	// counted from the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields after the name", pid, len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return u + s, nil
}
