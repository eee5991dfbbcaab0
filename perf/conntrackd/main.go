// Command conntrackd-perf measures conntrackd, the netfilter connection
// tracking replicator, on the same two-node bridge topology the
// udpmapsync perf runs use, so the two can be compared.
//
// conntrackd runs in FTFW mode over multicast on both nodes. An
// in-process ctnetlink injector creates UDP conntrack entries on node1 as
// fast as it can; node1's conntrackd sees them as ct-new events and
// multicasts them; node2's conntrackd stores them in its external cache.
// The command prints one JSON line with the end-to-end rate, the CPU each
// daemon spent per entry, and how many entries were injected and reached
// node2. Logs go to stderr.
//
//	┌── ums-<rand>-node1 ───────────┐      ┌── ums-<rand>-node2 ───────────┐
//	│ injector ─ctnetlink─> kernel  │      │                               │
//	│   ct-new events ─> conntrackd │      │ conntrackd ─> external cache  │
//	│ eth1 10.77.0.1/24             │      │ eth1 10.77.0.2/24             │
//	└──────────────┬────────────────┘      └──────────────┬────────────────┘
//	               └──── ums-<rand>-sw br0 (225.0.0.50:3780) ──┘
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
)

// Source address ranges of the injected flows; both lie in the
// 10.128.0.0/9 that the daemons' filter accepts.
const (
	entryBase  = 0x0a800000 // 10.128.0.0: the measured entries
	canaryBase = 0x0afa0000 // 10.250.0.0: start-up probes
	maxEntries = 1 << 21    // keeps entryBase+i below 10.160.0.0
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat
// (100 on every Linux architecture Go supports).
const clockTicks = 100

// Flags are the command-line options.
type Flags struct {
	Entries int
	Batch   int
	Poll    time.Duration
	Settle  time.Duration
	Timeout time.Duration
	Preload bool
}

// Result is the JSON line the command prints; the field names are shared
// with the other systems of the comparison.
type Result struct {
	System                 string  `json:"system"`
	Nodes                  int     `json:"nodes"`
	ChangesPerSec          float64 `json:"changes_per_sec"`
	CPUMicrosPerChangeSend float64 `json:"cpu_us_per_change_sender"`
	CPUMicrosPerChangeRecv float64 `json:"cpu_us_per_change_receiver"`
	Injected               int     `json:"injected"`
	Reached                int     `json:"reached"`
	Notes                  string  `json:"notes"`
}

func main() {
	var f Flags
	fs := pflag.NewFlagSet(os.Args[0], pflag.ExitOnError)
	fs.IntVar(&f.Entries, "entries", envInt("ENTRIES", 200000), "conntrack entries to inject (env ENTRIES)")
	fs.IntVar(&f.Batch, "batch", 256, "ctnetlink requests per sendmsg")
	fs.DurationVar(&f.Poll, "poll", 10*time.Millisecond, "interval between stats requests to node2's conntrackd")
	fs.DurationVar(&f.Settle, "settle", 3*time.Second, "stop waiting once node2's external cache has not grown for this long (FTFW repairs a tail loss at the next 1s keepalive)")
	fs.BoolVar(&f.Preload, "preload", false, "stop the sender daemon while injecting and time only its catch-up (the daemons' own rate, without the injector competing for CPU)")
	fs.DurationVar(&f.Timeout, "timeout", 150*time.Second, "give up on the whole run after this long")
	fs.Parse(os.Args[1:])
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, f)
	if err != nil {
		slog.Error("conntrackd perf run failed", "err", err)
		os.Exit(1)
	}
	b, err := json.Marshal(res)
	if err != nil {
		slog.Error("encode result", "err", err)
		os.Exit(1)
	}
	fmt.Println(string(b))
}

// envInt reads an integer default from the environment.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

// sample is one poll of node2 during the measurement.
type sample struct {
	at       time.Time
	external int
	cpuSend  int64
	cpuRecv  int64
}

