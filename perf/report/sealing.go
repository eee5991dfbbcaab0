package report

import (
	"fmt"
	"slices"
	"strings"
)

// SealingTarget is the most sealing may add to the sender's and to the
// receiver's CPU per change, as a fraction (the security issue's 20 %).
const SealingTarget = 0.20

// SealingPair is a full-speed run of udpmapsync and one of udpmapsync
// (sealed) on the same nodes and profile, made one after the other.
type SealingPair struct{ Plain, Sealed *Run }

// SenderRatio is the sealed sender's CPU per change over the plain one's.
func (p SealingPair) SenderRatio() float64 { return ratio(p.Sealed.CPUSender, p.Plain.CPUSender) }

// ReceiverRatio is the sealed receiver's CPU per change over the plain one's.
func (p SealingPair) ReceiverRatio() float64 {
	return ratio(p.Sealed.CPUReceiver, p.Plain.CPUReceiver)
}

// RateRatio is the sealed replication rate over the plain one.
func (p SealingPair) RateRatio() float64 { return ratio(p.Sealed.PerSec, p.Plain.PerSec) }

// BytesRatio is the sealed wire bytes per change over the plain ones.
func (p SealingPair) BytesRatio() float64 {
	return ratio(p.Sealed.BytesPerChange, p.Plain.BytesPerChange)
}

func (p SealingPair) usable() bool {
	for _, x := range []*Run{p.Plain, p.Sealed} {
		if x == nil || !x.Converged || x.PerSec <= 0 || x.CPUSender <= 0 || x.CPUReceiver <= 0 {
			return false
		}
	}
	return true
}

func (p SealingPair) resynced() bool { return p.Plain.ResyncNeeded > 0 || p.Sealed.ResyncNeeded > 0 }

// SealingCost is the cost of sealing on one node count and profile. The
// figures are medians over Pairs, and the ratios medians of each pair's
// ratio, since neighbouring runs share the machine's mood of the moment.
type SealingCost struct {
	Nodes   int
	Profile string
	// Pairs are the pairs in which neither receiver needed a resync; if
	// every pair had one, all of them (and Overrun says so).
	Pairs []SealingPair
	// PlainResyncs and SealedResyncs count the runs, of all pairs, in
	// which a receiver was overrun and needed a full resync: their CPU per
	// change includes serving and applying it, not sealing alone.
	PlainResyncs, SealedResyncs, All int
	Overrun                          bool
}

// SenderRatio is the median over the pairs of the sealed sender's CPU per
// change over the plain one's.
func (c SealingCost) SenderRatio() float64 { return c.median(SealingPair.SenderRatio) }

// ReceiverRatio is the median of the receivers' ratios.
func (c SealingCost) ReceiverRatio() float64 { return c.median(SealingPair.ReceiverRatio) }

// RateRatio is the median of the pairs' sealed over plain rates.
func (c SealingCost) RateRatio() float64 { return c.median(SealingPair.RateRatio) }

// Met says whether sealing added less than [SealingTarget] to both the
// sender's and the receiver's CPU per change, in the median pair.
func (c SealingCost) Met() bool {
	return c.SenderRatio() < 1+SealingTarget && c.ReceiverRatio() < 1+SealingTarget
}

func (c SealingCost) median(f func(SealingPair) float64) float64 {
	v := make([]float64, len(c.Pairs))
	for i, p := range c.Pairs {
		v[i] = f(p)
	}
	return median(v)
}

// of is the median of a figure of the plain or the sealed runs.
func (c SealingCost) of(sealed bool, f func(*Run) float64) float64 {
	v := make([]float64, len(c.Pairs))
	for i, p := range c.Pairs {
		x := p.Plain
		if sealed {
			x = p.Sealed
		}
		v[i] = f(x)
	}
	return median(v)
}

