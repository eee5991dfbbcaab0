// Package report holds what a `make perf` run measured and turns it into
// perf/results/<date>-<host>.md with PNG charts, and checks the figures
// against the project's performance targets.
package report

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// The systems compared.
const (
	// UDPMapSync is udpmapsync with --insecure-no-key: unsealed, as on a
	// trusted link.
	UDPMapSync = "udpmapsync"
	// UDPMapSyncSealed is udpmapsync with --key-file, its default: every
	// datagram sealed with AES-256-GCM.
	UDPMapSyncSealed = "udpmapsync (sealed)"
	GRPCStream       = "gRPC stream"
	GRPCUnary        = "gRPC unary"
	Conntrackd       = "conntrackd"
)

// IsUDPMapSync says whether system is the daemon, with or without a key.
func IsUDPMapSync(system string) bool { return system == UDPMapSync || system == UDPMapSyncSealed }

// Results is everything one run measured.
type Results struct {
	Date                         time.Time
	Host, Kernel, CPU, GoVersion string
	Cores                        int
	// LoadBefore and LoadAfter are /proc/loadavg around the run: the
	// machine is shared, and a busy one lowers every figure.
	LoadBefore, LoadAfter string
	// Version is the daemon's `git describe`.
	Version string
	// Settings lists the knobs of the run (flag: value), shown as given.
	Settings [][2]string

	Raw  []Raw
	Runs []Run
	// SealingRounds are further full-speed runs of udpmapsync and
	// udpmapsync (sealed), in adjacent pairs (Round 1, 2, ...), for the
	// cost of sealing alone: on a shared machine one pair is too noisy.
	SealingRounds []Run `json:",omitempty"`
	// Memory is the 1M-entry run, nil if skipped.
	Memory *Run
	// Resync is the runs of the resync targets, nil if skipped.
	Resync *Resync `json:",omitempty"`
	// Repair is the runs with loss upstream of every receiver, per group
	// size and way of repair.
	Repair []RepairRun `json:",omitempty"`
	// Conntrackd is the result perf/conntrackd/run printed, nil if it did
	// not run; ConntrackdNote says why, or what it noted.
	Conntrackd     *ConntrackdResult
	ConntrackdNote string

	Benchmarks []Benchmark
	BenchNote  string
	// CaptureCost is make vmbench's figures, run within make perf; nil
	// with CaptureCostNote saying why not.
	CaptureCost     *CaptureCost `json:",omitempty"`
	CaptureCostNote string       `json:",omitempty"`
	// Profile is a pprof summary (top functions) of a daemon, when one was
	// taken.
	Profile string
}

// Raw is the rate at which the machine writes a map with batch syscalls
// and no replication: the ceiling every replicator is compared with.
type Raw struct {
	Profile string
	Changes int
	PerSec  float64
	// CPUPerChange is the writing thread's CPU per change, µs.
	CPUPerChange float64
}

// Run is one scenario: a system replicating a workload written on node1 to
// the other nodes.
type Run struct {
	System  string
	Nodes   int
	Profile string
	// Rate is the offered rate in changes/s; zero means as fast as the
	// writer can.
	Rate    int
	Changes int
	// Seconds is from the first write until every peer held the final
	// state; PerSec is Changes/Seconds.
	Seconds, PerSec float64
	// TransferSeconds, for a late join, is the joiner's own account of its
	// full resync, from its request to the last entry applied (its log's
	// "full resync complete" took=); 0 if unknown.
	TransferSeconds float64 `json:",omitempty"`
	// WriterPerSec is how fast the writer wrote with the capture attached;
	// WriterCPU its CPU per change in µs (the capture program runs in the
	// writer's syscalls and is charged to it).
	WriterPerSec, WriterCPU float64
	// CPU per change in µs: the sender daemon (node1) and the mean of the
	// receivers, from /proc/PID/stat.
	CPUSender, CPUReceiver float64
	// CPUSenderUser is the sender's user-space part of CPUSender: on veth
	// the kernel's multicast fan-out runs on the sender's thread, in its
	// system time.
	CPUSenderUser float64 `json:",omitempty"`
	// CPUReceiverUser is the receivers' user-space part of CPUReceiver:
	// with it, the receivers' own code is told apart from the kernel's
	// map updates and socket reads.
	CPUReceiverUser float64 `json:",omitempty"`
	// Bytes and packets sent by all nodes' interfaces, per change.
	BytesPerChange, PacketsPerChange float64
	// Peak resident set (VmHWM), KiB: sender and the largest receiver.
	RSSSender, RSSReceiver int64
	// IdleRSSSender and IdleRSSReceiver are the same, read before the
	// first write, the maps empty: the memory run's idle daemons.
	IdleRSSSender, IdleRSSReceiver int64 `json:",omitempty"`
	// ResyncNeeded counts the times a receiver gave a gap up and needed a
	// full resync (udpmapsync's resync_needed, summed over the receivers):
	// it had been overrun, and the run's CPU includes the resync.
	ResyncNeeded uint64 `json:",omitempty"`
	// Lost counts entries that differ from the final state on any peer
	// when the run gave up; Converged says whether it ever matched.
	Lost      int
	Converged bool
	Latency   *Latency `json:",omitempty"`
	// Waits is how long threads waited for a core during a latency run.
	Waits *Waits `json:",omitempty"`
	// Stats are the daemon's own counters (udpmapsync's stats line).
	Stats map[string]uint64 `json:",omitempty"`
	Notes []string          `json:",omitempty"`
	// Skipped says why this scenario was not measured.
	Skipped string `json:",omitempty"`
	// Round numbers the extra rounds of [Results.SealingRounds]; 0 for
	// the runs of Runs.
	Round int `json:",omitempty"`
}

