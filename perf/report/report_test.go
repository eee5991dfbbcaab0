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
	got := verdicts(r, p)
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

// The scan target reads BenchmarkScan's figures from the benchmark
// output.
func TestScanTarget(t *testing.T) {
	r := &Results{Benchmarks: ParseBench([]byte(`pkg: github.com/udpmapsync/udpmapsync/replication
BenchmarkScan/100k-2         	       3	  29713879 ns/op	         0.03114 cpu-s/scan	        34.22 prints-B/key	     92948 wire-B/scan
BenchmarkScan/1000k-2        	       3	 438848370 ns/op	         0.4294 cpu-s/scan	        38.76 prints-B/key	    929348 wire-B/scan
`))}
	got := verdicts(r, "")["a scan of a 1M-entry map < 0.5 s of CPU"]
	for _, want := range []string{"met: ", "100k entries: 0.031 s CPU, 93 kB on the wire", "1M entries: 0.429 s CPU, 929 kB", "39 B of prints per key"} {
		if !strings.Contains(got, want) {
			t.Errorf("scan target %q lacks %q", got, want)
		}
	}
	if got := verdicts(&Results{BenchNote: "perfrun ran without --bench"}, "")["a scan of a 1M-entry map < 0.5 s of CPU"]; !strings.HasPrefix(got, "n/a: not measured") {
		t.Errorf("without benchmarks: %q", got)
	}
}

// The counter target compares BenchmarkCounterApply's two rates.
func TestCounterTarget(t *testing.T) {
	r := &Results{Benchmarks: ParseBench([]byte(`pkg: github.com/udpmapsync/udpmapsync/replication
BenchmarkCounterApply/lww-2         	    6414	    122462 ns/op	   2090450 entries/s
BenchmarkCounterApply/sum-2         	    1777	    199753 ns/op	   1281586 entries/s
`))}
	goal := "merge=sum apply ≥ 0.5 of the last-writer-wins apply rate"
	if got := verdicts(r, "")[goal]; !strings.HasPrefix(got, "met: 0.61: sum 1.28M entries/s, last-writer-wins 2.09M entries/s") {
		t.Errorf("counter target %q", got)
	}
	if got := verdicts(&Results{}, "")[goal]; !strings.HasPrefix(got, "n/a: not measured") {
		t.Errorf("without benchmarks: %q", got)
	}
}

// The digest target reads BenchmarkDigestHeal's figures.
func TestDigestTarget(t *testing.T) {
	r := &Results{Benchmarks: ParseBench([]byte(`pkg: github.com/udpmapsync/udpmapsync/replication
BenchmarkDigestHeal-2   	       3	2686853783 ns/op	      5594 digest-bytes/round	         1.284 read-s/map
`))}
	goal := "one difference in a 1M-entry map found and healed by a digest round < 10 s"
	got := verdicts(r, "")[goal]
	for _, want := range []string{"met: 2.69 s", "1.28 s reading", "5.6 kB of digests"} {
		if !strings.Contains(got, want) {
			t.Errorf("digest target %q lacks %q", got, want)
		}
	}
	if got := verdicts(&Results{}, "")[goal]; !strings.HasPrefix(got, "n/a: not measured") {
		t.Errorf("without benchmarks: %q", got)
	}
}

