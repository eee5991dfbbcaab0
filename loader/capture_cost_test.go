package loader

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkCaptureCost measures what a capture adds to each map write (hash
// map, 4-byte keys, 8-byte values) for every combination of
//
//   - hook: none, the syscall backend, the fentry backend;
//   - writer: user space (one BPF_MAP_UPDATE_ELEM syscall per write, timed
//     by the benchmark), or a BPF program (a tc program making
//     [costWritesPerRun] updates per run, run with BPF_PROG_TEST_RUN and
//     timed by the kernel, so the syscall is not part of the figure). The
//     syscall backend cannot see program writes, so it has no prog cells;
//   - map: watched, or unwatched (the hook runs but must drop the write).
//
// The figure is the ns/write metric: the median over short chunks of writes
// (see [costUserChunk]); ns/op is the plain mean of the wall clock.
//
// The capture runs in another process, the way the daemon does (a capture
// ignores its own process's writes), whose reader goroutine drains the ring
// while the benchmark writes. Each cell checks that the capture reported
// exactly the watched writes and lost none, so a figure never measures a
// detached hook or an overflowing ring. `make vmbench` runs it in the VM,
// where fentry works, and prints the table; this host refuses fentry and
// skips those cells.
func BenchmarkCaptureCost(b *testing.B) {
	watched := captureTestMap(b, "costwatched", ebpf.Hash, 4, 8, costWritesPerRun)
	other := captureTestMap(b, "costother", ebpf.Hash, 4, 8, costWritesPerRun)
	writers := []struct {
		name  string
		write costWriter
	}{{"user", userWrites}, {"prog", progWrites}}

	for range *costRounds {
		b.Run("none", func(b *testing.B) {
			for _, w := range writers {
				b.Run(w.name, func(b *testing.B) { costCell(b, nil, watched, false, w.write) })
			}
		})
		for _, backend := range []Backend{BackendSyscall, BackendFentry} {
			b.Run(string(backend), func(b *testing.B) {
				p := startCaptureProcess(b, backend, watched)
				for _, w := range writers {
					if w.name == "prog" && backend == BackendSyscall {
						continue
					}
					b.Run(w.name, func(b *testing.B) {
						b.Run("unwatched", func(b *testing.B) { costCell(b, p, other, false, w.write) })
						b.Run("watched", func(b *testing.B) { costCell(b, p, watched, true, w.write) })
					})
				}
			})
		}
	}
}

// BenchmarkCaptureBatchCost is [BenchmarkCaptureCost] for batch commands:
// what a capture adds to each element of a BPF_MAP_UPDATE_BATCH of
// [costBatch] elements (hash map, 16-byte keys, 64-byte values) made from
// user space, as bulk writers make them. Its ns/write figure is per
// element. Both backends read such a batch from the caller's buffers, a
// chunk per ring sample; the fentry backend's element programs still run
// for each element, and skip it.
func BenchmarkCaptureBatchCost(b *testing.B) {
	watched := captureTestMap(b, "costbwatched", ebpf.Hash, 16, 64, costBatch)
	other := captureTestMap(b, "costbother", ebpf.Hash, 16, 64, costBatch)
	for range *costRounds {
		b.Run("none", func(b *testing.B) { costCell(b, nil, watched, false, batchWrites) })
		for _, backend := range []Backend{BackendSyscall, BackendFentry} {
			b.Run(string(backend), func(b *testing.B) {
				p := startCaptureProcess(b, backend, watched)
				b.Run("unwatched", func(b *testing.B) { costCell(b, p, other, false, batchWrites) })
				b.Run("watched", func(b *testing.B) { costCell(b, p, watched, true, batchWrites) })
			})
		}
	}
}

// costBatch is the number of elements of each batch command of
// BenchmarkCaptureBatchCost.
const costBatch = 512

// costRounds is how many times BenchmarkCaptureCost measures all its cells.
// Unlike -count, which repeats each cell back to back, rounds put a cell's
// measurements close in time to its no-hook baseline's, so a slow drift in
// the load of a shared machine affects both alike. Later rounds' names end
// in #01, #02...
var costRounds = flag.Int("capture-cost-rounds", 1, "times BenchmarkCaptureCost measures all its cells, one round after the other")

// costWritesPerRun is how many updates the benchmark's BPF program makes per
// run: enough to make the per-run cost of BPF_PROG_TEST_RUN small beside
// them, few enough for the 512-byte stack (16 bytes each).
const costWritesPerRun = 16

// The writes are timed in short chunks, and a cell's figure is the median
// chunk: the VM's virtual CPUs share a busy host, and a chunk during which
// the host ran something else would otherwise count in full. A chunk is
// long enough that reading the clock (in the VM a syscall and an HPET read)
// is a small part of it.
const (
	costUserChunk = 128 // writes per chunk from user space
	costProgChunk = 64  // program runs per chunk (one BPF_PROG_TEST_RUN)
)

// costWriter makes at least b.N writes to m, timed, and stops the timer.
type costWriter func(b *testing.B, m *Map) costRun

// costRun is what a [costWriter] did.
type costRun struct {
	writes  int       // writes the timed code made
	aborted int       // at most this many more, by runs the kernel aborted and repeated
	chunks  []float64 // ns per write of each timed chunk
}

// costCell runs write against m with capture process p (nil: no hook) and
// reports ns per write. watched says whether p must report the writes.
func costCell(b *testing.B, p *captureProcess, m *Map, watched bool, write costWriter) {
	var before captureCounts
	if p != nil {
		before = p.counts(b)
	}
	b.ReportAllocs()
	run := write(b, m)
	slices.Sort(run.chunks)
	b.ReportMetric(run.chunks[len(run.chunks)/2], "ns/write")
	if p == nil {
		return
	}
	after := p.counts(b)
	got, lost := after.read-before.read, after.overflows-before.overflows
	lo, hi := 0, 0
	if watched {
		lo, hi = run.writes, run.writes+run.aborted
	}
	if got < uint64(lo) || got > uint64(hi) {
		b.Errorf("capture reported %d changes for %d writes; want %d to %d", got, run.writes, lo, hi)
	}
	if lost != 0 {
		b.Errorf("capture lost %d changes: the figure includes ring overflows", lost)
	}
}

// userWrites updates m b.N times from user space, cycling through its keys.
func userWrites(b *testing.B, m *Map) costRun {
	keys := make([][]byte, m.MaxEntries)
	for i := range keys {
		keys[i] = key(m, i)
	}
	val := value(m, 0, 1)
	fd := uint32(m.m.FD())
	run := costRun{writes: b.N, chunks: make([]float64, 0, b.N/costUserChunk+1)}
	b.ResetTimer()
	for i := 0; i < b.N; {
		n := min(b.N-i, costUserChunk)
		start := time.Now()
		for range n {
			// The daemon's own allocation-free BPF_MAP_UPDATE_ELEM, so the
			// garbage collector stays out of the figure.
			if errno := elem(cmdMapUpdateBatch, fd, 0, keys[i%len(keys)], val); errno != 0 {
				b.Fatalf("update map %s: %v", m, errno)
			}
			i++
		}
		run.chunks = append(run.chunks, float64(time.Since(start).Nanoseconds())/float64(n))
	}
	b.StopTimer()
	return run
}

// batchWrites updates m at least b.N times from user space, with batch
// commands of costBatch elements, each a timed chunk.
func batchWrites(b *testing.B, m *Map) costRun {
	var keys, vals []byte
	for i := range costBatch {
		keys, vals = append(keys, key(m, i)...), append(vals, value(m, i, 1)...)
	}
	fd := uint32(m.m.FD())
	batches := (b.N + costBatch - 1) / costBatch
	run := costRun{writes: batches * costBatch, chunks: make([]float64, 0, batches)}
	b.ResetTimer()
	for range batches {
		start := time.Now()
		if n, errno := batch(cmdMapUpdateBatch, fd, 0, keys, vals, costBatch); errno != 0 || n != costBatch {
			b.Fatalf("batch update of map %s: %d of %d elements, %v", m, n, costBatch, errno)
		}
		run.chunks = append(run.chunks, float64(time.Since(start).Nanoseconds())/costBatch)
	}
	b.StopTimer()
	return run
}

// progWrites updates m at least b.N times from a BPF program; the kernel
// times the runs.
func progWrites(b *testing.B, m *Map) costRun {
	writes := make([]progWrite, costWritesPerRun)
	for i := range writes {
		writes[i] = progWrite{m: m, key: key(m, i), value: value(m, i, 1)}
	}
	prog := writerProgram(b, writes)
	data := make([]byte, 64)
	runs := (b.N + costWritesPerRun - 1) / costWritesPerRun
	run := costRun{writes: runs * costWritesPerRun, chunks: make([]float64, 0, runs/costProgChunk+1)}
	b.ResetTimer()
	for done := 0; done < runs; {
		n := min(runs-done, costProgChunk)
		// A signal aborts the kernel's loop midway and cilium/ebpf repeats
		// it whole: the aborted runs' writes happened too.
		_, perRun, err := prog.Benchmark(data, n, func() { run.aborted += n * costWritesPerRun })
		if err != nil {
			b.Fatal(err)
		}
		run.chunks = append(run.chunks, float64(perRun.Nanoseconds())/costWritesPerRun)
		done += n
	}
	b.StopTimer()
	return run
}

// The capture process of BenchmarkCaptureCost is the test binary run again
// as TestCaptureReaderProcess, selected by these variables.
const (
	envCaptureReader    = "UDPMAPSYNC_CAPTURE_READER"     // the backend to attach
	envCaptureReaderMap = "UDPMAPSYNC_CAPTURE_READER_MAP" // the id of the map to watch
)

// captureProcess is a running capture process: every line written to req
// asks for its counts, which it answers with one line on answers after
// reading everything queued so far.
type captureProcess struct {
	req     io.WriteCloser
	answers *bufio.Scanner
}

// captureCounts are a capture process's totals since it started.
type captureCounts struct {
	read      uint64 // changes read from the ring
	overflows uint64 // [Capture.Overflows]
}

// startCaptureProcess starts a capture process for backend watching m. It
// skips b where this kernel refuses fentry, unless in the VM.
func startCaptureProcess(b *testing.B, backend Backend, m *Map) *captureProcess {
	b.Helper()
	ansR, ansW, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestCaptureReaderProcess$")
	cmd.Env = append(os.Environ(), envCaptureReader+"="+string(backend), fmt.Sprint(envCaptureReaderMap, "=", m.ID))
	cmd.ExtraFiles = []*os.File{ansW}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	req, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	ansW.Close()
	b.Cleanup(func() {
		req.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("capture process: %v\n%s", err, out.Bytes())
		}
		ansR.Close()
	})
	p := &captureProcess{req: req, answers: bufio.NewScanner(ansR)}
	line := p.answer(b)
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		if backend == BackendFentry && strings.Contains(msg, fentryRefusedText) && os.Getenv(envVM) != "1" {
			b.Skipf("this kernel refuses fentry/fexit programs; make vmbench measures them in a VM (%s)", msg)
		}
		b.Fatalf("capture process: %s", msg)
	}
	if line != "ready" {
		b.Fatalf("capture process said %q, want ready", line)
	}
	return p
}