// run builds the topology, starts both daemons, measures and tears
// everything down again, whatever happened.
func run(ctx context.Context, f Flags) (_ Result, err error) {
	if err := check(f); err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, f.Timeout)
	defer cancel()
	defer func() {
		// Once interrupted, the daemons are gone and whatever failed
		// next says little: name the cause.
		if err != nil && ctx.Err() != nil {
			err = fmt.Errorf("run stopped early (%w): %w", ctx.Err(), err)
		}
	}()

	topo, err := netnstest.NewTopology(2)
	if err != nil {
		return Result{}, err
	}
	defer func() { err = errors.Join(err, topo.Close()) }()
	dir, err := os.MkdirTemp("", "conntrackd-perf-")
	if err != nil {
		return Result{}, fmt.Errorf("create work directory: %w", err)
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()

	var ds [2]*daemon
	for i, n := range topo.Nodes {
		d, err := startDaemon(ctx, n, filepath.Join(dir, n.Name), f.Entries)
		if err != nil {
			return Result{}, err
		}
		defer func() { err = errors.Join(err, d.stop()) }()
		ds[i] = d
	}
	for _, d := range ds {
		if err := d.waitReady(ctx); err != nil {
			return Result{}, err
		}
	}
	sender, receiver := ds[0], ds[1]

	var inj *Injector
	if err := topo.Nodes[0].Do(func() (err error) { inj, err = NewInjector(f.Batch); return err }); err != nil {
		return Result{}, err
	}
	defer inj.Close()

	baseline, err := handshake(ctx, inj, receiver)
	if err != nil {
		return Result{}, err
	}
	slog.Info("daemons in sync", "canaries_reached", baseline)

	m, err := measure(ctx, f, inj, sender, receiver, baseline)
	if err != nil {
		return Result{}, err
	}
	return m.result(ctx, f, topo.Nodes[0], inj, sender, receiver)
}

// check refuses runs that cannot work, saying what to change.
func check(f Flags) error {
	if f.Entries < 1 || f.Entries > maxEntries {
		return fmt.Errorf("--entries %d: want 1 to %d", f.Entries, maxEntries)
	}
	for _, bin := range []string{"conntrackd", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found; install it (apt-get install conntrackd util-linux) or use perf/conntrackd/run", bin)
		}
	}
	// The limit is global although the table is per namespace: every
	// entry of node1 counts against it.
	b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max")
	if err != nil {
		return fmt.Errorf("read nf_conntrack_max: %w; is nf_conntrack loaded? (modprobe nf_conntrack)", err)
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("parse nf_conntrack_max %q: %w", b, err)
	}
	if f.Entries+100 > limit {
		return fmt.Errorf("--entries %d: nf_conntrack_max is %d; use fewer entries or raise /proc/sys/net/netfilter/nf_conntrack_max", f.Entries, limit)
	}
	return nil
}

