package report

import (
	"fmt"
	"strings"
)

// digestLimit is the target for finding and healing one planted
// difference in a 1M-entry map with one digest round: 10 s, a third of
// the default --digest-interval.
const digestLimit = 10.0

// digestTarget reads BenchmarkDigestHeal (replication: two nodes whose
// 1M-entry 16 B / 64 B hash maps differ in one value changed in place):
// the time from the start of both reads to both holding the same value,
// one read of a map into digests, and the digest bytes of the round.
func (r *Results) digestTarget() Target {
	t := Target{Goal: fmt.Sprintf("one difference in a 1M-entry map found and healed by a digest round < %g s", digestLimit)}
	b := r.benchmark("replication", "DigestHeal")
	if b == nil {
		t.Measured = strings.TrimSpace("not measured: BenchmarkDigestHeal did not run (it needs root) " + r.BenchNote)
		return t
	}
	read, ok1 := b.metric("read-s/map")
	bytes, ok2 := b.metric("digest-bytes/round")
	if !ok1 || !ok2 {
		t.Measured = "not measured: BenchmarkDigestHeal lacks its figures"
		return t
	}
	secs := b.NsPerOp / 1e9
	t.Measured = fmt.Sprintf("%.2f s (of which %.2f s reading one node's map into digests), %.1f kB of digests in the round", secs, read, bytes/1e3)
	t.Met = ptr(secs < digestLimit)
	return t
}
