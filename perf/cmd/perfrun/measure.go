package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat.
const clockTicks = 100

// procCPU is a process's user plus system time, all threads, from
// /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	user, system, err := procTimes(pid)
	return user + system, err
}

// procTimes is a process's user and system time apart, all threads, from
// /proc/PID/stat.
func procTimes(pid int) (user, system time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read CPU time: %w", err)
	}
	// The command name may hold spaces; the fields after it do not.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("read CPU time: /proc/%d/stat has %d fields after the name", pid, len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("read CPU time: /proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	return time.Duration(utime) * time.Second / clockTicks, time.Duration(stime) * time.Second / clockTicks, nil
}

// peakRSS is a process's VmHWM in KiB.
func peakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read peak RSS: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("read peak RSS: no VmHWM in /proc/%d/status", pid)
}

// txCounters are the bytes and packets a node's interface has sent.
func txCounters(n *netnstest.Node) (bytes, packets uint64, err error) {
	ns, err := netns.GetFromPath(n.NetnsPath())
	if err != nil {
		return 0, 0, fmt.Errorf("open namespace %s: %w", n.Netns, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return 0, 0, fmt.Errorf("netlink in %s: %w", n.Netns, err)
	}
	defer h.Close()
	l, err := h.LinkByName(netnstest.NodeIface)
	if err != nil {
		return 0, 0, fmt.Errorf("%s in %s: %w", netnstest.NodeIface, n.Netns, err)
	}
	st := l.Attrs().Statistics
	if st == nil {
		return 0, 0, fmt.Errorf("%s in %s: no statistics", netnstest.NodeIface, n.Netns)
	}
	return st.TxBytes, st.TxPackets, nil
}

// snapshot is the counters of a deployment at one moment.
type snapshot struct {
	cpu            []time.Duration // per node's replicator; 0 before it started
	user           []time.Duration // the user-space part of cpu
	bytes, packets uint64          // all nodes' interfaces
}

func (d *deployment) snapshot() (snapshot, error) {
	var s snapshot
	for _, pid := range d.pids {
		var user, system time.Duration
		if pid != 0 {
			var err error
			if user, system, err = procTimes(pid); err != nil {
				return s, err
			}
		}
		s.cpu = append(s.cpu, user+system)
		s.user = append(s.user, user)
	}
	for _, n := range d.c.Topology.Nodes {
		b, p, err := txCounters(n)
		if err != nil {
			return s, err
		}
		s.bytes += b
		s.packets += p
	}
	return s, nil
}

// idlePoll is the period in which a process that used at most one clock
// tick of CPU counts as idle.
const idlePoll = 250 * time.Millisecond

// waitIdle waits until process pid is idle: for a daemon, until it has
// sent what it captured.
func waitIdle(ctx context.Context, pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	prev, err := procCPU(pid)
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(idlePoll):
		}
		cur, err := procCPU(pid)
		if err != nil {
			return err
		}
		if cur-prev <= time.Second/clockTicks {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still busy after %v", timeout)
		}
		prev = cur
	}
}
