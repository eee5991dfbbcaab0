package report

import (
	"fmt"
	"slices"
	"strings"
)

// The resync targets (issue 12: merge, never adopt; full resync at the
// kernel's write speed).
const (
	// LateJoinShare is the least share of the raw batch-write rate at
	// which a late joiner must take its peer's entries.
	LateJoinShare = 0.5
	// LossFactor is the most a run with loss may take, over the time of
	// the loss-free run.
	LossFactor = 2.0
	// ResyncLossRuns is how many runs of running peers with loss the
	// target asks for.
	ResyncLossRuns = 5
	// RSSPerEntry is the memory target's allowance per entry, bytes, on
	// top of 64 MiB.
	RSSPerEntry = 24
	// issueLoss is the target's loss, %, named in a goal that was not
	// measured.
	issueLoss = 5
)

// Resync is the runs of the resync targets: udpmapsync on 2 nodes, each
// run on a fresh cluster, at full speed.
type Resync struct {
	// LossPercent is the share of datagrams into node2 dropped at random.
	LossPercent int
	// LossFree are the runs of two running nodes without loss, each
	// before one of Loss: the time the live stream needs for the writes,
	// which the others are compared with (the median).
	LossFree []Run
	// UnderLoad is the run in which node2's daemon started as node1's
	// writer did, with the loss into it.
	UnderLoad *Run
	// Loss are the runs of two running nodes with the loss into node2.
	Loss []Run
	// LateJoin is node2 joining a node1 that holds Changes entries:
	// Seconds from node2's start until it was ready and held them all,
	// PerSec entries per second. Nil if skipped.
	LateJoin *Run
	// FastWriter are the runs, on 2 and 3 nodes without loss, of a writer
	// of distinct keys in large batches, faster than a receiver applies.
	FastWriter []Run `json:",omitempty"`
}

// LossFreeSeconds is the median time of the loss-free runs that ended
// with every entry on node2, 0 if none did.
func (s *Resync) LossFreeSeconds() float64 { return median(s.lossFree()) }

func (s *Resync) lossFree() []float64 {
	var v []float64
	for i := range s.LossFree {
		if x := &s.LossFree[i]; finished(x) {
			v = append(v, x.Seconds)
		}
	}
	return v
}

// lossFreeTime formats the median loss-free time, with the range and the
// count of the runs when there are several.
func (s *Resync) lossFreeTime() string {
	v := s.lossFree()
	if len(v) == 0 {
		return "no loss-free run measured"
	}
	out := secs(median(v)) + " loss-free"
	if len(v) > 1 {
		out += fmt.Sprintf(" (median of %d runs, %.2f–%.2f s)", len(v), slices.Min(v), slices.Max(v))
	}
	return out
}

// Factor is x's time over the median loss-free time, 0 if x did not end
// with every entry on node2 or no loss-free run did.
func (s *Resync) Factor(x *Run) float64 {
	lf := s.LossFreeSeconds()
	if lf == 0 || x == nil || !finished(x) {
		return 0
	}
	return x.Seconds / lf
}

// finished says whether run x was measured and ended with every entry on
// every peer.
func finished(x *Run) bool { return x.Skipped == "" && x.Converged && x.Seconds > 0 }

// runs lists the runs that were measured; none for a nil s.
func (s *Resync) runs() []Run {
	if s == nil {
		return nil
	}
	var out []Run
	for _, x := range append([]*Run{s.UnderLoad, s.LateJoin}, pointers(slices.Concat(s.LossFree, s.Loss, s.FastWriter))...) {
		if x != nil && x.Skipped == "" {
			out = append(out, *x)
		}
	}
	return out
}

func pointers(runs []Run) []*Run {
	out := make([]*Run, len(runs))
	for i := range runs {
		out[i] = &runs[i]
	}
	return out
}