func (p *captureProcess) answer(b *testing.B) string {
	b.Helper()
	if !p.answers.Scan() {
		b.Fatalf("capture process gave no answer (%v)", p.answers.Err())
	}
	return p.answers.Text()
}

// counts returns the process's totals, including every change queued before
// the call.
func (p *captureProcess) counts(b *testing.B) captureCounts {
	b.Helper()
	if _, err := io.WriteString(p.req, "counts\n"); err != nil {
		b.Fatalf("ask the capture process: %v", err)
	}
	var c captureCounts
	line := p.answer(b)
	if _, err := fmt.Sscan(line, &c.read, &c.overflows); err != nil {
		b.Fatalf("capture process answered %q, want two counts", line)
	}
	return c
}

// TestCaptureReaderProcess is the capture process of BenchmarkCaptureCost;
// it does nothing unless the benchmark starts it.
func TestCaptureReaderProcess(t *testing.T) {
	backend := Backend(os.Getenv(envCaptureReader))
	if backend == "" {
		t.Skip("the capture process of BenchmarkCaptureCost; it starts it")
	}
	answers := os.NewFile(3, "answers")
	maps, err := OpenMaps([]string{"id:" + os.Getenv(envCaptureReaderMap)})
	if err != nil {
		t.Fatal(err)
	}
	defer maps[0].Close()
	c, err := NewCapture(CaptureOptions{Backend: backend, Maps: maps})
	if err != nil {
		// One line: a verifier log spans many.
		fmt.Fprintln(answers, "error", strings.ReplaceAll(err.Error(), "\n", "; "))
		return
	}
	requests := make(chan chan captureCounts)
	done := make(chan error, 1)
	go func() { done <- drainCapture(c, maps[0].ID, requests) }()
	fmt.Fprintln(answers, "ready")
	for in := bufio.NewScanner(os.Stdin); in.Scan(); {
		reply := make(chan captureCounts)
		var counts captureCounts
		select {
		case requests <- reply:
		case err := <-done:
			t.Fatalf("capture reader stopped: %v", err)
		}
		select {
		case counts = <-reply:
		case err := <-done:
			t.Fatalf("capture reader stopped: %v", err)
		}
		fmt.Fprintln(answers, counts.read, counts.overflows)
	}
	c.Close()
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("capture reader: %v", err)
	}
}

