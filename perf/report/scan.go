package report

import (
	"fmt"
	"strconv"
	"strings"
)

// scanLimit is the target for one scan of a 1M-entry map: 0.5 s of CPU.
const scanLimit = 0.5

// scanTarget reads the scan benchmarks (BenchmarkScan in replication: a
// scan of a 16 B / 64 B hash map with 1% of its entries changed in place)
// against the target for a 1M-entry map.
func (r *Results) scanTarget() Target {
	t := Target{Goal: fmt.Sprintf("a scan of a 1M-entry map < %g s of CPU", scanLimit)}
	var parts []string
	for _, size := range []struct{ bench, label string }{{"100k", "100k"}, {"1000k", "1M"}} {
		b := r.benchmark("replication", "Scan/"+size.bench)
		if b == nil {
			continue
		}
		cpu, ok1 := b.metric("cpu-s/scan")
		wire, ok2 := b.metric("wire-B/scan")
		prints, ok3 := b.metric("prints-B/key")
		if !ok1 || !ok2 || !ok3 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s entries: %.3f s CPU, %.0f kB on the wire for 1%% changed, %.0f B of prints per key",
			size.label, cpu, wire/1e3, prints))
		if size.label == "1M" {
			t.Met = ptr(cpu < scanLimit)
		}
	}
	if len(parts) == 0 {
		t.Measured = "not measured: " + strings.TrimPrefix(r.BenchNote+" (BenchmarkScan needs root)", " ")
		return t
	}
	t.Measured = strings.Join(parts, "; ")
	return t
}

// benchmark finds a benchmark by package and name; nil if it did not run.
func (r *Results) benchmark(pkg, name string) *Benchmark {
	for i := range r.Benchmarks {
		if b := &r.Benchmarks[i]; b.Package == pkg && b.Name == name {
			return b
		}
	}
	return nil
}

// metric returns the value of a benchmark's figure in unit.
func (b *Benchmark) metric(unit string) (float64, bool) {
	for _, m := range b.Metrics {
		if v, u, ok := strings.Cut(m, " "); ok && u == unit {
			f, err := strconv.ParseFloat(v, 64)
			return f, err == nil
		}
	}
	return 0, false
}
