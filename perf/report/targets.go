package report

import (
	"fmt"
	"slices"
	"strings"
)

// Target is one of the performance goals of the project, checked against a
// run. Met is nil when the figure could not be measured.
type Target struct {
	Goal, Measured string
	Met            *bool
}

// hotPath names the benchmarks of the per-change path: capture read,
// coalesce and encode, decode and apply, the batch syscalls.
var hotPath = []string{"CaptureRead", "Encode", "CoalesceEncode", "Decode", "DecodeApply", "UpdateBatch", "DeleteBatch"}

// rssLimitKiB is the memory target: 64 MiB.
const rssLimitKiB = 64 << 10

// Targets checks r against the goals of the performance issue. Ratios use
// the 2-node runs of the default profile at full speed.
func (r *Results) Targets(profile string) []Target {
	var ts []Target
	udp := r.Find(UDPMapSync, 2, profile, 0)
	udp3 := r.Find(UDPMapSync, 3, profile, 0)
	raw := r.RawRate(profile)

	t := Target{Goal: "replication ≥ ½ of the raw batch-write rate"}
	if udp != nil && raw > 0 {
		f := udp.PerSec / raw
		t.Measured = fmt.Sprintf("%.2f of %s/s (%s/s replicated, 2 nodes)", f, si(raw), si(udp.PerSec))
		if udp3 != nil {
			t.Measured += fmt.Sprintf("; %.2f with 3 nodes", udp3.PerSec/raw)
		}
		t.Met = ptr(f >= 0.5)
	} else {
		t.Measured = "not measured"
	}
	ts = append(ts, t)

	for _, c := range []struct {
		system string
		factor float64
	}{{GRPCUnary, 100}, {GRPCStream, 3}} {
		t := Target{Goal: fmt.Sprintf("≥ %g× %s", c.factor, c.system)}
		if base := r.Find(c.system, 2, profile, 0); udp != nil && base != nil && base.PerSec > 0 {
			f := udp.PerSec / base.PerSec
			t.Measured = fmt.Sprintf("%.1f× (%s/s vs %s/s, 2 nodes)", f, si(udp.PerSec), si(base.PerSec))
			t.Met = ptr(f >= c.factor)
		} else {
			t.Measured = "not measured"
		}
		ts = append(ts, t)
	}

	t = Target{Goal: "above conntrackd"}
	switch {
	case r.Conntrackd == nil:
		t.Measured = "not measured: " + r.ConntrackdNote
	case udp == nil:
		t.Measured = "udpmapsync not measured"
	default:
		f := udp.PerSec / r.Conntrackd.ChangesPerSec
		t.Measured = fmt.Sprintf("%.1f× (%s/s vs %s entries/s)", f, si(udp.PerSec), si(r.Conntrackd.ChangesPerSec))
		t.Met = ptr(f > 1)
	}
	ts = append(ts, t)

	t = Target{Goal: "p99 < 1 ms at 10k changes/s"}
	if l := r.Find(UDPMapSync, 2, profile, 10000); l != nil && l.Latency != nil {
		t.Measured = fmt.Sprintf("p99 %s (2 nodes)", us(l.Latency.P99))
		met := l.Latency.P99 < 1000
		if l3 := r.Find(UDPMapSync, 3, profile, 10000); l3 != nil && l3.Latency != nil {
			t.Measured += fmt.Sprintf(", %s (3 nodes)", us(l3.Latency.P99))
			met = met && l3.Latency.P99 < 1000
		}
		t.Met = ptr(met)
	} else {
		t.Measured = "not measured"
	}
	ts = append(ts, t)

	t = Target{Goal: "0 allocations per change on the hot path"}
	var seen, allocating []string
	for _, b := range r.Benchmarks {
		for _, h := range hotPath {
			if b.Name == h {
				seen = append(seen, h)
				if b.AllocsPerOp != 0 {
					allocating = append(allocating, fmt.Sprintf("%s %g allocs/op", h, b.AllocsPerOp))
				}
			}
		}
	}
	switch {
	case len(seen) == 0:
		t.Measured = "not measured: " + r.BenchNote
	case len(allocating) > 0:
		t.Measured = strings.Join(allocating, ", ")
		t.Met = ptr(false)
	default:
		t.Measured = "0 allocs/op in " + strings.Join(seen, ", ")
		t.Met = ptr(true)
	}
	ts = append(ts, t)

	t = Target{Goal: "daemon RSS < 64 MiB with a 1M-entry map"}
	if m := r.Memory; m != nil && m.Skipped == "" {
		peak := max(m.RSSSender, m.RSSReceiver)
		t.Measured = fmt.Sprintf("VmHWM %s sender, %s receiver (%d entries)", mib(m.RSSSender), mib(m.RSSReceiver), m.Changes)
		t.Met = ptr(peak < rssLimitKiB)
	} else {
		t.Measured = "not measured"
	}
	ts = append(ts, t)

	ts = append(ts, r.scanTarget())
	ts = append(ts, r.counterTarget())
	ts = append(ts, r.digestTarget())
	ts = append(ts, r.sealingTarget())
	ts = append(ts, r.largeValueTarget())
	ts = append(ts, r.resyncTargets()...)
	ts = append(ts, r.repairTarget())

	t = Target{Goal: "0 changes lost (udpmapsync, every run)"}
	lost, runs := 0, 0
	for _, x := range slices.Concat(r.Runs, r.SealingRounds, deref(r.Memory), r.Resync.runs()) {
		if IsUDPMapSync(x.System) && x.Skipped == "" {
			runs++
			lost += x.Lost
		}
	}
	if runs > 0 {
		t.Measured = fmt.Sprintf("%d lost over %d runs", lost, runs)
		t.Met = ptr(lost == 0)
	} else {
		t.Measured = "not measured"
	}
	ts = append(ts, t)
	return append(ts, r.issue22Targets(profile)...)
}

func deref(r *Run) []Run {
	if r == nil {
		return nil
	}
	return []Run{*r}
}

func ptr(b bool) *bool { return &b }

// si formats a rate with a k or M suffix.
func si(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}

// us formats microseconds, as ms from 1 ms on.
func us(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}

// mib formats KiB as MiB.
func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }
