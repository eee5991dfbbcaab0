package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/loader"
	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/perf/report"
	"github.com/udpmapsync/udpmapsync/perf/workload"
)

// sentinelPoll is how often the peers' maps are looked up for the
// sentinel: one lookup syscall per peer, cheap next to the replication.
const sentinelPoll = 500 * time.Microsecond

// measure writes cfg's workload on node1 of d, waits until every peer holds
// the final state, and returns what it cost. With observe, observers on the
// peers time every change's arrival. A daemon deploy left for later starts
// as the writer starts.
func (d *deployment) measure(ctx context.Context, f *Flags, cfg workload.Config, observe bool) (*report.Run, error) {
	nodes := len(d.c.Topology.Nodes)
	run := &report.Run{System: d.system, Nodes: nodes, Profile: cfg.Profile.Name, Rate: cfg.Rate, Changes: cfg.Changes}
	w, src, err := d.source(cfg)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	var peers []*ebpf.Map
	defer func() {
		for _, m := range peers {
			m.Close()
		}
	}()
	for i := 1; i < nodes; i++ {
		m, err := ebpf.LoadPinnedMap(d.c.PinPath(i, mapName), nil)
		if err != nil {
			return nil, fmt.Errorf("open peer map: %w", err)
		}
		peers = append(peers, m)
	}
	var obs *observer
	if observe {
		var paths []string
		for i := 1; i < nodes; i++ {
			paths = append(paths, d.c.PinPath(i, mapName))
		}
		if obs, err = startObserver(paths, cfg.Changes); err != nil {
			return nil, err
		}
		defer obs.stop()
	}

	before, err := d.snapshot()
	if err != nil {
		return nil, err
	}
	var waits *waitWatch
	if observe {
		waits = startWaitWatch(d.pids)
		defer waits.end() // on an early return; ends once
	}
	joined := d.startLate()
	res, err := w.Run(ctx, src)
	if err != nil {
		joined()
		return nil, err
	}
	key, value := w.Sentinel(len(res.Batches))
	arrived, err := waitSentinel(ctx, peers, key, value, f.Timeout)
	ready, err2 := joined()
	if err2 != nil {
		return nil, err2
	}
	if ready != 0 {
		note := fmt.Sprintf("node2's daemon started as the writer did, ready %.2f s after the first write", float64(ready-res.Start)/1e9)
		if err == nil {
			note += fmt.Sprintf("; the last change reached it %.2f s after the first write", float64(arrived-res.Start)/1e9)
		}
		run.Notes = append(run.Notes, note)
	}
	after, err2 := d.snapshot()
	if err2 != nil {
		return nil, err2
	}
	if run.RSSSender, run.RSSReceiver, err2 = d.peakRSS(); err2 != nil {
		return nil, err2
	}
	var samples [][]sample
	if obs != nil {
		samples = obs.stop()
		run.Waits = waits.end()
	}

	n := float64(cfg.Changes)
	run.WriterPerSec = n / res.Seconds()
	run.WriterCPU = us(res.CPU) / n
	addCosts(run, before, after, cfg.Changes)

	// The sentinel says when the last change arrived; the maps say whether
	// everything before it did.
	want := netnstest.Contents(w.Want())
	diffs, converged, at := compareWait(ctx, peers, want, f.Settle)
	run.Converged = err == nil && converged
	countLost(run, diffs)
	if err != nil {
		run.Notes = append(run.Notes, err.Error())
	} else {
		// Changes are applied in order, so the maps usually match as the
		// sentinel arrives. When they do not, a change was given up on and
		// a resync repaired it: the run lasted until the maps matched. A
		// joiner has joined once it is ready as well: the maps were first
		// compared then.
		end := max(arrived, ready)
		if converged && at > end {
			end = at
			run.Notes = append(run.Notes, fmt.Sprintf("the maps matched %.1f s after the last change arrived (a resync ran)", float64(at-arrived)/1e9))
		}
		run.Seconds = float64(end-res.Start) / 1e9
		run.PerSec = n / run.Seconds
	}
	if obs != nil {
		// From the start of the batch syscall: its return cannot serve, as
		// the writer is often preempted on its way out by the replicator
		// the capture just woke, and reads the clock after the peer applied.
		var lat []float64
		for _, peer := range samples {
			for _, s := range peer {
				if int(s.batch) < len(res.Batches) {
					lat = append(lat, float64(s.seen-res.Batches[s.batch].Start)/1e3)
				}
			}
		}
		run.Latency = report.NewLatency(lat)
		if f.Keep {
			if err := writeSamples(filepath.Join(d.dir, "latency.tsv"), samples, res.Batches); err != nil {
				run.Notes = append(run.Notes, err.Error())
			}
		}
	}
	return run, nil
}

