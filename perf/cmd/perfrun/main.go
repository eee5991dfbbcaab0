// Command perfrun is `make perf`: it measures udpmapsync, without and with
// a key (--key-file), against a gRPC replicator (one unary call per change,
// and batches on a stream) and conntrackd, on nodes in network namespaces
// (netns-test), and writes perf/results/<date>-<host>.md with tables and
// charts. It needs root.
//
// For every system, on 2 and 3 nodes: a throughput run (N changes written
// on node1 as fast as possible, timed until every peer holds the final
// state), and latency runs at fixed rates. Before them, the raw rate at
// which this machine writes a map with the same batch syscalls and nothing
// attached; after them, a 1M-entry run for the daemon's memory, the
// resync runs (a late join, a join under load with loss, running peers
// with loss: resync.go), and perf/conntrackd/run.
package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/loader"
	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
	"github.com/udpmapsync/udpmapsync/perf/report"
	"github.com/udpmapsync/udpmapsync/perf/workload"
)

// Flags are the command line.
type Flags struct {
	Daemon, GRPCSync, Conntrackd, Bench, Out, Version string
	VMBench                                           string
	Changes, UnaryChanges, MemoryEntries, Batch       int
	LargeChanges                                      int
	SealingRounds                                     int
	ResyncRuns, JoinEntries, LossPercent              int
	FastRuns, FastBatch                               int
	RingSize                                          int
	DeleteShare                                       float64
	Rates                                             []int
	Nodes                                             []int
	RepairNodes                                       []int
	Systems, Profiles                                 []string
	LatencyFor, Timeout, Settle, ConntrackdTimeout    time.Duration
	Work                                              string
	Keep                                              bool
	// CPUProfile is a directory for the daemons' CPU profiles, or "".
	CPUProfile string
}