// resyncTargets checks the resync runs and the memory run against the
// resync issue's targets.
func (r *Results) resyncTargets() []Target {
	s := r.Resync
	loss := issueLoss
	if s != nil {
		loss = s.LossPercent
	}
	ts := []Target{r.lateJoinTarget()}

	t := Target{Goal: fmt.Sprintf("join under load with %d %% loss: every entry within %g× the live stream's time", loss, LossFactor)}
	switch {
	case s == nil || s.UnderLoad == nil:
		t.Measured = "not measured"
	case s.UnderLoad.Skipped != "":
		t.Measured = "not measured: " + s.UnderLoad.Skipped
	case !finished(s.UnderLoad):
		t.Measured = fmt.Sprintf("node2 never held every entry (%d differing)", s.UnderLoad.Lost)
		t.Met = ptr(false)
	case s.Factor(s.UnderLoad) == 0:
		t.Measured = "no loss-free time to compare with"
	default:
		f := s.Factor(s.UnderLoad)
		t.Measured = fmt.Sprintf("%.2f×: %s against %s; %d changes", f, secs(s.UnderLoad.Seconds), s.lossFreeTime(), s.UnderLoad.Changes)
		t.Met = ptr(f <= LossFactor)
	}
	ts = append(ts, t)

	t = Target{Goal: fmt.Sprintf("running peer with %d %% loss: every entry within %g× the loss-free time in each of %d runs", loss, LossFactor, ResyncLossRuns)}
	if s == nil || len(s.Loss) == 0 {
		t.Measured = "not measured"
	} else if s.LossFreeSeconds() == 0 {
		t.Measured = "no loss-free time to compare with"
	} else {
		var each []string
		met, resynced := true, 0
		for i := range s.Loss {
			x := &s.Loss[i]
			f := s.Factor(x)
			switch {
			case x.Skipped != "":
				each = append(each, "not measured")
			case f == 0:
				each = append(each, "never converged")
			default:
				each = append(each, fmt.Sprintf("%.2f×", f))
			}
			met = met && f > 0 && f <= LossFactor
			if x.ResyncNeeded > 0 {
				resynced++
			}
		}
		runs := "runs"
		if len(s.Loss) == 1 {
			runs = "run"
		}
		t.Measured = fmt.Sprintf("%s of %s; %d %s, %d in which node2 gave a gap up for a full resync", strings.Join(each, ", "), s.lossFreeTime(), len(s.Loss), runs, resynced)
		if len(s.Loss) < ResyncLossRuns {
			t.Measured += fmt.Sprintf("; the target asks for %d", ResyncLossRuns)
		}
		t.Met = ptr(met)
	}
	ts = append(ts, t)

	t = Target{Goal: fmt.Sprintf("daemon RSS < 64 MiB + %d B per entry with a 1M-entry map", RSSPerEntry)}
	if m := r.Memory; m != nil && m.Skipped == "" {
		limit := rssLimitKiB + int64(RSSPerEntry*m.Changes)/1024
		t.Measured = fmt.Sprintf("VmHWM %s sender, %s receiver against %s (%d entries)", mib(m.RSSSender), mib(m.RSSReceiver), mib(limit), m.Changes)
		if m.IdleRSSSender > 0 && m.IdleRSSReceiver > 0 {
			t.Measured += fmt.Sprintf("; per entry over the idle daemon (%s, %s): %.0f B sender, %.0f B receiver",
				mib(m.IdleRSSSender), mib(m.IdleRSSReceiver), perEntry(m.RSSSender, m.IdleRSSSender, m.Changes), perEntry(m.RSSReceiver, m.IdleRSSReceiver, m.Changes))
		}
		t.Met = ptr(max(m.RSSSender, m.RSSReceiver) < limit)
	} else {
		t.Measured = "not measured"
	}
	return append(ts, t)
}

// lateJoinTarget checks the late join against the raw batch-write rate of
// its profile.
func (r *Results) lateJoinTarget() Target {
	t := Target{Goal: fmt.Sprintf("1M-entry late join at ≥ %g of the raw batch-write rate", LateJoinShare)}
	var x *Run
	if r.Resync != nil {
		x = r.Resync.LateJoin
	}
	switch {
	case x == nil:
		t.Measured = "not measured"
	case x.Skipped != "":
		t.Measured = "not measured: " + x.Skipped
	case !finished(x):
		t.Measured = fmt.Sprintf("node2 never held every entry (%d differing)", x.Lost)
		t.Met = ptr(false)
	case r.RawRate(x.Profile) == 0:
		t.Measured = fmt.Sprintf("%s entries/s; no raw rate to compare with", si(x.PerSec))
	case x.TransferSeconds > 0:
		// The transfer is what the target is about; from the daemon's
		// start the join also loads its programs and proves its peer's
		// address (issue 22's target counts from the start).
		raw := r.RawRate(x.Profile)
		rate := float64(x.Changes) / x.TransferSeconds
		t.Measured = fmt.Sprintf("%.2f of %s/s (transfer: %s entries/s, %d entries in %s); from the daemon's start %.2f (%s)",
			rate/raw, si(raw), si(rate), x.Changes, secs(x.TransferSeconds), x.PerSec/raw, secs(x.Seconds))
		t.Met = ptr(rate/raw >= LateJoinShare)
	default:
		f := x.PerSec / r.RawRate(x.Profile)
		t.Measured = fmt.Sprintf("%.2f of %s/s (%s entries/s: %d entries in %s)", f, si(r.RawRate(x.Profile)), si(x.PerSec), x.Changes, secs(x.Seconds))
		t.Met = ptr(f >= LateJoinShare)
	}
	return t
}

