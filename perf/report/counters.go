package report

import (
	"fmt"
	"strings"
)

// counterShare is the target for the apply of a merge=sum map's
// contributions, as a share of the apply of last-writer-wins values: a
// merge per entry and the kernel program's atomic adds instead of one
// batch update.
const counterShare = 0.5

// counterTarget reads BenchmarkCounterApply (replication: 256-entry
// batches into a kernel hash map of 4-byte keys and 16-byte values, as
// contributions of a peer and as last-writer-wins values).
func (r *Results) counterTarget() Target {
	t := Target{Goal: fmt.Sprintf("merge=sum apply ≥ %g of the last-writer-wins apply rate", counterShare)}
	lww, sum := r.benchmark("replication", "CounterApply/lww"), r.benchmark("replication", "CounterApply/sum")
	if lww == nil || sum == nil {
		t.Measured = "not measured: " + strings.TrimPrefix(r.BenchNote+" (BenchmarkCounterApply needs root)", " ")
		return t
	}
	l, ok1 := lww.metric("entries/s")
	s, ok2 := sum.metric("entries/s")
	if !ok1 || !ok2 || l == 0 {
		t.Measured = "not measured: BenchmarkCounterApply reported no entries/s"
		return t
	}
	t.Measured = fmt.Sprintf("%.2f: sum %s entries/s, last-writer-wins %s entries/s", s/l, si(s), si(l))
	t.Met = ptr(s/l >= counterShare)
	return t
}