func main() {
	var f Flags
	fs := pflag.NewFlagSet("perfrun", pflag.ExitOnError)
	fs.StringVar(&f.Daemon, "daemon", "bin/udpmapsync", "udpmapsync binary")
	fs.StringVar(&f.GRPCSync, "grpcsync", "bin/grpcsync", "the gRPC baseline binary (perf/cmd/grpcsync)")
	fs.StringVar(&f.Conntrackd, "conntrackd", "perf/conntrackd/run", "program measuring conntrackd; prints a JSON result line")
	fs.StringVar(&f.Bench, "bench", "", "output of go test -bench -benchmem to include")
	fs.StringVar(&f.VMBench, "vmbench", "", "output of make vmbench to include (issue 22's target 8: the fentry capture's cost in the VM); make perf runs it first when qemu is there")
	fs.StringVar(&f.Out, "out", "perf/results", "directory for the report")
	fs.StringVar(&f.Version, "version", "dev", "the daemon's version, for the report")
	fs.IntVar(&f.Changes, "changes", 1_000_000, "changes per throughput run: enough that socket buffers cannot absorb a run, so the rate is the sustained one")
	fs.IntVar(&f.LargeChanges, "large-changes", 30_000, "changes per throughput run of the large profile (4 KiB values: the maps and the expected contents take about 60 MiB a node)")
	fs.IntVar(&f.UnaryChanges, "unary-changes", 20_000, "changes per throughput run of the unary gRPC baseline (one call per change is slow)")
	fs.IntVar(&f.SealingRounds, "sealing-rounds", 3, "pairs of full-speed runs of udpmapsync and udpmapsync (sealed) per node count and profile, when both are measured, counting the throughput table's: the cost of sealing is the median pair's")
	fs.IntVar(&f.MemoryEntries, "memory-entries", 1_000_000, "entries of the memory run (0: skip it)")
	fs.IntVar(&f.ResyncRuns, "resync-runs", 5, "pairs of full-speed runs of two running nodes, without loss and with --loss-percent into the receiver, before a join under load with that loss and a late join (the resync targets); 0 skips all resync runs")
	fs.IntVar(&f.JoinEntries, "join-entries", 1_000_000, "entries a late joiner's peer holds, in the resync runs (0: no late join)")
	fs.IntVar(&f.FastRuns, "fast-runs", 10, "runs on 2 and on 3 nodes of a writer of --changes distinct keys in batches of --fast-batch, in the resync runs (0: none)")
	fs.IntVar(&f.FastBatch, "fast-batch", 4096, "changes per batch syscall of the fast writer")
	fs.IntVar(&f.LossPercent, "loss-percent", 5, "datagrams into the receiver dropped at random in the resync runs, %")
	fs.IntVar(&f.Batch, "batch", 512, "changes per batch syscall at full speed")
	fs.IntVar(&f.RingSize, "ring-size", 64<<20, "capture ring of the replicators in throughput and latency runs")
	fs.Float64Var(&f.DeleteShare, "delete-share", 0.1, "share of the changes that are deletes")
	fs.IntSliceVar(&f.Rates, "rates", []int{10_000, 100_000}, "fixed rates of the latency runs, changes/s")
	fs.IntSliceVar(&f.Nodes, "nodes", []int{2, 3, 4}, "cluster sizes; beyond 3 nodes only full-speed runs of udpmapsync and the gRPC stream, 16 B / 64 B (issue 22's target 2: the sender's CPU per change as N grows)")
	fs.IntSliceVar(&f.RepairNodes, "repair-nodes", []int{4, 8, 16}, "cluster sizes of the repair runs, each with --loss-percent of node1's datagrams dropped upstream of every receiver (0: none)")
	fs.StringSliceVar(&f.Systems, "systems", []string{report.UDPMapSync, report.UDPMapSyncSealed, report.GRPCStream, report.GRPCUnary}, "systems to measure: "+strings.Join(systems, ", "))
	fs.StringSliceVar(&f.Profiles, "profiles", []string{"small", "conntrack", "large"}, "key/value profiles of the throughput runs: small (16 B / 64 B), conntrack (40 B / 128 B), large (16 B / 4 KiB: records in fragments)")
	fs.DurationVar(&f.LatencyFor, "latency-for", 3*time.Second, "length of a latency run")
	fs.DurationVar(&f.Timeout, "timeout", 2*time.Minute, "give up on a run whose last change has not reached every peer this long after it was written")
	fs.DurationVar(&f.Settle, "settle", 30*time.Second, "after the last change arrived, how long maps may take to match before the differences count as lost")
	fs.BoolVar(&f.Keep, "keep", false, "keep the daemons' logs and the other files of each run, and say where")
	fs.StringVar(&f.CPUProfile, "cpuprofile", "", "write a CPU profile of every udpmapsync daemon into this directory (the daemon's hidden --cpuprofile); the profiler costs a little CPU itself, so take the figures from a run without it")
	fs.DurationVar(&f.ConntrackdTimeout, "conntrackd-timeout", 4*time.Minute, "bound on perf/conntrackd/run")
	fs.Parse(os.Args[1:])

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	path, err := run(ctx, &f, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "perfrun:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

func run(ctx context.Context, f *Flags, log *slog.Logger) (string, error) {
	if err := netnstest.Requirements(); err != nil {
		return "", err
	}
	if f.ResyncRuns > 0 && (f.JoinEntries == 1 || f.JoinEntries < 0 || f.LossPercent < 1 || f.LossPercent > 100) {
		return "", fmt.Errorf("--join-entries %d, --loss-percent %d: want 0 or at least 2 entries, and 1 to 100 %%", f.JoinEntries, f.LossPercent)
	}
	f.RepairNodes = slices.DeleteFunc(f.RepairNodes, func(n int) bool { return n == 0 })
	for _, n := range f.RepairNodes {
		if n < 2 {
			return "", fmt.Errorf("--repair-nodes %d: a repair run needs at least 2 nodes (0: no repair runs)", n)
		}
	}
	for _, s := range f.Systems {
		if !slices.Contains(systems, s) {
			return "", fmt.Errorf("--systems: unknown system %q; known: %s", s, strings.Join(systems, ", "))
		}
	}
	if f.CPUProfile != "" {
		abs, err := filepath.Abs(f.CPUProfile)
		if err == nil {
			err = os.MkdirAll(abs, 0o755)
		}
		if err != nil {
			return "", fmt.Errorf("--cpuprofile: %w", err)
		}
		f.CPUProfile = abs
	}
	for _, p := range []*string{&f.Daemon, &f.GRPCSync} {
		abs, err := filepath.Abs(*p)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			return "", fmt.Errorf("%s: %w; build it first (make perf does)", *p, err)
		}
		*p = abs
	}
	var err error
	if f.Work, err = os.MkdirTemp("", "udpmapsync-perf-"); err != nil {
		return "", err
	}
	if f.Keep {
		log.Info("keeping the runs' files", "dir", f.Work)
	} else {
		defer os.RemoveAll(f.Work)
	}

	r := newResults(f)
	if f.Bench != "" {
		if b, err := os.ReadFile(f.Bench); err != nil {
			r.BenchNote = err.Error()
		} else if r.Benchmarks = report.ParseBench(b); len(r.Benchmarks) == 0 {
			r.BenchNote = "no benchmark lines in " + f.Bench
		}
	} else {
		r.BenchNote = "perfrun ran without --bench"
	}
	if f.VMBench == "" {
		r.CaptureCostNote = "perfrun ran without --vmbench"
	} else if b, err := os.ReadFile(f.VMBench); err != nil {
		r.CaptureCostNote = err.Error()
	} else if r.CaptureCost, err = report.ParseVMBench(b); err != nil {
		r.CaptureCostNote = err.Error()
	}

	profiles, err := workload.Profiles(f.Profiles)
	if err != nil {
		return "", err
	}
	for _, p := range profiles {
		raw, err := measureRaw(ctx, f, p)
		if err != nil {
			return "", err
		}
		log.Info("raw batch writes", "profile", p.Name, "changes_per_sec", int(raw.PerSec))
		r.Raw = append(r.Raw, *raw)
	}

	for _, nodes := range f.Nodes {
		for _, system := range f.Systems {
			if nodes > 3 && system != report.UDPMapSync && system != report.GRPCStream {
				continue // beyond 3 nodes only what target 2 compares: the run stays bounded
			}
			for _, p := range profiles {
				if p != workload.Small && nodes != 2 {
					continue // the second profile on 2 nodes only: the run stays under 10 minutes
				}
				changes := changesOf(f, p)
				if system == report.GRPCUnary {
					changes = min(changes, f.UnaryChanges)
				}
				cfg := workload.Config{Profile: p, Changes: changes, DeleteShare: f.DeleteShare, Batch: f.Batch}
				x, err := scenario(ctx, f, log, system, nodes, cfg, setup{extra: ringArgs(f)})
				if err != nil {
					return "", err
				}
				r.Runs = append(r.Runs, *x)
				if system == report.UDPMapSyncSealed && slices.Contains(f.Systems, report.UDPMapSync) {
					if err := sealingRounds(ctx, f, log, r, nodes, cfg); err != nil {
						return "", err
					}
				}
			}
			top := r.Find(system, nodes, workload.Small.Name, 0)
			for _, rate := range f.Rates {
				if nodes > 3 {
					break
				}
				changes := int(float64(rate) * f.LatencyFor.Seconds())
				cfg := workload.Config{Profile: workload.Small, Changes: changes, DeleteShare: f.DeleteShare, Batch: max(rate/1000, 1), Rate: rate, Tick: time.Millisecond}
				if top == nil || top.PerSec < 1.2*float64(rate) {
					why := "no throughput figure"
					if top != nil {
						why = fmt.Sprintf("it replicates only %.0f changes/s at full speed; changes would queue without bound", top.PerSec)
					}
					r.Runs = append(r.Runs, report.Run{System: system, Nodes: nodes, Profile: cfg.Profile.Name, Rate: rate, Skipped: why})
					continue
				}
				x, err := scenario(ctx, f, log, system, nodes, cfg, setup{extra: ringArgs(f), observe: true})
				if err != nil {
					return "", err
				}
				r.Runs = append(r.Runs, *x)
			}
		}
	}

	if f.MemoryEntries > 0 {
		r.Memory, err = measureMemory(ctx, f, log, r)
		if err != nil {
			return "", err
		}
	}
	if f.ResyncRuns > 0 {
		if r.Resync, err = resyncRuns(ctx, f, log, r); err != nil {
			return "", err
		}
	}
	if r.Repair, err = repairRuns(ctx, f, log); err != nil {
		return "", err
	}
	r.Conntrackd, r.ConntrackdNote = runConntrackd(ctx, f, log)
	r.LoadAfter = loadavg()
	return r.Write(f.Out, method)
}

// sealingRounds measures the further pairs of full-speed runs, plain and
// sealed, of --sealing-rounds, back to back, alternating which goes first
// so that a machine getting busier or quieter does not favour one.
func sealingRounds(ctx context.Context, f *Flags, log *slog.Logger, r *report.Results, nodes int, cfg workload.Config) error {
	for round := 1; round < f.SealingRounds; round++ {
		pair := []string{report.UDPMapSyncSealed, report.UDPMapSync}
		if round%2 == 0 {
			slices.Reverse(pair)
		}
		for _, system := range pair {
			log.Info("sealing round", "round", round)
			x, err := scenario(ctx, f, log, system, nodes, cfg, setup{extra: ringArgs(f)})
			if err != nil {
				return err
			}
			x.Round = round
			r.SealingRounds = append(r.SealingRounds, *x)
		}
	}
	return nil
}

// systems are the systems perfrun knows how to deploy.
var systems = []string{report.UDPMapSync, report.UDPMapSyncSealed, report.GRPCStream, report.GRPCUnary}

func ringArgs(f *Flags) []string { return []string{"--ring-size", strconv.Itoa(f.RingSize)} }

// scenario deploys system as s says, measures one workload and tears it
// down.
func scenario(ctx context.Context, f *Flags, log *slog.Logger, system string, nodes int, cfg workload.Config, s setup) (*report.Run, error) {
	w, err := workload.New(cfg)
	if err != nil {
		return nil, err
	}
	log.Info("run", "system", system, "nodes", nodes, "profile", cfg.Profile.Name, "changes", cfg.Changes, "rate", cfg.Rate, "loss_percent", s.loss, "join", s.join)
	d, err := deploy(ctx, f, system, nodes, cfg.Profile, w.MaxEntries(), s)
	if err != nil {
		return nil, err
	}
	var x *report.Run
	if s.join == joinAfterWrites {
		x, err = d.lateJoin(ctx, f, cfg)
	} else {
		x, err = d.measure(ctx, f, cfg, s.observe)
	}
	if cerr := d.close(); cerr != nil && err == nil && x != nil {
		x.Notes = append(x.Notes, "stopping: "+cerr.Error())
	}
	if err != nil {
		return nil, fmt.Errorf("%s on %d nodes: %w", system, nodes, err)
	}
	addStats(d, x)
	args := []any{"changes_per_sec", int(x.PerSec), "lost", x.Lost, "writer_per_sec", int(x.WriterPerSec),
		"cpu_us_writer", x.WriterCPU, "cpu_us_sender", x.CPUSender, "cpu_us_sender_user", x.CPUSenderUser,
		"cpu_us_receiver", x.CPUReceiver, "cpu_us_receiver_user", x.CPUReceiverUser}
	if x.Latency != nil {
		args = append(args, "p50_us", x.Latency.P50, "p99_us", x.Latency.P99, "p999_us", x.Latency.P999)
	}
	log.Info("result", args...)
	return x, nil
}

// addStats copies the daemons' own counters into x: the sender's, and the
// receivers' loss and repair counters, which explain a run that lost or
// stalled.
func addStats(d *deployment, x *report.Run) {
	if !report.IsUDPMapSync(d.system) {
		return
	}
	s, err := d.daemonStats(0)
	if err != nil {
		x.Notes = append(x.Notes, err.Error())
		return
	}
	x.Stats = s
	for i := 1; i < len(d.pids); i++ {
		p, err := d.daemonStats(i)
		if err != nil {
			x.Notes = append(x.Notes, err.Error())
			continue
		}
		x.ResyncNeeded += p["resync_needed"]
		for _, k := range []string{"gaps_seen", "nacks_sent", "repaired", "hold_full", "resync_needed", "apply_errors", "malformed", "duplicates", "unauthenticated", "replayed"} {
			if p[k] > 0 {
				x.Notes = append(x.Notes, fmt.Sprintf("%s %s=%d", d.c.Topology.Nodes[i].Name, k, p[k]))
			}
		}
	}
	if s["ring_overflows"] > 0 {
		x.Notes = append(x.Notes, fmt.Sprintf("node1 ring_overflows=%d", s["ring_overflows"]))
	}
	if s["changes_sent"] > 0 && s["datagrams_sent"] > 0 {
		x.Notes = append(x.Notes, fmt.Sprintf("daemon: %.1f changes and %.0f bytes per datagram",
			float64(s["changes_sent"])/float64(s["datagrams_sent"]), float64(s["bytes_sent"])/float64(s["datagrams_sent"])))
	}
}

// measureRaw writes the throughput workload into a map nobody watches.
func measureRaw(ctx context.Context, f *Flags, p workload.Profile) (*report.Raw, error) {
	changes := changesOf(f, p)
	w, err := workload.New(workload.Config{Profile: p, Changes: changes, DeleteShare: f.DeleteShare, Batch: f.Batch})
	if err != nil {
		return nil, err
	}
	fs, err := netnstest.MountBPFFS()
	if err != nil {
		return nil, err
	}
	defer fs.Close()
	path := filepath.Join(fs.Dir, mapName)
	spec := netnstest.MapSpec{Name: mapName, Type: ebpf.Hash, KeySize: uint32(p.KeySize), ValueSize: uint32(p.ValueSize), MaxEntries: w.MaxEntries()}
	if err := netnstest.CreateMap(ctx, path, spec); err != nil {
		return nil, err
	}
	ms, err := loader.OpenMaps([]string{path})
	if err != nil {
		return nil, err
	}
	defer ms[0].Close()
	res, err := w.Run(ctx, ms[0])
	if err != nil {
		return nil, err
	}
	return &report.Raw{Profile: p.Name, Changes: changes, PerSec: float64(changes) / res.Seconds(),
		CPUPerChange: us(res.CPU) / float64(changes)}, nil
}

// changesOf is how many changes a throughput run of profile p writes.
func changesOf(f *Flags, p workload.Profile) int {
	if p == workload.Large {
		return f.LargeChanges
	}
	return f.Changes
}

// idleSettle is how long the memory run's daemons run with empty maps
// before their RSS is taken as the idle daemon's: a few announce periods.
const idleSettle = time.Second

// measureMemory fills a 1M-entry map on node1 of a 2-node udpmapsync
// cluster with the daemon's default ring, at a rate it sustains, and reads
// the daemons' peak RSS, before (idle, maps empty) and after.
func measureMemory(ctx context.Context, f *Flags, log *slog.Logger, r *report.Results) (*report.Run, error) {
	rate := 100_000
	if top := r.Find(report.UDPMapSync, 2, workload.Small.Name, 0); top != nil {
		rate = min(200_000, int(top.PerSec*0.6)/1000*1000)
	}
	cfg := workload.Config{Profile: workload.Small, Changes: f.MemoryEntries, Keys: f.MemoryEntries - 1,
		Batch: max(rate/1000, 1), Rate: rate, Tick: time.Millisecond}
	log.Info("memory run", "entries", f.MemoryEntries, "rate", rate)
	maxEntries := uint32(1)
	for maxEntries < uint32(f.MemoryEntries) {
		maxEntries *= 2
	}
	d, err := deploy(ctx, f, report.UDPMapSync, 2, workload.Small, maxEntries, setup{})
	if err != nil {
		return nil, err
	}
	// The daemons idle with their maps empty: what a daemon needs before
	// it holds any entry.
	time.Sleep(idleSettle)
	idleSender, idleReceiver, err := d.peakRSS()
	var x *report.Run
	if err == nil {
		x, err = d.measure(ctx, f, cfg, false)
	}
	if cerr := d.close(); cerr != nil && err == nil {
		x.Notes = append(x.Notes, "stopping: "+cerr.Error())
	}
	if err != nil {
		return nil, fmt.Errorf("memory run: %w", err)
	}
	x.IdleRSSSender, x.IdleRSSReceiver = idleSender, idleReceiver
	addStats(d, x)
	x.Notes = append(x.Notes, fmt.Sprintf("map of %d max entries, %d held at the end; default --ring-size (8 MiB) and --resend-buffer (64 MiB, 0.75 s of datagrams)", maxEntries, f.MemoryEntries))
	log.Info("result", "rss_sender_kib", x.RSSSender, "rss_receiver_kib", x.RSSReceiver,
		"idle_rss_sender_kib", x.IdleRSSSender, "idle_rss_receiver_kib", x.IdleRSSReceiver, "lost", x.Lost)
	return x, nil
}

// runConntrackd runs the conntrackd measurement if it is there and returns
// its result, or why there is none.
func runConntrackd(ctx context.Context, f *Flags, log *slog.Logger) (*report.ConntrackdResult, string) {
	st, err := os.Stat(f.Conntrackd)
	if err != nil {
		return nil, f.Conntrackd + " is missing"
	}
	if st.Mode()&0o111 == 0 || st.IsDir() {
		return nil, f.Conntrackd + " is not an executable"
	}
	log.Info("conntrackd", "run", f.Conntrackd)
	ctx, cancel := context.WithTimeout(ctx, f.ConntrackdTimeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, f.Conntrackd)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		tail := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(tail, '\n'); i >= 0 {
			tail = tail[i+1:]
		}
		return nil, fmt.Sprintf("%s failed (%v): %s", f.Conntrackd, err, tail)
	}
	res, err := report.ParseConntrackd(stdout.Bytes())
	if err != nil {
		return nil, err.Error()
	}
	return res, res.Notes
}

