package report

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Write writes the report into dir as <date>-<host>.md, with its charts
// (<date>-<host>-throughput.png, -latency.png) and the results as JSON
// beside it, and returns the report's path. method is the text explaining
// how the figures were taken.
func (r *Results) Write(dir, method string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("write report: %w", err)
	}
	stem := r.Date.Format("2006-01-02") + "-" + r.Host
	throughputPNG, latencyPNG := stem+"-throughput.png", stem+"-latency.png"
	if err := r.throughputChart(filepath.Join(dir, throughputPNG)); err != nil {
		return "", err
	}
	if err := r.latencyChart(filepath.Join(dir, latencyPNG)); err != nil {
		return "", err
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		return "", fmt.Errorf("write report: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, stem+".json"), js.Bytes(), 0o644); err != nil {
		return "", fmt.Errorf("write report: %w", err)
	}
	md := r.markdown(method, throughputPNG, latencyPNG)
	path := filepath.Join(dir, stem+".md")
	if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
		return "", fmt.Errorf("write report: %w", err)
	}
	return path, nil
}

func (r *Results) markdown(method, throughputPNG, latencyPNG string) string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# udpmapsync performance, %s on %s\n\n", r.Date.Format("2006-01-02 15:04 MST"), r.Host)
	p("Daemon %s; %s; %d cores (%s); kernel %s. Produced by `make perf`; every figure below was measured in this run.\n\n",
		r.Version, r.GoVersion, r.Cores, r.CPU, r.Kernel)
	p("Load average (/proc/loadavg) before the run: %s; after: %s. The machine is shared: figures from a busy machine are lower and noisier, so compare ratios within one report rather than across reports.\n\n", r.LoadBefore, r.LoadAfter)

	profile := ""
	if len(r.Raw) > 0 {
		profile = r.Raw[0].Profile
	}
	p("## Targets\n\n| target | measured | |\n|---|---|---|\n")
	for _, t := range r.Targets(profile) {
		verdict := "not measured"
		if t.Met != nil {
			verdict = map[bool]string{true: "**met**", false: "**missed**"}[*t.Met]
		}
		p("| %s | %s | %s |\n", t.Goal, t.Measured, verdict)
	}
	if u := r.Find(UDPMapSync, 2, profile, 0); u != nil && u.WriterCPU > 0 && u.CPUSender > 0 && u.CPUReceiver > 0 {
		p("\n%s\n", limits(u, r.Cores))
	}

	p("\n## Throughput\n\nChanges written on node1 as fast as the writer can, replicated to every other node; the rate counts from the first write until every peer holds the final state (checked by comparing whole maps). Raw: the same writes into a map with no capture and no replicator.\n\n")
	p("![throughput](%s)\n\n", throughputPNG)
	p("| profile | raw batch writes | |\n|---|---|---|\n")
	for _, x := range r.Raw {
		p("| %s | %s changes/s | %.2f µs CPU per change (%d changes) |\n", x.Profile, si(x.PerSec), x.CPUPerChange, x.Changes)
	}
	p("\n| system | nodes | profile | changes | changes/s | of raw | writer changes/s | CPU µs/change sender | receiver | writer | bytes/change | packets/change | RSS sender | receiver | lost |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.Runs {
		if x.Rate != 0 {
			continue
		}
		if x.Skipped != "" {
			p("| %s | %d | %s | | not measured: %s | | | | | | | | | | |\n", x.System, x.Nodes, x.Profile, x.Skipped)
			continue
		}
		ofRaw := ""
		if raw := r.RawRate(x.Profile); raw > 0 {
			ofRaw = fmt.Sprintf("%.2f", x.PerSec/raw)
		}
		p("| %s | %d | %s | %d | **%s** | %s | %s | %.2f | %.2f | %.2f | %.1f | %.3f | %s | %s | %s |\n",
			x.System, x.Nodes, x.Profile, x.Changes, si(x.PerSec), ofRaw, si(x.WriterPerSec),
			x.CPUSender, x.CPUReceiver, x.WriterCPU, x.BytesPerChange, x.PacketsPerChange,
			mib(x.RSSSender), mib(x.RSSReceiver), lostCell(&x))
	}
	if c := r.Conntrackd; c != nil {
		p("| conntrackd | %d | conntrack entries | | **%s** | | | %.2f | %.2f | | | | | | |\n",
			c.Nodes, si(c.ChangesPerSec), c.CPUPerChangeSender, c.CPUPerChangeReceiver)
	} else {
		p("| conntrackd | 2 | | | not measured: %s | | | | | | | | | | |\n", r.ConntrackdNote)
	}
	if c := r.Conntrackd; c != nil && c.Notes != "" {
		p("\nconntrackd (perf/conntrackd/run): %s\n", c.Notes)
	}

	p("%s", r.sealingSection())

	p("\n## Latency\n\nChanges written at a fixed rate; time from the start of the batch syscall that wrote a change on node1 to its apply on a peer (all peers pooled). Waited for a core: the longest any replicator's thread, or the harness's (its observers time the applies), was runnable but not running between two reads of its run delay, and all their waits summed, per second of the run: on a shared machine a tail with no repair, hold or resync in the daemons' counters is these waits.\n\n")
	p("![latency CDF](%s)\n\n", latencyPNG)
	p("| system | nodes | rate | samples | p50 | p99 | p99.9 | max | waited for a core, longest: replicator / harness | summed, ms/s | CPU µs/change sender | receiver | lost |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.Runs {
		if x.Rate == 0 {
			continue
		}
		if x.Skipped != "" || x.Latency == nil {
			why := x.Skipped
			if why == "" {
				why = "no samples"
			}
			p("| %s | %d | %s/s | | not measured: %s | | | | | | | | |\n", x.System, x.Nodes, si(float64(x.Rate)), why)
			continue
		}
		l := x.Latency
		waited, summed := "", ""
		if w := x.Waits; w != nil {
			waited = fmt.Sprintf("%s / %s", us(w.ReplicatorMs*1e3), us(w.HarnessMs*1e3))
			summed = fmt.Sprintf("%.0f / %.0f", w.ReplicatorPerSec, w.HarnessPerSec)
		}
		p("| %s | %d | %s/s | %d | %s | **%s** | %s | %s | %s | %s | %.2f | %.2f | %s |\n", x.System, x.Nodes, si(float64(x.Rate)),
			l.Samples, us(l.P50), us(l.P99), us(l.P999), us(l.Max), waited, summed, x.CPUSender, x.CPUReceiver, lostCell(&x))
	}

	if m := r.Memory; m != nil {
		p("\n## Memory\n\n")
		if m.Skipped != "" {
			p("Not measured: %s\n", m.Skipped)
		} else {
			p("%s, %d nodes, %s: %d changes written at %s/s. Peak RSS (VmHWM): sender **%s**, receiver **%s**; lost %s.\n",
				m.System, m.Nodes, m.Profile, m.Changes, si(float64(m.Rate)), mib(m.RSSSender), mib(m.RSSReceiver), lostCell(m))
			if m.IdleRSSSender > 0 && m.IdleRSSReceiver > 0 {
				p("\nThe same daemons idle, before the first write, maps empty: sender %s, receiver %s; so **%.0f B** (sender) and **%.0f B** (receiver) per entry held.\n",
					mib(m.IdleRSSSender), mib(m.IdleRSSReceiver), perEntry(m.RSSSender, m.IdleRSSSender, m.Changes), perEntry(m.RSSReceiver, m.IdleRSSReceiver, m.Changes))
			}
		}
		for _, n := range m.Notes {
			p("\n- %s", n)
		}
		p("\n")
	}

	p("%s", r.resyncSection())
	p("%s", r.repairSection())

	p("%s", r.captureCostSection())

	p("\n## Go benchmarks (`make bench`)\n\n")
	if len(r.Benchmarks) == 0 {
		p("Not measured: %s\n", r.BenchNote)
	} else {
		p("| package | benchmark | ns/op | B/op | allocs/op | other |\n|---|---|---|---|---|---|\n")
		for _, x := range r.Benchmarks {
			p("| %s | %s | %.0f | %.0f | %.0f | %s |\n", x.Package, x.Name, x.NsPerOp, x.BytesPerOp, x.AllocsPerOp, strings.Join(x.Metrics, ", "))
		}
	}

	notes := false
	for _, x := range r.Runs {
		if len(x.Notes) == 0 {
			continue
		}
		if !notes {
			p("\n## Notes on individual runs\n\n")
			notes = true
		}
		rate := "full speed"
		if x.Rate > 0 {
			rate = si(float64(x.Rate)) + "/s"
		}
		p("- %s, %d nodes, %s, %s: %s\n", x.System, x.Nodes, x.Profile, rate, strings.Join(x.Notes, "; "))
	}
	// The sealing rounds only where they noted more than their datagrams.
	for _, x := range r.SealingRounds {
		var ns []string
		for _, n := range x.Notes {
			if !strings.HasPrefix(n, "daemon: ") {
				ns = append(ns, n)
			}
		}
		if len(ns) == 0 {
			continue
		}
		if !notes {
			p("\n## Notes on individual runs\n\n")
			notes = true
		}
		p("- %s, %d nodes, %s, full speed, sealing round %d: %s\n", x.System, x.Nodes, x.Profile, x.Round, strings.Join(ns, "; "))
	}
	if r.Profile != "" {
		p("\n## Where the daemon's time goes\n\n```\n%s\n```\n", strings.TrimSpace(r.Profile))
	}

	p("\n## How it was measured\n\n%s\n", strings.TrimSpace(method))
	p("\n### Settings\n\n| setting | value |\n|---|---|\n")
	for _, s := range r.Settings {
		p("| %s | %s |\n", s[0], s[1])
	}
	return b.String()
}