// verdicts maps each target's goal to "met: ", "missed: " or "n/a: " and
// what was measured.
func verdicts(r *Results, profile string) map[string]string {
	got := map[string]string{}
	for _, tg := range r.Targets(profile) {
		v := "n/a"
		if tg.Met != nil {
			v = map[bool]string{true: "met", false: "missed"}[*tg.Met]
		}
		got[tg.Goal] = v + ": " + tg.Measured
	}
	return got
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

// The resync targets compare the late join with the raw rate, the runs
// with loss with the loss-free run, and the memory run with 64 MiB plus
// 24 B per entry.
func TestResyncTargets(t *testing.T) {
	p := "16 B / 64 B"
	run := func(seconds float64, changes int) Run {
		return Run{System: UDPMapSync, Nodes: 2, Profile: p, Changes: changes, Seconds: seconds, PerSec: float64(changes) / seconds, Converged: true}
	}
	underLoad, late := run(3.5, 1000), run(2, 600_000)
	slow := run(4.2, 1000)
	slow.ResyncNeeded = 3
	r := &Results{
		Raw:    []Raw{{Profile: p, PerSec: 500_000}},
		Memory: &Run{System: UDPMapSync, Nodes: 2, Profile: p, Changes: 1 << 20, RSSSender: 90 << 10, RSSReceiver: 70 << 10, IdleRSSSender: 40 << 10, IdleRSSReceiver: 38 << 10, Converged: true},
		Resync: &Resync{LossPercent: 5, LossFree: []Run{run(2, 1000), run(1.5, 1000), run(2.5, 1000)}, UnderLoad: &underLoad, LateJoin: &late,
			Loss: []Run{run(2.2, 1000), slow, {System: UDPMapSync, Skipped: "daemon on node2 exited"}}},
	}
	got := verdicts(r, p)
	for goal, want := range map[string]string{
		"1M-entry late join at ≥ 0.5 of the raw batch-write rate":                                "met: 0.60 of 500.0k/s (300.0k entries/s: 600000 entries in 2.00 s)",
		"join under load with 5 % loss: every entry within 2× the live stream's time":            "met: 1.75×: 3.50 s against 2.00 s loss-free (median of 3 runs, 1.50–2.50 s); 1000 changes",
		"running peer with 5 % loss: every entry within 2× the loss-free time in each of 5 runs": "missed: 1.10×, 2.10×, not measured of 2.00 s loss-free (median of 3 runs, 1.50–2.50 s); 3 runs, 1 in which node2 gave a gap up for a full resync; the target asks for 5",
		"daemon RSS < 64 MiB + 24 B per entry with a 1M-entry map":                               "missed: VmHWM 90.0 MiB sender, 70.0 MiB receiver against 88.0 MiB (1048576 entries); per entry over the idle daemon (40.0 MiB, 38.0 MiB): 50 B sender, 32 B receiver",
		"0 changes lost (udpmapsync, every run)":                                                 "met: 0 lost over 8 runs",
	} {
		if got[goal] != want {
			t.Errorf("%s:\n got %q\nwant %q", goal, got[goal], want)
		}
	}

	md := r.resyncSection()
	for _, want := range []string{"## Resync and loss", "5 % of the datagrams",
		"| 2 running nodes, no loss (the live stream), run 2 | 1000 | 1.50 s | 667 | **0.75×** | 0.00 | 0 |",
		"| node2 joins as the writes start, 5 % loss | 1000 | 3.50 s | 286 | **1.75×** |",
		"| 2 running nodes, 5 % loss, run 2 | 1000 | 4.20 s | 238 | **2.10×** | 0.00 | 3 |",
		"| 2 running nodes, 5 % loss, run 3 | 0 | not measured: daemon on node2 exited |",
		"| late join: node2 starts beside a node1 holding 600000 entries | 600000 | 2.00 s | 300.0k |  | 0.60 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("section lacks %q:\n%s", want, md)
		}
	}

	// Nothing measured: every resync target says so.
	for _, tg := range (&Results{}).resyncTargets() {
		if tg.Met != nil || tg.Measured != "not measured" {
			t.Errorf("%s: %+v, want not measured", tg.Goal, tg)
		}
	}
	if (&Results{}).resyncSection() != "" {
		t.Error("a report without resync runs has a resync section")
	}

	// With the joiner's own account of its transfer, the target is on
	// the transfer, and the time from the daemon's start is shown beside.
	late.TransferSeconds = 1
	want := "met: 1.20 of 500.0k/s (transfer: 600.0k entries/s, 600000 entries in 1.00 s); from the daemon's start 0.60 (2.00 s)"
	if got := verdicts(r, p)["1M-entry late join at ≥ 0.5 of the raw batch-write rate"]; got != want {
		t.Errorf("late join with its transfer time:\n got %q\nwant %q", got, want)
	}
}