func us(d time.Duration) float64 { return float64(d) / 1e3 }

// source prepares cfg's writer and opens node1's map for it to write;
// the caller closes the map.
func (d *deployment) source(cfg workload.Config) (*workload.Writer, *loader.Map, error) {
	w, err := workload.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	src, err := loader.OpenMaps([]string{d.c.PinPath(0, mapName)})
	if err != nil {
		return nil, nil, err
	}
	return w, src[0], nil
}

// addCosts sets run's CPU, bytes and packets per change from the counters
// before and after changes changes.
func addCosts(run *report.Run, before, after snapshot, changes int) {
	n := float64(changes)
	run.CPUSender = us(after.cpu[0]-before.cpu[0]) / n
	run.CPUSenderUser = us(after.user[0]-before.user[0]) / n
	var recv, recvUser time.Duration
	for i := 1; i < len(after.cpu); i++ {
		recv += after.cpu[i] - before.cpu[i]
		recvUser += after.user[i] - before.user[i]
	}
	peers := float64(len(after.cpu) - 1)
	run.CPUReceiver = us(recv) / peers / n
	run.CPUReceiverUser = us(recvUser) / peers / n
	run.BytesPerChange = float64(after.bytes-before.bytes) / n
	run.PacketsPerChange = float64(after.packets-before.packets) / n
}

// countLost adds the entries in which the peers differ from the final state
// to run's lost, and a note for each peer that differs.
func countLost(run *report.Run, diffs []netnstest.Diff) {
	for _, df := range diffs {
		run.Lost += df.Missing + df.Extra + df.Wrong
		if !df.Equal() {
			run.Notes = append(run.Notes, "peer differs: "+df.String())
		}
	}
}

// startLate starts, in the background, the daemons deploy left for later,
// and returns a function that waits for them and says when the last was
// ready, in [workload.Now]'s clock, or 0 if there were none.
func (d *deployment) startLate() (wait func() (int64, error)) {
	var late []int
	for i, pid := range d.pids {
		if pid == 0 && report.IsUDPMapSync(d.system) {
			late = append(late, i)
		}
	}
	type result struct {
		ready int64
		err   error
	}
	done := make(chan result, 1)
	go func() {
		var r result
		for _, i := range late {
			if r.err = d.start(i); r.err != nil {
				break
			}
			r.ready = workload.Now()
		}
		done <- r
	}()
	return func() (int64, error) {
		r := <-done
		return r.ready, r.err
	}
}

// peakRSS is the peak RSS of the sender (node1's replicator) and the
// largest of the receivers', KiB.
func (d *deployment) peakRSS() (sender, receiver int64, err error) {
	for i, pid := range d.pids {
		if pid == 0 {
			continue
		}
		rss, err := peakRSS(pid)
		if err != nil {
			return 0, 0, err
		}
		if i == 0 {
			sender = rss
		} else {
			receiver = max(receiver, rss)
		}
	}
	return sender, receiver, nil
}

// waitSentinel polls every peer until it holds the sentinel and returns when
// the last one did, in [workload.Now]'s clock.
func waitSentinel(ctx context.Context, peers []*ebpf.Map, key, value []byte, timeout time.Duration) (int64, error) {
	deadline := time.Now().Add(timeout)
	got := make([]byte, len(value))
	var last int64
	for _, m := range peers {
		for {
			err := m.Lookup(key, &got)
			if err == nil && bytes.Equal(got, value) {
				last = workload.Now()
				break
			}
			if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return 0, fmt.Errorf("look up sentinel: %w", err)
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return 0, fmt.Errorf("the last change did not reach every peer within %v", timeout)
			}
			time.Sleep(sentinelPoll)
		}
	}
	return last, nil
}