// Poll intervals of drainCapture: while changes flow it polls, as the
// daemon's sender does, so that their writers wake nobody (see
// [Capture.SetDeadline]); when idle it waits to be woken.
const (
	drainBusyPoll = time.Millisecond
	drainIdlePoll = 20 * time.Millisecond
)

// drainCapture reads c until it is closed, checking that every change is of
// map id. A channel received on requests gets the counts once everything
// queued when it arrived is read.
func drainCapture(c *Capture, id ebpf.MapID, requests <-chan chan captureCounts) error {
	var read uint64
	busy := false
	for {
		if busy {
			time.Sleep(drainBusyPoll)
			c.SetDeadline(time.Now())
		} else {
			c.SetDeadline(time.Now().Add(drainIdlePoll))
		}
		n, err := readQueued(c, id)
		read += n
		if err != nil {
			return err
		}
		busy = n > 0
		select {
		case reply := <-requests:
			c.SetDeadline(time.Now())
			n, err := readQueued(c, id)
			read += n
			if err != nil {
				return err
			}
			lost, err := c.Overflows()
			if err != nil {
				return err
			}
			reply <- captureCounts{read: read, overflows: lost}
		default:
		}
	}
}

// readQueued reads changes until the deadline has passed and the ring is
// empty, and returns how many it read.
func readQueued(c *Capture, id ebpf.MapID) (uint64, error) {
	var ch Change
	var n uint64
	for {
		err := c.Read(&ch)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if ch.MapID != id {
			return n, fmt.Errorf("captured a change of map %d, watching only %d", ch.MapID, id)
		}
		n++
	}
}
