package report

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseConntrackd(t *testing.T) {
	out := []byte("starting\n{\"not\":\"it\"}\n" +
		`{"system":"conntrackd","nodes":2,"changes_per_sec":162436,"cpu_us_per_change_sender":5.4,"cpu_us_per_change_receiver":3.1,"notes":"ftfw"}` + "\n")
	r, err := ParseConntrackd(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.ChangesPerSec != 162436 || r.CPUPerChangeReceiver != 3.1 || r.Notes != "ftfw" {
		t.Fatalf("parsed %+v", r)
	}
	if _, err := ParseConntrackd([]byte("crashed\n")); err == nil {
		t.Fatal("no JSON line: want an error")
	}
	if _, err := ParseConntrackd([]byte(`{"system":"conntrackd","nodes":2,"changes_per_sec":0}`)); err == nil {
		t.Fatal("zero rate: want an error")
	}
}

func TestParseBench(t *testing.T) {
	out := []byte(`goos: linux
pkg: github.com/udpmapsync/udpmapsync/replication
BenchmarkDecodeApply-2   	  500000	      4500 ns/op	        68.20 ns/change	       0 B/op	       0 allocs/op
PASS
pkg: github.com/udpmapsync/udpmapsync/wire
BenchmarkEncode-2   	 1000000	       700.5 ns/op	 2000.00 MB/s	      16 B/op	       1 allocs/op
`)
	bs := ParseBench(out)
	if len(bs) != 2 {
		t.Fatalf("parsed %d benchmarks, want 2: %+v", len(bs), bs)
	}
	if b := bs[0]; b.Package != "replication" || b.Name != "DecodeApply" || b.NsPerOp != 4500 || b.AllocsPerOp != 0 || len(b.Metrics) != 1 {
		t.Fatalf("first: %+v", b)
	}
	if b := bs[1]; b.Name != "Encode" || b.AllocsPerOp != 1 || b.BytesPerOp != 16 {
		t.Fatalf("second: %+v", b)
	}
}

func TestLatencyQuantiles(t *testing.T) {
	var s []float64
	for i := 1000; i >= 1; i-- {
		s = append(s, float64(i))
	}
	l := NewLatency(s)
	if l.P50 != 500 || l.P99 != 990 || l.P999 != 999 || l.Max != 1000 || l.Samples != 1000 {
		t.Fatalf("got p50 %v p99 %v p99.9 %v max %v", l.P50, l.P99, l.P999, l.Max)
	}
	if last := l.CDF[len(l.CDF)-1]; last != [2]float64{1000, 1} {
		t.Fatalf("CDF ends at %v", last)
	}
}

func TestTargets(t *testing.T) {
	p := "16 B / 64 B"
	r := &Results{
		Raw: []Raw{{Profile: p, PerSec: 1000}},
		Runs: []Run{
			{System: UDPMapSync, Nodes: 2, Profile: p, PerSec: 600, Converged: true},
			{System: GRPCUnary, Nodes: 2, Profile: p, PerSec: 10},
			{System: GRPCStream, Nodes: 2, Profile: p, PerSec: 300},
			{System: UDPMapSync, Nodes: 2, Profile: p, Rate: 10000, Latency: &Latency{P99: 1500}, Converged: true, Lost: 2},
		},
		ConntrackdNote: "perf/conntrackd/run is missing",
	}
	got := map[string]string{}
	for _, tg := range r.Targets(p) {
		v := "n/a"
		if tg.Met != nil {
			v = map[bool]string{true: "met", false: "missed"}[*tg.Met]
		}
		got[tg.Goal] = v + ": " + tg.Measured
	}
	for goal, want := range map[string]string{
		"replication ≥ ½ of the raw batch-write rate": "met",
		"≥ 100× gRPC unary":                           "missed",
		"≥ 3× gRPC stream":                            "missed",
		"above conntrackd":                            "n/a: not measured: perf/conntrackd/run",
		"p99 < 1 ms at 10k changes/s":                 "missed",
		"0 changes lost (udpmapsync, every run)":      "missed: 2 lost over 2 runs",
		"daemon RSS < 64 MiB with a 1M-entry map":     "n/a",
	} {
		if !strings.HasPrefix(got[goal], want) {
			t.Errorf("%s: got %q, want prefix %q", goal, got[goal], want)
		}
	}
}

// The limits paragraph sums the three processes' CPU per change and
// names the biggest.
func TestLimits(t *testing.T) {
	u := &Run{System: UDPMapSync, Nodes: 2, PerSec: 1.02e6, WriterCPU: 0.67, CPUSender: 0.42, CPUReceiver: 0.68}
	got := limits(u, 2)
	for _, want := range []string{"0.67 + 0.42 + 0.68 = 1.77 µs", "share 2 cores", "at most 1.13M changes/s", "1.02M were measured", "the receiver's (38 %)"} {
		if !strings.Contains(got, want) {
			t.Errorf("limits lacks %q:\n%s", want, got)
		}
	}
}

// The cost of sealing pairs each full-speed plain run with the sealed run
// of the same nodes and profile, adds the extra rounds, and checks the 20 %
// target on both ends with the median pair.
func TestSealingCost(t *testing.T) {
	p := "16 B / 64 B"
	run := func(system string, nodes, round int, perSec, sender, receiver float64) Run {
		return Run{System: system, Nodes: nodes, Profile: p, Round: round, PerSec: perSec, CPUSender: sender, CPUReceiver: receiver, BytesPerChange: 77, Converged: true}
	}
	r := &Results{
		Raw: []Raw{{Profile: p, PerSec: 1000}},
		Runs: []Run{
			run(UDPMapSync, 2, 0, 1000, 0.40, 0.60),
			run(UDPMapSyncSealed, 2, 0, 900, 0.46, 0.66),
			run(UDPMapSync, 3, 0, 800, 0.40, 0.60),
			run(UDPMapSyncSealed, 3, 0, 700, 0.50, 0.62),
			{System: UDPMapSync, Nodes: 2, Profile: p, Rate: 10000, Latency: &Latency{P50: 250, P99: 900}, Converged: true},
			{System: UDPMapSyncSealed, Nodes: 2, Profile: p, Rate: 10000, Latency: &Latency{P50: 270, P99: 1100}, Converged: true, Lost: 1},
		},
		SealingRounds: []Run{
			// 2 nodes: sender ratios 1.15 (main), 0.90 and 1.50, median 1.15;
			// receiver 1.10, 1.00, 1.00, median 1.00.
			run(UDPMapSyncSealed, 2, 1, 1000, 0.36, 0.60),
			run(UDPMapSync, 2, 1, 1000, 0.40, 0.60),
			run(UDPMapSync, 2, 2, 1000, 0.40, 0.60),
			run(UDPMapSyncSealed, 2, 2, 500, 0.60, 0.60),
			// A round with a resync is counted, and left out of the figures.
			run(UDPMapSync, 2, 3, 1000, 0.40, 0.60),
			{System: UDPMapSyncSealed, Nodes: 2, Profile: p, Round: 3, PerSec: 100, CPUSender: 2, CPUReceiver: 2, Converged: true, ResyncNeeded: 1},
			// A round whose sealed run did not converge does not count.
			run(UDPMapSync, 3, 1, 1000, 0.40, 0.60),
			{System: UDPMapSyncSealed, Nodes: 3, Profile: p, Round: 1, PerSec: 10, CPUSender: 9, CPUReceiver: 9},
		},
	}
	cs := r.SealingCosts()
	if len(cs) != 2 {
		t.Fatalf("%d costs, want 2", len(cs))
	}
	if c := cs[0]; c.Nodes != 2 || len(c.Pairs) != 3 || !c.Met() ||
		fmt.Sprintf("%.2f %.2f %.2f", c.SenderRatio(), c.ReceiverRatio(), c.RateRatio()) != "1.15 1.00 0.90" {
		t.Errorf("2 nodes: %d pairs, ratios %.3f %.3f %.3f", len(c.Pairs), c.SenderRatio(), c.ReceiverRatio(), c.RateRatio())
	}
	if c := cs[1]; c.Nodes != 3 || len(c.Pairs) != 1 || c.Met() {
		t.Errorf("3 nodes: one usable pair, sender +25 %% should miss: %+v", c)
	}
	var target Target
	for _, tg := range r.Targets(p) {
		if strings.HasPrefix(tg.Goal, "sealing") {
			target = tg
		}
		if strings.HasPrefix(tg.Goal, "0 changes lost") && !strings.HasPrefix(tg.Measured, "1 lost over 14 runs") {
			t.Errorf("the lost target counts sealed runs and rounds too: %q", tg.Measured)
		}
	}
	if target.Met == nil || *target.Met || !strings.Contains(target.Measured, "+15 % / +0 % (2 nodes") || !strings.Contains(target.Measured, "+25 % / +3 % (3 nodes") {
		t.Errorf("sealing target: %+v", target)
	}
	md := r.sealingSection()
	for _, want := range []string{"## Cost of sealing",
		"| 2 | 16 B / 64 B | 3 | 0.400 | 0.460 | **1.15×** (0.90–1.50) | 0.600 | 0.600 | **1.00×** (1.00–1.10) | 1.0k | 900 | 0.90× (0.50–1.00) | 77.0 | 77.0 | 0 / 1 (left out: 1 of 4 pairs) |",
		"| 3 | 16 B / 64 B | 1 | 0.400 | 0.500 | **1.25×** | ", "| 0 / 0 |\n",
		"target is **missed**", "the sender's, 3 nodes, 16 B / 64 B, +25 %", "| 2 | 10.0k/s | 250 µs | 270 µs | 900 µs | 1.10 ms |"} {
		if !strings.Contains(md, want) {
			t.Errorf("section lacks %q:\n%s", want, md)
		}
	}
	if (&Results{Runs: r.Runs[:1]}).sealingSection() != "" {
		t.Error("a report without sealed runs has a sealing section")
	}
}