// spread formats the range of a ratio over the pairs, "" for one pair.
func (c SealingCost) spread(f func(SealingPair) float64) string {
	if len(c.Pairs) < 2 {
		return ""
	}
	lo, hi := f(c.Pairs[0]), f(c.Pairs[0])
	for _, p := range c.Pairs[1:] {
		lo, hi = min(lo, f(p)), max(hi, f(p))
	}
	return fmt.Sprintf(" (%.2f–%.2f)", lo, hi)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(v))
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// SealingCosts pairs every full-speed udpmapsync run with the sealed run
// of the same nodes and profile, in Runs and in each round of
// SealingRounds, per node count and profile in the order Runs has them.
// Pairs where either run did not converge or measured no CPU are left out,
// and so are those in which a receiver needed a resync, unless all did.
func (r *Results) SealingCosts() []SealingCost {
	var cs []SealingCost
	for i := range r.Runs {
		p := &r.Runs[i]
		if p.System != UDPMapSync || p.Rate != 0 || p.Skipped != "" {
			continue
		}
		c := SealingCost{Nodes: p.Nodes, Profile: p.Profile}
		var all []SealingPair
		if pair := (SealingPair{p, r.Find(UDPMapSyncSealed, p.Nodes, p.Profile, 0)}); pair.usable() {
			all = append(all, pair)
		}
		rounds := make(map[int]*SealingPair)
		var order []int
		for j := range r.SealingRounds {
			x := &r.SealingRounds[j]
			if x.Nodes != p.Nodes || x.Profile != p.Profile || x.Rate != 0 || x.Skipped != "" {
				continue
			}
			pair := rounds[x.Round]
			if pair == nil {
				pair = &SealingPair{}
				rounds[x.Round] = pair
				order = append(order, x.Round)
			}
			switch x.System {
			case UDPMapSync:
				pair.Plain = x
			case UDPMapSyncSealed:
				pair.Sealed = x
			}
		}
		for _, k := range order {
			if rounds[k].usable() {
				all = append(all, *rounds[k])
			}
		}
		for _, pair := range all {
			if pair.Plain.ResyncNeeded > 0 {
				c.PlainResyncs++
			}
			if pair.Sealed.ResyncNeeded > 0 {
				c.SealedResyncs++
			}
			if !pair.resynced() {
				c.Pairs = append(c.Pairs, pair)
			}
		}
		if c.All = len(all); len(c.Pairs) == 0 {
			c.Pairs, c.Overrun = all, true
		}
		if len(c.Pairs) > 0 {
			cs = append(cs, c)
		}
	}
	return cs
}

// sealingTarget checks the cost of sealing over every node count and
// profile measured.
func (r *Results) sealingTarget() Target {
	t := Target{Goal: fmt.Sprintf("sealing (--key-file) adds < %.0f %% to the sender's and the receiver's CPU per change", SealingTarget*100)}
	cs := r.SealingCosts()
	if len(cs) == 0 {
		t.Measured = "not measured"
		return t
	}
	met := true
	var parts []string
	for _, c := range cs {
		met = met && c.Met()
		parts = append(parts, fmt.Sprintf("%s / %s (%d nodes, %s)", pct(c.SenderRatio()), pct(c.ReceiverRatio()), c.Nodes, c.Profile))
	}
	t.Measured = "sender / receiver " + strings.Join(parts, "; ") + ", median of each pair's ratio"
	t.Met = ptr(met)
	return t
}

// pct formats a ratio as the change it is: 1.13 is "+13 %".
func pct(ratio float64) string { return fmt.Sprintf("%+.0f %%", (ratio-1)*100) }