// handshake injects one canary flow at a time until one reaches node2,
// and returns node2's external cache size afterwards. Entries sent
// before the two FTFW peers have heard from each other can be lost for
// good, so the measurement starts only once the path is proven.
func handshake(ctx context.Context, inj *Injector, receiver *daemon) (int, error) {
	for k := 0; k < 60; k++ {
		if err := inj.Inject(canaryBase, k, 1); err != nil {
			return 0, err
		}
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			s, err := receiver.stats()
			if err != nil {
				return 0, err
			}
			if s.ExternalActive > 0 {
				// Let any earlier canary still in flight land before
				// the baseline is taken.
				time.Sleep(300 * time.Millisecond)
				s, err := receiver.stats()
				return s.ExternalActive, err
			}
			select {
			case <-ctx.Done():
				return 0, fmt.Errorf("wait for the daemons to sync: %w", ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return 0, fmt.Errorf("no canary entry reached node2's external cache in 60s; see %s", receiver.logs())
}

// measurement is what [measure] observed.
type measurement struct {
	start    time.Time // injection started
	injected time.Time // injection finished
	origin   time.Time // the rate counts from here
	baseline int       // external cache size before the run
	samples  []sample
	cpuSend0 int64
	cpuRecv0 int64
}

// measure injects f.Entries flows on node1 and polls node2 until its
// external cache stops growing. Polling asks for the daemon's counters
// (a few hundred bytes of text, served between its other events) rather
// than dumping the cache, so node2 spends next to nothing on it; the CPU
// counters come from /proc and cost the daemons nothing.
//
// With f.Preload the sender daemon is stopped (SIGSTOP) while the
// injector runs, so the ct-new events queue up in its netlink socket, and
// the clock starts when it is continued: the rate is then the daemons'
// own, without the injector competing for the two cores.
func measure(ctx context.Context, f Flags, inj *Injector, sender, receiver *daemon, baseline int) (*measurement, error) {
	m := &measurement{baseline: baseline}
	var err error
	if m.cpuSend0, err = sender.cpuTicks(); err != nil {
		return nil, err
	}
	if m.cpuRecv0, err = receiver.cpuTicks(); err != nil {
		return nil, err
	}
	type polled struct {
		samples []sample
		err     error
	}
	stopPoll := make(chan struct{})
	pollDone := make(chan polled, 1)
	startPoll := func() {
		go func() {
			var p polled
			p.samples, p.err = poll(ctx, f, sender, receiver, baseline, stopPoll)
			pollDone <- p
		}()
	}

	if f.Preload {
		if err := sender.signal(syscall.SIGSTOP); err != nil {
			return nil, err
		}
	} else {
		startPoll()
	}
	m.start = time.Now()
	m.origin = m.start
	injErr := inj.Inject(entryBase, 0, f.Entries)
	m.injected = time.Now()
	if f.Preload {
		if err := sender.signal(syscall.SIGCONT); err != nil {
			return nil, errors.Join(injErr, err)
		}
		m.origin = time.Now()
		if injErr == nil {
			startPoll()
		}
	}
	if injErr != nil {
		if !f.Preload {
			close(stopPoll)
			<-pollDone
		}
		return nil, injErr
	}
	slog.Info("injected", "entries", f.Entries, "refused", inj.Refused, "seconds", m.injected.Sub(m.start).Seconds())
	p := <-pollDone
	if p.err != nil {
		return nil, p.err
	}
	m.samples = p.samples
	return m, nil
}

// poll samples node2's external cache and both daemons' CPU until the
// cache holds baseline+f.Entries entries or has not grown for f.Settle.
func poll(ctx context.Context, f Flags, sender, receiver *daemon, baseline int, stop <-chan struct{}) ([]sample, error) {
	samples := make([]sample, 0, 4096)
	lastGrowth := time.Now()
	last := baseline
	t := time.NewTicker(f.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for node2 to receive the entries: %w", ctx.Err())
		case <-stop:
			return nil, nil
		case <-t.C:
		}
		s, err := receiver.stats()
		if err != nil {
			return nil, err
		}
		cs, err1 := sender.cpuTicks()
		cr, err2 := receiver.cpuTicks()
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		now := time.Now()
		samples = append(samples, sample{at: now, external: s.ExternalActive, cpuSend: cs, cpuRecv: cr})
		if s.ExternalActive != last {
			last, lastGrowth = s.ExternalActive, now
		}
		if s.ExternalActive-baseline >= f.Entries || now.Sub(lastGrowth) >= f.Settle {
			return samples, nil
		}
	}
}

// result turns the samples into the JSON figures. The rate counts from
// the first injected entry to the first poll that saw the final cache
// size, and CPU is taken at that same poll, so the idle wait of
// f.Settle is left out of both.
func (m *measurement) result(ctx context.Context, f Flags, node1 *netnstest.Node, inj *Injector, sender, receiver *daemon) (Result, error) {
	if len(m.samples) == 0 {
		return Result{}, errors.New("measure: no stats samples from node2")
	}
	final := m.samples[len(m.samples)-1]
	end := final
	for _, s := range m.samples {
		if s.external == final.external {
			end = s
			break
		}
	}
	grown := end.external - m.baseline

	reached, err := receiver.countExternal(entryBase, f.Entries)
	if err != nil {
		return Result{}, err
	}
	kernel, err := conntrackCount(node1)
	if err != nil {
		return Result{}, err
	}
	ss, err := sender.stats()
	if err != nil {
		return Result{}, err
	}
	rs, err := receiver.stats()
	if err != nil {
		return Result{}, err
	}
	nl, err := sender.netlinkStats()
	if err != nil {
		return Result{}, err
	}
	injected := f.Entries - inj.Refused
	elapsed := end.at.Sub(m.origin).Seconds()
	res := Result{
		System:   "conntrackd",
		Nodes:    2,
		Injected: injected,
		Reached:  reached,
	}
	if elapsed > 0 && grown > 0 {
		res.ChangesPerSec = round(float64(grown)/elapsed, 0)
	}
	const microsPerTick = 1e6 / clockTicks
	if injected > 0 {
		res.CPUMicrosPerChangeSend = round(float64(end.cpuSend-m.cpuSend0)*microsPerTick/float64(injected), 2)
	}
	if reached > 0 {
		res.CPUMicrosPerChangeRecv = round(float64(end.cpuRecv-m.cpuRecv0)*microsPerTick/float64(reached), 2)
	}

	mode := "live: injector, sender and receiver run at once on the shared cores"
	if f.Preload {
		mode = "preload: sender stopped during injection, rate counted from its SIGCONT"
	}
	notes := []string{
		"FTFW multicast on a bridge between two netns; creates only (UDP flows via raw ctnetlink, " +
			strconv.Itoa(f.Batch) + " per sendmsg, no acks)",
		"mode " + mode,
		fmt.Sprintf("injection %.0f entries/s, node2 done %.0f ms after the last injection",
			float64(f.Entries)/m.injected.Sub(m.start).Seconds(), float64(end.at.Sub(m.injected).Microseconds())/1e3),
		fmt.Sprintf("rate = entries in node2 external cache / (last growth - start), polled every %s via the stats socket", f.Poll),
		"cpu sender per injected, receiver per reached",
		fmt.Sprintf("node1 kernel table %d, sender events %d, netlink overruns %d, kernel resyncs %d, internal cache %d (all incl. canaries)",
			kernel, nl.Events, nl.Overruns, nl.Resyncs, ss.InternalActive),
		fmt.Sprintf("datagrams sent %d received %d, receiver lost msgs %d", ss.PacketsSent, rs.PacketsReceived, rs.Lost),
	}
	if inj.FirstErr != nil {
		notes = append(notes, fmt.Sprintf("%d refused by the kernel, first: %v", inj.Refused, inj.FirstErr))
	}
	if ev := logEvents(sender.dir); ev != "" {
		notes = append(notes, "sender log: "+ev)
	}
	if grown != reached {
		notes = append(notes, fmt.Sprintf("stats counted %d new external entries, dump %d", grown, reached))
	}
	res.Notes = strings.Join(notes, "; ")
	return res, ctx.Err()
}

// conntrackCount reads the size of the node's conntrack table: files
// under /proc/sys/net belong to the namespace of whoever opens them.
func conntrackCount(n *netnstest.Node) (int, error) {
	var count int
	err := n.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_count")
		if err != nil {
			return fmt.Errorf("read nf_conntrack_count in %s: %w", n.Netns, err)
		}
		count, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err
	})
	return count, err
}

// logEvents summarises the warnings and errors conntrackd logged, such as
// netlink overruns and the resyncs they trigger.
func logEvents(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "conntrackd.log"))
	if err != nil {
		return ""
	}
	counts := map[string]int{}
	var order []string
	for line := range strings.Lines(string(b)) {
		i := strings.Index(line, "] [")
		if i < 0 || strings.Contains(line, "[notice]") {
			continue
		}
		msg := strings.TrimSpace(line[i+2:])
		if counts[msg] == 0 {
			order = append(order, msg)
		}
		counts[msg]++
	}
	var parts []string
	for _, msg := range order {
		parts = append(parts, fmt.Sprintf("%s x%d", msg, counts[msg]))
	}
	return strings.Join(parts, ", ")
}

func round(v float64, digits int) float64 {
	p := 1.0
	for range digits {
		p *= 10
	}
	return float64(int64(v*p+0.5)) / p
}
