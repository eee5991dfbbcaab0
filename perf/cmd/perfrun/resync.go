package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/cilium/ebpf"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
	"github.com/udpmapsync/udpmapsync/perf/report"
	"github.com/udpmapsync/udpmapsync/perf/workload"
)

// idleWait bounds the wait for node1's daemon to have sent what it captured
// before a late join.
const idleWait = time.Minute

// resyncRuns measures the resync targets (issues 12 and 22) on 2 nodes of
// udpmapsync with the 16 B / 64 B profile, each run on a fresh cluster:
// --resync-runs pairs of full-speed runs of two running nodes, without
// loss (the live stream, which the others are compared with) and with
// --loss-percent into node2; node2 joining as node1's writer starts, with
// that loss; node2 joining late a peer holding --join-entries entries;
// and --fast-runs runs on 2 and on 3 nodes of a writer of --changes
// distinct keys in batches of --fast-batch, faster than a receiver applies.
// A run that fails is reported as not measured; only an interrupt stops
// them.
func resyncRuns(ctx context.Context, f *Flags, log *slog.Logger, r *report.Results) (*report.Resync, error) {
	if r.RawRate(workload.Small.Name) == 0 {
		raw, err := measureRaw(ctx, f, workload.Small)
		if err != nil {
			return nil, err
		}
		r.Raw = append(r.Raw, *raw)
	}
	runOn := func(nodes int, what string, cfg workload.Config, s setup) (*report.Run, error) {
		log.Info("resync run", "run", what, "nodes", nodes)
		s.extra = ringArgs(f)
		x, err := scenario(ctx, f, log, report.UDPMapSync, nodes, cfg, s)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			log.Warn("resync run failed", "run", what, "err", err)
			x = &report.Run{System: report.UDPMapSync, Nodes: nodes, Profile: cfg.Profile.Name, Changes: cfg.Changes, Skipped: err.Error()}
		}
		return x, nil
	}
	run := func(what string, cfg workload.Config, s setup) (*report.Run, error) { return runOn(2, what, cfg, s) }
	rs := &report.Resync{LossPercent: f.LossPercent}
	cfg := workload.Config{Profile: workload.Small, Changes: f.Changes, DeleteShare: f.DeleteShare, Batch: f.Batch}
	// On a shared machine one loss-free run can be half as fast as the
	// next: each run with loss follows one without.
	for i := range f.ResyncRuns {
		for _, loss := range []int{0, f.LossPercent} {
			x, err := run(fmt.Sprintf("loss %d%%, %d of %d", loss, i+1, f.ResyncRuns), cfg, setup{loss: loss})
			if err != nil {
				return nil, err
			}
			if loss == 0 {
				rs.LossFree = append(rs.LossFree, *x)
			} else {
				rs.Loss = append(rs.Loss, *x)
			}
		}
	}
	var err error
	if rs.UnderLoad, err = run("join under load", cfg, setup{loss: f.LossPercent, join: joinWithWrites}); err != nil {
		return nil, err
	}
	if f.JoinEntries > 0 {
		late := workload.Config{Profile: workload.Small, Changes: f.JoinEntries, Keys: f.JoinEntries - 1, Batch: f.Batch}
		if rs.LateJoin, err = run("late join", late, setup{join: joinAfterWrites}); err != nil {
			return nil, err
		}
	}
	// A writer faster than the receivers: distinct keys, so nothing
	// coalesces, in large batches, without loss.
	fast := workload.Config{Profile: workload.Small, Changes: f.Changes, Keys: f.Changes - 1, Batch: f.FastBatch}
	for _, nodes := range []int{2, 3} {
		for i := range f.FastRuns {
			x, err := runOn(nodes, fmt.Sprintf("fast writer, %d of %d", i+1, f.FastRuns), fast, setup{})
			if err != nil {
				return nil, err
			}
			rs.FastWriter = append(rs.FastWriter, *x)
		}
	}
	return rs, nil
}

// lateJoin writes cfg's workload into node1's map at full speed, waits
// until node1's daemon has sent it, then starts node2's daemon and times it
// from its start until it is ready and holds every entry. Its rate is
// entries per second; CPU, bytes and packets are per entry, from node2's
// start.
func (d *deployment) lateJoin(ctx context.Context, f *Flags, cfg workload.Config) (*report.Run, error) {
	run := &report.Run{System: d.system, Nodes: len(d.pids), Profile: cfg.Profile.Name, Changes: cfg.Changes}
	w, src, err := d.source(cfg)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	if _, err := w.Run(ctx, src); err != nil {
		return nil, err
	}
	if err := waitIdle(ctx, d.pids[0], idleWait); err != nil {
		return nil, fmt.Errorf("late join: node1's daemon: %w", err)
	}
	peer, err := ebpf.LoadPinnedMap(d.c.PinPath(1, mapName), nil)
	if err != nil {
		return nil, fmt.Errorf("open peer map: %w", err)
	}
	defer peer.Close()

	before, err := d.snapshot()
	if err != nil {
		return nil, err
	}
	start := workload.Now()
	if err := d.start(1); err != nil {
		return nil, fmt.Errorf("late join: %w", err)
	}
	ready := workload.Now()
	diffs, converged, at := compareWait(ctx, []*ebpf.Map{peer}, netnstest.Contents(w.Want()), f.Settle)
	after, err := d.snapshot()
	if err != nil {
		return nil, err
	}
	if run.RSSSender, run.RSSReceiver, err = d.peakRSS(); err != nil {
		return nil, err
	}
	addCosts(run, before, after, cfg.Changes)
	run.Converged = converged
	countLost(run, diffs)
	run.Seconds = float64(max(ready, at)-start) / 1e9
	run.PerSec = float64(cfg.Changes) / run.Seconds
	note := fmt.Sprintf("node2 ready %.2f s after its start", float64(ready-start)/1e9)
	if l, err := d.logLine(1, "ready"); err == nil {
		note += fmt.Sprintf(" (its log: after=%s how=%s)", l["after"], l["how"])
	}
	if at > ready {
		note += fmt.Sprintf("; it held every entry %.2f s after that", float64(at-ready)/1e9)
	}
	if l, err := d.logLine(1, "full resync complete"); err == nil {
		if took, err := time.ParseDuration(l["took"]); err == nil {
			run.TransferSeconds = took.Seconds()
			note += fmt.Sprintf("; its resync took %s for %s entries", l["took"], l["entries"])
		}
	}
	run.Notes = append(run.Notes, note)
	return run, nil
}
