package netnstest

// What loss upstream of every receiver costs: node1 writes while the
// switch drops some of what it sends, and the daemons' counters say how
// many requests and resends it took to repair. TestRepairCost bounds it,
// `make perf` reports it at 4, 8 and 16 nodes.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
)

// RepairCostConfig is one measurement of [MeasureRepairCost].
type RepairCostConfig struct {
	// Nodes is the size of the group; node1 writes, the others receive.
	Nodes int
	// Percent of the datagrams node1 sends into the bridge are dropped
	// there, at random ([Topology.DropSent]).
	Percent int
	// Changes node1 writes, in bpftool runs of Batch changes.
	Changes, Batch int
	// Unicast gives every daemon --peers with the other nodes' addresses
	// instead of the multicast group.
	Unicast bool
	// Args are appended to every daemon's command line (--repair unicast,
	// say).
	Args []string
	// Binary is the daemon, Dir where its logs go.
	Binary, Dir string
}

// RepairCost is what the receivers and node1 did to repair the loss, from
// their counters: the differences between before the writes and after
// every node converged.
type RepairCost struct {
	Nodes int
	// Lost is the fewest datagrams of node1's any receiver found missing
	// (gaps_seen): what was lost upstream of every receiver, at least.
	Lost uint64
	// Requests are the repair requests all receivers sent (nacks_sent),
	// Suppressed those they held back having heard another's.
	Requests, Suppressed uint64
	// Resent are the datagrams node1 resent (datagrams_resent), Sent the
	// change datagrams it sent (datagrams_sent: once each, to the group or
	// to every peer).
	Resent, Sent uint64
	// Resyncs are the full resyncs the receivers needed (resync_needed).
	Resyncs uint64
	// SenderCPU is the CPU time of node1's daemon from the first write
	// until every node converged.
	SenderCPU time.Duration
}

// RequestsPerLost is the repair requests per datagram lost.
func (c RepairCost) RequestsPerLost() float64 { return ratio(c.Requests, c.Lost) }

// ResentPerLost is the datagrams resent per datagram lost.
func (c RepairCost) ResentPerLost() float64 { return ratio(c.Resent, c.Lost) }

func ratio(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

func (c RepairCost) String() string {
	return fmt.Sprintf("%d nodes: %d lost, %d requests (%.2f per lost, %d held back), %d resent (%.2f per lost), %d sent, %d resyncs, sender CPU %v",
		c.Nodes, c.Lost, c.Requests, c.RequestsPerLost(), c.Suppressed, c.Resent, c.ResentPerLost(), c.Sent, c.Resyncs, c.SenderCPU.Round(time.Millisecond))
}

// repairCostMaps is the one map written: small values, so that many
// changes share a datagram and node1 sends at full speed.
var repairCostMaps = []MapSpec{{Name: "flows", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1 << 18}}

// MeasureRepairCost starts a cluster as cfg says, has node1 write while
// the switch drops cfg.Percent of what it sends, waits until every node
// holds what was written, and returns what the repair cost.
func MeasureRepairCost(ctx context.Context, cfg RepairCostConfig) (_ RepairCost, err error) {
	const interval = 200 * time.Millisecond // stats and announces
	args := append([]string{"--announce-interval", interval.String()}, cfg.Args...)
	cc := ClusterConfig{Nodes: cfg.Nodes, Maps: repairCostMaps, Dir: cfg.Dir,
		Daemon: DaemonConfig{Binary: cfg.Binary, StatsInterval: interval, Args: args}}
	if cfg.Unicast {
		cc.NodeArgs = map[int][]string{}
		for i := range cfg.Nodes {
			var peers []string
			for j := range cfg.Nodes {
				if j != i {
					peers = append(peers, fmt.Sprintf("10.77.0.%d", j+1))
				}
			}
			cc.NodeArgs[i] = []string{"--peers", strings.Join(peers, ",")}
		}
	}
	c, err := NewCluster(ctx, cc)
	if err != nil {
		return RepairCost{}, err
	}
	defer func() { err = errors.Join(err, c.Close()) }()
	before, err := settledStats(ctx, c, interval)
	if err != nil {
		return RepairCost{}, err
	}
	sender := c.Topology.Nodes[0]
	drop, err := c.Topology.DropSent(ctx, sender, cfg.Percent)
	if err != nil {
		return RepairCost{}, err
	}
	defer func() { err = errors.Join(err, drop.Remove(context.Background())) }()
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: cfg.Changes, Seed: 19})
	if err != nil {
		return RepairCost{}, err
	}
	cpu0, err := cpuTime(c.Daemons[0].Pid())
	if err != nil {
		return RepairCost{}, err
	}
	for left := cfg.Changes; left > 0; left -= cfg.Batch {
		changes := make([]Change, min(left, cfg.Batch))
		for k := range changes {
			changes[k] = w.Next()
		}
		if err := c.Write(ctx, 0, changes); err != nil {
			return RepairCost{}, err
		}
	}
	wait, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if _, err := c.WaitConverged(wait, w.Want(), 50*time.Millisecond, nil); err != nil {
		return RepairCost{}, err
	}
	cpu1, err := cpuTime(c.Daemons[0].Pid())
	if err != nil {
		return RepairCost{}, err
	}
	after, err := settledStats(ctx, c, interval)
	if err != nil {
		return RepairCost{}, err
	}
	d := func(i int, k string) uint64 { return after[i][k] - before[i][k] }
	cost := RepairCost{Nodes: cfg.Nodes, Resent: d(0, "datagrams_resent"), Sent: d(0, "datagrams_sent"), SenderCPU: cpu1 - cpu0}
	for i := 1; i < cfg.Nodes; i++ {
		if lost := d(i, "gaps_seen"); i == 1 || lost < cost.Lost {
			cost.Lost = lost
		}
		cost.Requests += d(i, "nacks_sent")
		cost.Suppressed += d(i, "nacks_suppressed")
		cost.Resyncs += d(i, "resync_needed")
	}
	return cost, nil
}

// settledStats waits until two stats lines of every daemon in a row,
// interval apart, show the same requests and resends, and returns the
// last: nothing is being repaired any more.
func settledStats(ctx context.Context, c *Cluster, interval time.Duration) ([]Stats, error) {
	read := func() ([]Stats, bool, error) {
		s := make([]Stats, len(c.Daemons))
		for i, d := range c.Daemons {
			st, err := d.Stats()
			if err != nil || st == nil || st["ready"] != 1 {
				return nil, false, err
			}
			s[i] = st
		}
		return s, true, nil
	}
	var last []Stats
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		s, ok, err := read()
		if err != nil {
			return nil, err
		}
		if ok && last != nil && sameRepairs(last, s) {
			return s, nil
		}
		if ok {
			last = s
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(2 * interval):
		}
	}
	return nil, errors.New("the daemons' repair counters did not settle within 30s")
}

// sameRepairs reports whether a and b show the same repair counters.
func sameRepairs(a, b []Stats) bool {
	for i := range a {
		for _, k := range []string{"nacks_sent", "datagrams_resent", "gaps_seen", "datagrams_sent"} {
			if a[i][k] != b[i][k] {
				return false
			}
		}
	}
	return true
}

// cpuTime is the user and system CPU time process pid has used.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
	}
	// The fields after the command (which may hold spaces) in parentheses:
	// utime and stime are the 14th and 15th of the line.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu time of %d: %d fields in /proc/%d/stat", pid, len(f), pid)
	}
	var ticks uint64
	for _, v := range f[11:13] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu time of %d: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond, nil // USER_HZ is 100 on Linux
}