// sealingSection is the report's "Cost of sealing" section, or "" when
// the sealed system was not measured.
func (r *Results) sealingSection() string {
	measured := false
	for _, x := range r.Runs {
		measured = measured || x.System == UDPMapSyncSealed
	}
	if !measured {
		return ""
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("\n## Cost of sealing\n\n")
	p("udpmapsync with `--key-file` (one random 32-byte key per cluster, in a mode-0600 file): every datagram, repairs and announces included, sealed with AES-256-GCM by the sender, and opened and checked against the replay window by every receiver. Before each sealed cluster measures, the harness reads a datagram off node2's interface and checks that it is sealed (and, for the plain daemon, that it is not). Target (security issue): sealing adds less than %.0f %% to the sender's and to the receiver's CPU per change.\n\n", SealingTarget*100)
	cs := r.SealingCosts()
	if len(cs) == 0 {
		p("Not compared: no full-speed pair of plain and sealed runs that both converged.\n")
		return b.String()
	}
	p("Pairs of full-speed runs, plain and sealed, of the same nodes and profile: the pair of the throughput table and the further rounds that follow it, each one run of each back to back (alternating which goes first). Figures are medians over the pairs; a ratio is the median of each pair's ratio, with its range in brackets.\n\n")
	p("| nodes | profile | pairs | sender CPU µs/change, plain | sealed | × | receiver CPU µs/change, plain | sealed | × | changes/s, plain | sealed | × | bytes/change, plain | sealed | runs with a resync, plain / sealed |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	met := true
	worst, worstWhat := 0.0, ""
	sender := func(x *Run) float64 { return x.CPUSender }
	receiver := func(x *Run) float64 { return x.CPUReceiver }
	rate := func(x *Run) float64 { return x.PerSec }
	bytes := func(x *Run) float64 { return x.BytesPerChange }
	for _, c := range cs {
		met = met && c.Met()
		for _, x := range []struct {
			what  string
			ratio float64
		}{{"sender", c.SenderRatio()}, {"receiver", c.ReceiverRatio()}} {
			if worstWhat == "" || x.ratio > worst {
				worst, worstWhat = x.ratio, fmt.Sprintf("the %s's, %d nodes, %s", x.what, c.Nodes, c.Profile)
			}
		}
		resyncs := fmt.Sprintf("%d / %d", c.PlainResyncs, c.SealedResyncs)
		switch {
		case c.Overrun:
			resyncs += " (every pair: counted all the same)"
		case len(c.Pairs) < c.All:
			resyncs += fmt.Sprintf(" (left out: %d of %d pairs)", c.All-len(c.Pairs), c.All)
		}
		p("| %d | %s | %d | %.3f | %.3f | **%.2f×**%s | %.3f | %.3f | **%.2f×**%s | %s | %s | %.2f×%s | %.1f | %.1f | %s |\n",
			c.Nodes, c.Profile, len(c.Pairs),
			c.of(false, sender), c.of(true, sender), c.SenderRatio(), c.spread(SealingPair.SenderRatio),
			c.of(false, receiver), c.of(true, receiver), c.ReceiverRatio(), c.spread(SealingPair.ReceiverRatio),
			si(c.of(false, rate)), si(c.of(true, rate)), c.RateRatio(), c.spread(SealingPair.RateRatio),
			c.of(false, bytes), c.of(true, bytes), resyncs)
	}
	verdict := map[bool]string{true: "**met**", false: "**missed**"}[met]
	p("\nThe %.0f %% target is %s in this run: the largest median increase is %s, %s.", SealingTarget*100, verdict, worstWhat, pct(worst))
	p(" CPU is counted in 10 ms ticks over runs of about a second, and the machine is shared, so a single pair can differ by tens of per cent either way (the ranges); the medians over pairs are the figures to compare.")
	p(" A pair in which a receiver was overrun and needed a full resync is left out of the figures, since serving and applying the resync costs both daemons far more than sealing; how many runs of each kind needed one is in the last column, itself a cost of sealing when the sealed runs need more.\n")

	var lat []string
	for _, x := range r.Runs {
		if x.System != UDPMapSync || x.Rate == 0 || x.Latency == nil {
			continue
		}
		s := r.Find(UDPMapSyncSealed, x.Nodes, x.Profile, x.Rate)
		if s == nil || s.Latency == nil {
			continue
		}
		lat = append(lat, fmt.Sprintf("| %d | %s/s | %s | %s | %s | %s |\n", x.Nodes, si(float64(x.Rate)),
			us(x.Latency.P50), us(s.Latency.P50), us(x.Latency.P99), us(s.Latency.P99)))
	}
	if len(lat) > 0 {
		p("\nLatency at fixed rates, plain and sealed (one run each, as in the latency table):\n\n| nodes | rate | p50 plain | sealed | p99 plain | sealed |\n|---|---|---|---|---|---|\n")
		p("%s", strings.Join(lat, ""))
	}
	return b.String()
}
