package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/udpmapsync/udpmapsync/perf/report"
)

// waitPoll is how often a waitWatch reads the threads' run delays: often
// enough to place a wait of tens of ms in the run, rarely enough that the
// reads (one pread per thread) cost well under 1 % of a core.
const waitPoll = 20 * time.Millisecond

// waitWatch measures how long the replicators' threads, and the harness's
// own (the observers that time each apply), were runnable but waited for
// a core during a run: the kernel's run_delay (/proc/PID/task/TID/schedstat,
// the second field, ns), read every waitPoll. On a machine shared with
// other work, a latency tail of tens or hundreds of ms with no repair, hold
// or resync in the daemons' counters is this wait; the figures say so in
// each run.
type waitWatch struct {
	stop chan struct{}
	done sync.WaitGroup
	once sync.Once
	got  *report.Waits
	// threads[0] are the replicators', threads[1] the harness's.
	threads [2]map[string]*threadWait
	longest [2]time.Duration
	total   [2]time.Duration
	start   time.Time
}

// threadWait is one thread's schedstat file, kept open, and its last
// reading.
type threadWait struct {
	f    *os.File
	last time.Duration
}

// startWaitWatch starts watching the threads of pids (the replicators;
// 0 for one not started) and of this process.
func startWaitWatch(pids []int) *waitWatch {
	w := &waitWatch{stop: make(chan struct{}), start: time.Now()}
	w.threads[0], w.threads[1] = map[string]*threadWait{}, map[string]*threadWait{}
	var dirs [2][]string
	for _, pid := range pids {
		if pid != 0 {
			dirs[0] = append(dirs[0], fmt.Sprintf("/proc/%d/task", pid))
		}
	}
	dirs[1] = []string{"/proc/self/task"}
	w.scan(dirs)
	w.done.Go(func() {
		t := time.NewTicker(waitPoll)
		defer t.Stop()
		for polls := 1; ; polls++ {
			select {
			case <-w.stop:
				w.read()
				return
			case <-t.C:
			}
			// Threads a Go program starts late, rarely: look for new
			// ones every second.
			if polls%50 == 0 {
				w.scan(dirs)
			}
			w.read()
		}
	})
	return w
}

// scan opens the schedstat files of threads not yet watched.
func (w *waitWatch) scan(dirs [2][]string) {
	for g := range dirs {
		for _, dir := range dirs[g] {
			ents, err := os.ReadDir(dir)
			if err != nil {
				continue // the process ended
			}
			for _, e := range ents {
				path := dir + "/" + e.Name() + "/schedstat"
				if _, ok := w.threads[g][path]; ok {
					continue
				}
				f, err := os.Open(path)
				if err != nil {
					continue
				}
				t := &threadWait{f: f}
				t.last, _ = runDelay(f)
				w.threads[g][path] = t
			}
		}
	}
}

// read adds what every thread waited since the last read.
func (w *waitWatch) read() {
	for g := range w.threads {
		for _, t := range w.threads[g] {
			d, err := runDelay(t.f)
			if err != nil || d < t.last {
				continue // the thread ended
			}
			w.total[g] += d - t.last
			w.longest[g] = max(w.longest[g], d-t.last)
			t.last = d
		}
	}
}

// runDelay reads a schedstat file's second field.
func runDelay(f *os.File) (time.Duration, error) {
	var buf [96]byte
	n, err := f.ReadAt(buf[:], 0)
	if n == 0 {
		return 0, err
	}
	fields := strings.Fields(string(buf[:n]))
	if len(fields) < 2 {
		return 0, fmt.Errorf("%s: %q", f.Name(), buf[:n])
	}
	ns, err := strconv.ParseInt(fields[1], 10, 64)
	return time.Duration(ns), err
}

// end stops the watch and returns what it measured; again, the same.
func (w *waitWatch) end() *report.Waits {
	w.once.Do(func() {
		close(w.stop)
		w.done.Wait()
		secs := time.Since(w.start).Seconds()
		for g := range w.threads {
			for _, t := range w.threads[g] {
				t.f.Close()
			}
		}
		w.got = &report.Waits{
			Poll:             waitPoll.Seconds() * 1e3,
			ReplicatorMs:     w.longest[0].Seconds() * 1e3,
			HarnessMs:        w.longest[1].Seconds() * 1e3,
			ReplicatorPerSec: w.total[0].Seconds() * 1e3 / secs,
			HarnessPerSec:    w.total[1].Seconds() * 1e3 / secs,
		}
	})
	return w.got
}