// perEntry is the bytes per entry of rss over idle, both KiB.
func perEntry(rss, idle int64, entries int) float64 {
	if entries <= 0 {
		return 0
	}
	return float64(rss-idle) * 1024 / float64(entries)
}

// resyncSection is the report's section on the resync runs, "" without
// them.
func (r *Results) resyncSection() string {
	s := r.Resync
	if s == nil {
		return ""
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("\n## Resync and loss\n\n")
	p("udpmapsync on 2 nodes, %s, every run on a fresh cluster. Loss: %d %% of the datagrams arriving at node2's port, repair requests' answers and resyncs included, dropped at random (nftables `numgen random`). "+
		"A run's time is from the first write until node2 holds every entry (whole maps compared); × loss-free is that over the median time of the runs without loss: %s. "+
		"The late join counts from the start of node2's daemon until it is ready and holds every entry; its rate is entries/s, its CPU, bytes and packets per entry from that start. "+
		"The fast writer writes distinct keys (nothing coalesces) in large batches, without loss, on 2 and 3 nodes: faster than a receiver applies them.\n\n", r.resyncProfile(), s.LossPercent, s.lossFreeTime())
	p("| run | changes | time | per s | × loss-free | of raw | gaps given up (resync_needed) | CPU µs/change sender | receiver | bytes/change | packets/change | lost |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	fastRow := false
	row := func(what string, x *Run) {
		if x == nil {
			return
		}
		if x.Skipped != "" {
			p("| %s | %d | not measured: %s | | | | | | | | | |\n", what, x.Changes, x.Skipped)
			return
		}
		factor, ofRaw := "", ""
		if f := s.Factor(x); f > 0 && x != s.LateJoin && !fastRow {
			factor = fmt.Sprintf("**%.2f×**", f)
		}
		if raw := r.RawRate(x.Profile); raw > 0 && x.PerSec > 0 {
			ofRaw = fmt.Sprintf("%.2f", x.PerSec/raw)
		}
		p("| %s | %d | %s | %s | %s | %s | %d | %.2f | %.2f | %.1f | %.3f | %s |\n", what, x.Changes, secs(x.Seconds), si(x.PerSec), factor, ofRaw,
			x.ResyncNeeded, x.CPUSender, x.CPUReceiver, x.BytesPerChange, x.PacketsPerChange, lostCell(x))
	}
	for i := range max(len(s.LossFree), len(s.Loss)) {
		if i < len(s.LossFree) {
			row(fmt.Sprintf("2 running nodes, no loss (the live stream), run %d", i+1), &s.LossFree[i])
		}
		if i < len(s.Loss) {
			row(fmt.Sprintf("2 running nodes, %d %% loss, run %d", s.LossPercent, i+1), &s.Loss[i])
		}
	}
	row(fmt.Sprintf("node2 joins as the writes start, %d %% loss", s.LossPercent), s.UnderLoad)
	if x := s.LateJoin; x != nil {
		row(fmt.Sprintf("late join: node2 starts beside a node1 holding %d entries", x.Changes), x)
	}
	fastRow = true // another workload: no loss-free time to compare with
	for i := range s.FastWriter {
		x := &s.FastWriter[i]
		row(fmt.Sprintf("fast writer of distinct keys, %d nodes, run %d", x.Nodes, i+1), x)
	}
	notes := func(what string, x *Run) {
		if x != nil && len(x.Notes) > 0 {
			p("\n- %s: %s", what, strings.Join(x.Notes, "; "))
		}
	}
	for i := range s.LossFree {
		notes(fmt.Sprintf("no loss, run %d", i+1), &s.LossFree[i])
	}
	for i := range s.Loss {
		notes(fmt.Sprintf("loss, run %d", i+1), &s.Loss[i])
	}
	notes("join under load", s.UnderLoad)
	notes("late join", s.LateJoin)
	for i := range s.FastWriter {
		notes(fmt.Sprintf("fast writer, %d nodes, run %d", s.FastWriter[i].Nodes, i+1), &s.FastWriter[i])
	}
	p("\n")
	return b.String()
}

// resyncProfile names the profile of the resync runs.
func (r *Results) resyncProfile() string {
	for _, x := range r.Resync.runs() {
		return x.Profile
	}
	return "no run measured"
}

// secs formats seconds.
func secs(v float64) string { return fmt.Sprintf("%.2f s", v) }