// Latency is the distribution of write-to-apply times, µs.
type Latency struct {
	Samples             int
	P50, P99, P999, Max float64
	// CDF holds up to a few hundred points (µs, fraction) for the chart.
	CDF [][2]float64
}

// Waits is how long threads were runnable but waited for a core during a
// run (the kernel's run_delay, read every Poll ms): the replicators' and
// the harness's own, whose observers time each apply. Longest is the most
// one thread waited between two reads; PerSec the waits of all their
// threads summed, ms per second of the run.
type Waits struct {
	Poll                            float64
	ReplicatorMs, HarnessMs         float64
	ReplicatorPerSec, HarnessPerSec float64
}

// NewLatency summarises samples (µs); it sorts them.
func NewLatency(samples []float64) *Latency {
	if len(samples) == 0 {
		return nil
	}
	slices.Sort(samples)
	l := &Latency{
		Samples: len(samples),
		P50:     quantile(samples, 0.50),
		P99:     quantile(samples, 0.99),
		P999:    quantile(samples, 0.999),
		Max:     samples[len(samples)-1],
	}
	const points = 400
	for i := range points + 1 {
		// Denser towards the tail, where the interesting part is.
		q := 1 - math.Pow(10, -4*float64(i)/points)
		if i == points {
			q = 1
		}
		l.CDF = append(l.CDF, [2]float64{quantile(samples, q), q})
	}
	return l
}

// quantile is the nearest-rank q-quantile of sorted s.
func quantile(s []float64, q float64) float64 {
	i := int(q*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// ConntrackdResult is the JSON line perf/conntrackd/run prints.
type ConntrackdResult struct {
	System               string  `json:"system"`
	Nodes                int     `json:"nodes"`
	ChangesPerSec        float64 `json:"changes_per_sec"`
	CPUPerChangeSender   float64 `json:"cpu_us_per_change_sender"`
	CPUPerChangeReceiver float64 `json:"cpu_us_per_change_receiver"`
	Notes                string  `json:"notes"`
}

// ParseConntrackd reads the result of perf/conntrackd/run: the last line of
// its output that is a JSON object with the system and rate set.
func ParseConntrackd(out []byte) (*ConntrackdResult, error) {
	lines := bytes.Split(out, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		var r ConntrackdResult
		if json.Unmarshal(lines[i], &r) == nil && r.System != "" && r.Nodes > 0 {
			if r.ChangesPerSec <= 0 {
				return nil, fmt.Errorf("conntrackd result: changes_per_sec %g", r.ChangesPerSec)
			}
			return &r, nil
		}
	}
	return nil, fmt.Errorf(`conntrackd result: no JSON line like {"system":"conntrackd","nodes":2,"changes_per_sec":...} in its output`)
}

// WriteJSON writes r, for tools and later comparisons.
func (r *Results) WriteJSON(w io.Writer) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(r)
}

// Find returns the first measured run of system with nodes nodes, profile
// and rate, or nil.
func (r *Results) Find(system string, nodes int, profile string, rate int) *Run {
	for i := range r.Runs {
		x := &r.Runs[i]
		if x.System == system && x.Nodes == nodes && x.Profile == profile && x.Rate == rate && x.Skipped == "" {
			return x
		}
	}
	return nil
}

// RawRate is the raw batch-write rate for profile, or 0.
func (r *Results) RawRate(profile string) float64 {
	for _, x := range r.Raw {
		if x.Profile == profile {
			return x.PerSec
		}
	}
	return 0
}
