package report

import (
	"fmt"
	"strings"
)

// The ways of repair a [RepairRun] measures.
const (
	// RepairGroup is the default with multicast: requests after a random
	// back-off to the group, resends to the group.
	RepairGroup = "group"
	// RepairUnicast is --repair unicast: each receiver asks, and is
	// answered, apart (before group repair, the only way).
	RepairUnicast = "unicast"
	// RepairPeers is --peers: no group, the sender sends every datagram to
	// each peer.
	RepairPeers = "--peers"
)

// repairLimit is the target for the requests and the resends per datagram
// lost upstream of every receiver, at repairTargetNodes nodes.
const (
	repairLimit       = 1.5
	repairTargetNodes = 16
)

// RepairRun is one measurement of what loss upstream of every receiver
// costs: node1 writes while the switch drops Percent of what it sends
// into the bridge (netnstest.MeasureRepairCost).
type RepairRun struct {
	Mode    string
	Nodes   int
	Percent int
	Changes int
	// Lost is the fewest datagrams any receiver found missing; Requests
	// the repair requests of all receivers, Suppressed those they held
	// back; Resent node1's resends; Sent its change datagrams (each once,
	// whatever it is sent to); Resyncs the gaps the receivers gave up.
	Lost, Requests, Suppressed, Resent, Sent, Resyncs uint64
	// SenderCPU is node1's daemon's CPU from the first write until every
	// node held everything, seconds.
	SenderCPU float64
	Skipped   string `json:",omitempty"`
}

// perLost is n per datagram lost.
func (x *RepairRun) perLost(n uint64) float64 {
	if x.Lost == 0 {
		return 0
	}
	return float64(n) / float64(x.Lost)
}

// findRepair returns the measured repair run of mode at nodes, or nil.
func (r *Results) findRepair(mode string, nodes int) *RepairRun {
	for i := range r.Repair {
		if x := &r.Repair[i]; x.Mode == mode && x.Nodes == nodes && x.Skipped == "" {
			return x
		}
	}
	return nil
}

// repairTarget checks the group repair at 16 nodes.
func (r *Results) repairTarget() Target {
	t := Target{Goal: fmt.Sprintf("≤ %g requests and ≤ %g resends per datagram lost upstream of every receiver, %d nodes",
		repairLimit, repairLimit, repairTargetNodes)}
	x := r.findRepair(RepairGroup, repairTargetNodes)
	if x == nil || x.Lost == 0 {
		t.Measured = "not measured"
		return t
	}
	req, res := x.perLost(x.Requests), x.perLost(x.Resent)
	t.Measured = fmt.Sprintf("%.2f requests, %.2f resends (%d datagrams lost)", req, res, x.Lost)
	if u := r.findRepair(RepairUnicast, repairTargetNodes); u != nil && u.Lost > 0 {
		t.Measured += fmt.Sprintf("; asked and answered apart: %.2f, %.2f", u.perLost(u.Requests), u.perLost(u.Resent))
	}
	t.Met = ptr(req <= repairLimit && res <= repairLimit)
	return t
}

// repairSection is the table of the repair runs, and what --peers costs
// the sender per peer.
func (r *Results) repairSection() string {
	if len(r.Repair) == 0 {
		return ""
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("\n## Repair with loss upstream of every receiver\n\n")
	p("node1 writes %d changes (4 B keys, 8 B values) in `bpftool batch` runs while the switch drops %d %% of the datagrams it sends into the bridge "+
		"(nftables in the bridge's prerouting, so each is lost to every receiver; node1's segmentation offload off, so that datagrams are dropped one by one). "+
		"Counters from the daemons' stats lines, from before the first write until every node holds every entry: lost is the fewest datagrams any receiver found missing; "+
		"requests sum over the receivers, held back are the requests a receiver did not send having heard another's; resends are node1's. "+
		"`group` is the default, `unicast` is `--repair unicast` (as before group repair), `--peers` gives every node the others' addresses instead of the group.\n\n",
		r.Repair[0].Changes, r.Repair[0].Percent)
	p("| nodes | repair | lost | requests | per lost | held back | resends | per lost | gaps given up | datagrams sent | sender CPU |\n")
	p("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range r.Repair {
		if x.Skipped != "" {
			p("| %d | %s | not measured: %s | | | | | | | | |\n", x.Nodes, x.Mode, x.Skipped)
			continue
		}
		p("| %d | %s | %d | %d | **%.2f** | %d | %d | **%.2f** | %d | %d | %.2f s |\n", x.Nodes, x.Mode, x.Lost, x.Requests, x.perLost(x.Requests),
			x.Suppressed, x.Resent, x.perLost(x.Resent), x.Resyncs, x.Sent, x.SenderCPU)
	}
	var fan []string
	for _, x := range r.Repair {
		g := r.findRepair(RepairGroup, x.Nodes)
		if x.Mode != RepairPeers || x.Skipped != "" || g == nil || x.Sent == 0 || x.Nodes < 2 {
			continue
		}
		peers := float64(x.Nodes - 1)
		extra := x.SenderCPU - g.SenderCPU
		fan = append(fan, fmt.Sprintf("%d nodes: node1 put %d datagrams on the wire (%d to each of %d peers) against %d to the group, and used %.2f s of CPU against %.2f s, "+
			"%.1f ms more per peer, %.1f µs per datagram and peer; each lost datagram cost %.2f resends, one per peer that lost it",
			x.Nodes, x.Sent*uint64(x.Nodes-1), x.Sent, x.Nodes-1, g.Sent, x.SenderCPU, g.SenderCPU,
			extra*1e3/peers, extra*1e6/(float64(x.Sent)*peers), x.perLost(x.Resent)))
	}
	if len(fan) > 0 {
		p("\nWhat `--peers` costs the sender (its CPU time read in 10 ms ticks, and counting its resends): %s.\n", strings.Join(fan, "; "))
	}
	return b.String()
}
