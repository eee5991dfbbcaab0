package report

import "fmt"

// LargeProfile names the perf profile of 4 KiB values: records larger than
// a datagram at a 1500-byte MTU, which udpmapsync sends in fragments
// (wire/FORMAT.md, "Fragments") and the gRPC stream as any message.
const LargeProfile = "16 B / 4 KiB"

// largeValueTarget compares udpmapsync with the gRPC stream on 4 KiB
// values, 2 nodes, full speed, in the same run: at least as fast.
func (r *Results) largeValueTarget() Target {
	t := Target{Goal: "4 KiB values (in fragments) ≥ 1× gRPC stream"}
	udp, base := r.Find(UDPMapSync, 2, LargeProfile, 0), r.Find(GRPCStream, 2, LargeProfile, 0)
	switch {
	case udp == nil || base == nil || base.PerSec == 0 || udp.Skipped != "" || base.Skipped != "":
		t.Measured = "not measured: run with --profiles including large, and both systems"
	default:
		t.Measured = fmt.Sprintf("%.2f× (%s/s vs %s/s, 2 nodes; %.1f vs %.1f packets a change)",
			udp.PerSec/base.PerSec, si(udp.PerSec), si(base.PerSec), udp.PacketsPerChange, base.PacketsPerChange)
		t.Met = ptr(udp.PerSec >= base.PerSec)
	}
	return t
}
