package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
	"github.com/udpmapsync/udpmapsync/perf/report"
)

// repairChanges and repairBatch shape the repair runs' writes: some
// thousand datagrams, so that a few percent lost is tens of them.
const (
	repairChanges = 50_000
	repairBatch   = 500
)

// repairRuns measures, at each of --repair-nodes, what --loss-percent of
// node1's datagrams dropped upstream of every receiver costs: with group
// repair (the default), with --repair unicast, the two back to back in
// the same run, and with --peers. A run that fails is reported as not
// measured; only an interrupt stops them.
func repairRuns(ctx context.Context, f *Flags, log *slog.Logger) ([]report.RepairRun, error) {
	var out []report.RepairRun
	for _, nodes := range f.RepairNodes {
		for _, mode := range []string{report.RepairUnicast, report.RepairGroup, report.RepairPeers} {
			cfg := netnstest.RepairCostConfig{Nodes: nodes, Percent: f.LossPercent, Changes: repairChanges, Batch: repairBatch, Binary: f.Daemon,
				Dir: filepath.Join(f.Work, fmt.Sprintf("repair-%d-%s", nodes, mode))}
			switch mode {
			case report.RepairUnicast:
				cfg.Args = []string{"--repair", "unicast"}
			case report.RepairPeers:
				cfg.Unicast = true
			}
			if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
				return nil, err
			}
			log.Info("repair run", "nodes", nodes, "repair", mode)
			x := report.RepairRun{Mode: mode, Nodes: nodes, Percent: f.LossPercent, Changes: repairChanges}
			c, err := netnstest.MeasureRepairCost(ctx, cfg)
			if err != nil {
				if ctx.Err() != nil {
					return nil, err
				}
				log.Warn("repair run failed", "nodes", nodes, "repair", mode, "err", err)
				x.Skipped = err.Error()
			} else {
				x.Lost, x.Requests, x.Suppressed, x.Resent, x.Sent, x.Resyncs = c.Lost, c.Requests, c.Suppressed, c.Resent, c.Sent, c.Resyncs
				x.SenderCPU = c.SenderCPU.Seconds()
				log.Info("repair run", "result", c.String())
			}
			out = append(out, x)
		}
	}
	return out, nil
}