// compareWait compares every peer's map with want, again every 100 ms
// until they match or settle has passed: a replicator that reorders, or
// repairs a loss with a resync, may still be applying older changes when
// the sentinel arrives. at is when the pass that matched began, in
// [workload.Now]'s clock, or 0 if the first pass matched.
func compareWait(ctx context.Context, peers []*ebpf.Map, want netnstest.Contents, settle time.Duration) (_ []netnstest.Diff, converged bool, at int64) {
	deadline := time.Now().Add(settle)
	for first := true; ; first = false {
		if !first {
			at = workload.Now()
		}
		var diffs []netnstest.Diff
		ok := true
		for _, m := range peers {
			have, err := netnstest.ReadContents(m)
			if err != nil {
				diffs = append(diffs, netnstest.Diff{Want: len(want), Missing: len(want), First: []string{err.Error()}})
				ok = false
				continue
			}
			df := netnstest.Compare(want, have)
			ok = ok && df.Equal()
			diffs = append(diffs, df)
		}
		if ok || time.Now().After(deadline) || ctx.Err() != nil {
			return diffs, ok, at
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sample is one change seen applied on a peer: the batch that wrote it and
// when it was seen.
type sample struct {
	batch uint32
	seen  int64
}

// observer times the changes the replicator applies to peers' maps. It
// watches them with the project's own capture (loader.Capture) in this
// process: the capture reports writes by every other process, so it sees
// the replicator's batch updates, from the kernel, as they return. It is
// woken for every record (WakeBytes 1) so the time read is the apply's,
// not a batch deadline's.
type observer struct {
	caps    []*loader.Capture
	maps    []*loader.Map
	samples [][]sample
	wg      sync.WaitGroup
	once    sync.Once
}

func startObserver(paths []string, expect int) (_ *observer, err error) {
	o := &observer{}
	defer func() {
		if err != nil {
			o.stop()
		}
	}()
	for _, p := range paths {
		ms, err := loader.OpenMaps([]string{p})
		if err != nil {
			return nil, err
		}
		o.maps = append(o.maps, ms...)
		c, err := loader.NewCapture(loader.CaptureOptions{Maps: ms, RingSize: 64 << 20, WakeBytes: 1})
		if err != nil {
			return nil, fmt.Errorf("observer: %w", err)
		}
		o.caps = append(o.caps, c)
		o.samples = append(o.samples, make([]sample, 0, expect))
	}
	for i, c := range o.caps {
		o.wg.Go(func() {
			var ch loader.Change
			for c.Read(&ch) == nil {
				if b, ok := workload.BatchOf(ch.Value); ok && ch.Op == ops.Update {
					o.samples[i] = append(o.samples[i], sample{batch: b, seen: workload.Now()})
				}
			}
		})
	}
	return o, nil
}

// writeSamples writes every latency sample to path, one a line: the peer
// (1 for node2), the batch, when its syscall started and returned (done) and
// when the peer applied it, ns in [workload.Now]'s clock. --keep leaves it
// with the daemons' logs, to line a slow change up with what they logged.
func writeSamples(path string, samples [][]sample, batches []workload.Batch) error {
	var b bytes.Buffer
	b.WriteString("peer\tbatch\tstart\tdone\tseen\n")
	for i, peer := range samples {
		for _, s := range peer {
			if int(s.batch) < len(batches) {
				x := batches[s.batch]
				fmt.Fprintf(&b, "%d\t%d\t%d\t%d\t%d\n", i+1, s.batch, x.Start, x.Done, s.seen)
			}
		}
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// stop detaches the observers and returns their samples, per peer.
func (o *observer) stop() [][]sample {
	o.once.Do(func() {
		for _, c := range o.caps {
			if n, err := c.Overflows(); err == nil && n > 0 {
				fmt.Fprintf(os.Stderr, "perfrun: observer ring overflowed %d times; latency samples are missing\n", n)
			}
			c.Close()
		}
		o.wg.Wait()
		for _, m := range o.maps {
			m.Close()
		}
	})
	return o.samples
}