// Issue 22's loss and fast-writer targets: a run that gave a gap up misses
// them whatever its time, and too few runs miss them too.
func TestIssue22Targets(t *testing.T) {
	loss := func(seconds float64, resyncs uint64) Run {
		return Run{System: UDPMapSync, Nodes: 2, Changes: 10, Seconds: seconds, Converged: true, ResyncNeeded: resyncs}
	}
	r := &Results{Resync: &Resync{LossPercent: 5, LossFree: []Run{loss(1, 0)}}}
	for range ResyncLossRuns {
		r.Resync.Loss = append(r.Resync.Loss, loss(1.4, 0))
	}
	if got := r.runningLossTarget(); got.Met == nil || !*got.Met {
		t.Fatalf("5 runs at 1.4×, none resynced: %+v, want met", got)
	}
	r.Resync.Loss[2] = loss(1.2, 1)
	if got := r.runningLossTarget(); got.Met == nil || *got.Met || !strings.Contains(got.Measured, "1 of 5 runs gave a gap up") {
		t.Errorf("a run that gave a gap up: %+v, want missed and counted", got)
	}
	for _, nodes := range []int{2, 3} {
		for range FastWriterRuns {
			x := loss(2, 0)
			x.Nodes = nodes
			r.Resync.FastWriter = append(r.Resync.FastWriter, x)
		}
	}
	if got := r.fastWriterTarget(); got.Met == nil || !*got.Met {
		t.Fatalf("fast writer without a gap given up: %+v, want met", got)
	}
	r.Resync.FastWriter[len(r.Resync.FastWriter)-1].ResyncNeeded = 2
	if got := r.fastWriterTarget(); got.Met == nil || *got.Met || !strings.Contains(got.Measured, "1 of 10 on 3 gave a gap up") {
		t.Errorf("one 3-node run gave a gap up: %+v, want missed", got)
	}
	r.Resync.FastWriter = r.Resync.FastWriter[:3]
	if got := r.fastWriterTarget(); got.Met == nil || *got.Met {
		t.Errorf("3 runs: %+v, want missed for too few runs", got)
	}
}

func TestRepairTarget(t *testing.T) {
	r := &Results{}
	if tg := r.repairTarget(); tg.Met != nil || r.repairSection() != "" {
		t.Fatalf("no runs: %+v, want not measured and no section", tg)
	}
	r.Repair = []RepairRun{
		{Mode: RepairUnicast, Nodes: 16, Percent: 5, Changes: 100, Lost: 100, Requests: 1500, Resent: 1600, Sent: 2000, SenderCPU: 0.4},
		{Mode: RepairGroup, Nodes: 16, Percent: 5, Changes: 100, Lost: 100, Requests: 90, Resent: 151, Sent: 2000, SenderCPU: 0.2},
		{Mode: RepairPeers, Nodes: 16, Percent: 5, Changes: 100, Lost: 100, Requests: 1500, Resent: 1500, Sent: 2000, SenderCPU: 3},
	}
	if tg := r.repairTarget(); tg.Met == nil || *tg.Met || !strings.Contains(tg.Measured, "0.90 requests, 1.51 resends") {
		t.Errorf("1.51 resends per lost: %+v, want unmet", tg)
	}
	r.Repair[1].Resent = 150
	if tg := r.repairTarget(); tg.Met == nil || !*tg.Met || !strings.Contains(tg.Measured, "apart: 15.00, 16.00") {
		t.Errorf("1.5 resends per lost: %+v, want met, beside the unicast figures", tg)
	}
	// --peers: 3 s against 0.2 s for 2000 datagrams to each of 15 peers
	// is 2.8 s more, 93.3 µs a datagram and peer.
	if s := r.repairSection(); !strings.Contains(s, "30000 datagrams on the wire") || !strings.Contains(s, "186.7 ms more per peer, 93.3 µs per datagram and peer") {
		t.Errorf("section lacks the fan-out cost:\n%s", s)
	}
}

func TestLargeRecordTarget(t *testing.T) {
	large := func(system string, perSec float64, frags uint64) Run {
		return Run{System: system, Nodes: 2, Profile: LargeProfile, Changes: 100, PerSec: perSec, Converged: true,
			Stats: map[string]uint64{"fragments_sent": frags}}
	}
	r := &Results{}
	if got := r.largeRecordTarget(); got.Met != nil {
		t.Errorf("no large run: %+v, want not measured", got)
	}
	r.Runs = []Run{large(UDPMapSync, 800, 300), large(UDPMapSyncSealed, 600, 300), large(GRPCStream, 1000, 0)}
	got := r.largeRecordTarget()
	if got.Met == nil || !*got.Met || !strings.Contains(got.Measured, "0.80× the gRPC stream's 1.0k/s") || !strings.Contains(got.Measured, "3.0 fragments a change") {
		t.Errorf("both replicated in fragments: %+v, want met with the ratio", got)
	}
	r.Runs[1].Lost, r.Runs[1].Converged = 3, false
	if got := r.largeRecordTarget(); got.Met == nil || *got.Met || !strings.Contains(got.Measured, "never held every entry") {
		t.Errorf("sealed lost entries: %+v, want missed", got)
	}
	r.Runs[1] = large(UDPMapSyncSealed, 600, 0)
	if got := r.largeRecordTarget(); got.Met == nil || *got.Met {
		t.Errorf("no fragment sent: %+v, want missed: the profile did not test records larger than a datagram", got)
	}
}