func newResults(f *Flags) *report.Results {
	host, _ := os.Hostname()
	var u unix.Utsname
	unix.Uname(&u)
	r := &report.Results{
		Date:       time.Now(),
		Host:       host,
		Kernel:     unix.ByteSliceToString(u.Release[:]),
		CPU:        cpuModel(),
		Cores:      runtime.NumCPU(),
		GoVersion:  runtime.Version(),
		Version:    f.Version,
		LoadBefore: loadavg(),
		Settings: [][2]string{
			{"cluster sizes", fmt.Sprintf("%v nodes (--nodes); beyond 3 only full-speed runs of udpmapsync and the gRPC stream, 16 B / 64 B", f.Nodes)},
			{"changes per throughput run", strconv.Itoa(f.Changes)},
			{"changes per unary gRPC throughput run", strconv.Itoa(f.UnaryChanges)},
			{"distinct keys", "changes / 2 (each key written about twice, never twice in one batch)"},
			{"deletes", fmt.Sprintf("%.0f%% of the changes, in whole delete batches", f.DeleteShare*100)},
			{"batch at full speed", fmt.Sprintf("%d changes per syscall", f.Batch)},
			{"latency runs", fmt.Sprintf("%v at each of %v changes/s, one batch per ms", f.LatencyFor, f.Rates)},
			{"replicators' capture ring", fmt.Sprintf("%d MiB (--ring-size), so a writer faster than the replicator does not overflow it", f.RingSize>>20)},
			{"udpmapsync flags", "netns-test defaults (--capture auto, --flush-interval 200µs, MTU 1500), --announce-interval 200ms and --insecure-no-key: the daemon unsealed, as on a trusted link"},
			{report.UDPMapSyncSealed, "the same flags with --key-file instead of --insecure-no-key (the daemon's default): a fresh random 32-byte key per cluster, base64 in a mode-0600 file (AES-256-GCM)"},
			{"pairs per cost of sealing", fmt.Sprintf("%d (--sealing-rounds): the throughput table's and %d more, back to back", f.SealingRounds, max(f.SealingRounds-1, 0))},
			{"gRPC baselines", "perf/cmd/grpcsync: --flush-interval 200µs, --batch-bytes 64 KiB (stream), one TCP connection per peer, no TLS"},
		},
	}
	if f.ResyncRuns > 0 {
		r.Settings = append(r.Settings, [2]string{"resync runs", fmt.Sprintf("udpmapsync, 2 nodes, 16 B / 64 B, %d changes at full speed: %d pairs of runs of running nodes without loss and with %d %% loss into node2 (--resync-runs, --loss-percent), one joining under that loss; a late join of %d entries (--join-entries); %d runs on 2 and on 3 nodes of a writer of distinct keys in batches of %d (--fast-runs, --fast-batch)",
			f.Changes, f.ResyncRuns, f.LossPercent, f.JoinEntries, f.FastRuns, f.FastBatch)})
	}
	if f.CPUProfile != "" {
		r.Settings = append(r.Settings, [2]string{"daemons profiled", "--cpuprofile: every udpmapsync daemon ran with the CPU profiler, whose own cost is in its CPU figures"})
	}
	return r
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}