func lostCell(x *Run) string {
	if !x.Converged {
		return fmt.Sprintf("**%d (never converged)**", x.Lost)
	}
	return fmt.Sprint(x.Lost)
}

// limits says what bounds udpmapsync's full-speed rate in run u on a
// machine of cores shared by the writer and the daemons: their CPU per
// change, summed.
func limits(u *Run, cores int) string {
	sum := u.WriterCPU + u.CPUSender + u.CPUReceiver
	top, share := "writer", u.WriterCPU
	if u.CPUSender > share {
		top, share = "sender", u.CPUSender
	}
	if u.CPUReceiver > share {
		top, share = "receiver", u.CPUReceiver
	}
	return fmt.Sprintf("**What limits the rate in this run.** CPU: at full speed on %d nodes the writer, the sender and "+
		"the receiver cost %.2f + %.2f + %.2f = %.2f µs per change, and they share %d cores, so together they "+
		"can do at most %s changes/s; %s were measured. The largest share is the %s's (%.0f %%). Where each "+
		"process spends its time, and what was done about it: [perf/PROFILE.md](../PROFILE.md).",
		u.Nodes, u.WriterCPU, u.CPUSender, u.CPUReceiver, sum, cores, si(float64(cores)/sum*1e6), si(u.PerSec),
		top, 100*share/sum)
}