func TestMulticastTarget(t *testing.T) {
	p := "16 B / 64 B"
	r := &Results{Runs: []Run{
		{System: GRPCStream, Nodes: 3, Profile: p, PerSec: 100},
		{System: UDPMapSync, Nodes: 3, Profile: p, PerSec: 160, CPUSender: 0.5, CPUSenderUser: 0.2},
		{System: UDPMapSync, Nodes: 2, Profile: p, PerSec: 200, CPUSender: 0.4, CPUSenderUser: 0.2},
	}}
	got := r.multicastTarget(p)
	if got.Met == nil || *got.Met || !strings.Contains(got.Measured, "4 nodes not measured") || !strings.Contains(got.Measured, "0.20 + 0.30 µs at 3 nodes") {
		t.Errorf("without 4 nodes: %+v, want missed, 4 nodes not measured, user + system apart", got)
	}
	r.Runs = append(r.Runs, Run{System: UDPMapSync, Nodes: 4, Profile: p, PerSec: 150, CPUSender: 0.6, CPUSenderUser: 0.22})
	if got := r.multicastTarget(p); got.Met == nil || !*got.Met || !strings.Contains(got.Measured, "most / least 1.10") {
		t.Errorf("flat user-space CPU: %+v, want met", got)
	}
	r.Runs[3].CPUSenderUser = 0.3
	if got := r.multicastTarget(p); got.Met == nil || *got.Met {
		t.Errorf("user-space CPU 1.5× at 4 nodes: %+v, want missed", got)
	}
}

func TestLatencyTarget(t *testing.T) {
	p := "16 B / 64 B"
	r := &Results{}
	for _, system := range []string{UDPMapSync, UDPMapSyncSealed} {
		for _, nodes := range []int{2, 3} {
			for _, rate := range []int{10000, 100000} {
				r.Runs = append(r.Runs, Run{System: system, Nodes: nodes, Profile: p, Rate: rate, Latency: &Latency{P99: 900}})
			}
		}
	}
	if got := r.latencyTarget(p); got.Met == nil || !*got.Met {
		t.Fatalf("every p99 under 1 ms: %+v, want met", got)
	}
	r.Runs[2].Latency.P99 = 226970
	r.Runs[2].Waits = &Waits{ReplicatorMs: 230.4, HarnessMs: 12}
	got := r.latencyTarget(p)
	if got.Met == nil || *got.Met || !strings.Contains(got.Measured, "udpmapsync 3 nodes 10.0k/s 226.97 ms (a thread waited for a core up to 230.40 ms)") {
		t.Errorf("a 3-node tail with its wait: %+v, want missed, the wait beside it", got)
	}
	r.Runs = r.Runs[1:]
	if got := r.latencyTarget(p); got.Met == nil || *got.Met || !strings.Contains(got.Measured, "7 of 8 measured") {
		t.Errorf("one run missing: %+v, want missed", got)
	}
}

// The overrun target counts the conntrack profile's full-speed runs, not
// another profile's, whatever profiles ran.
func TestOverrunTarget(t *testing.T) {
	r := &Results{Raw: []Raw{{Profile: "16 B / 64 B"}, {Profile: ConntrackProfile}, {Profile: LargeProfile}}}
	for i := range 5 {
		r.Runs = append(r.Runs, Run{System: UDPMapSync, Nodes: 2, Profile: ConntrackProfile, Converged: true, Round: i})
	}
	r.Runs = append(r.Runs, Run{System: UDPMapSync, Nodes: 2, Profile: LargeProfile, ResyncNeeded: 3})
	if got := r.overrunTarget(); got.Met == nil || !*got.Met || !strings.Contains(got.Measured, "0 of 5 runs (40 B / 128 B") {
		t.Errorf("5 conntrack runs without a gap given up, a large one with: %+v, want met", got)
	}
	r.Runs[4].ResyncNeeded = 1
	if got := r.overrunTarget(); got.Met == nil || *got.Met {
		t.Errorf("one overrun: %+v, want missed", got)
	}
}
