package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// runDelay reads the second field of a schedstat file, which a re-read of
// the same open file returns anew.
func TestRunDelay(t *testing.T) {
	path := filepath.Join(t.TempDir(), "schedstat")
	if err := os.WriteFile(path, []byte("966475 5949932 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for range 2 {
		if d, err := runDelay(f); err != nil || d != 5949932*time.Nanosecond {
			t.Fatalf("got %v, %v; want 5.949932ms", d, err)
		}
	}
	if err := os.WriteFile(path, []byte("966475\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := runDelay(f); err == nil {
		t.Error("a file of one field: no error")
	}
}

// A watch of this process's threads sees the kernel's run delays: the
// thread that reads them accumulates some on any machine, and the
// replicators' side, with no process, stays at zero.
func TestWaitWatch(t *testing.T) {
	self, err := os.Open("/proc/self/schedstat")
	if err != nil {
		t.Skipf("no schedstat (CONFIG_SCHED_INFO): %v", err)
	}
	self.Close()
	w := startWaitWatch([]int{0})
	// Every wake-up of the watch's thread waits some ns for the core.
	time.Sleep(10 * waitPoll)
	x := w.end()
	if x != w.end() {
		t.Error("a second end measured again")
	}
	if x.HarnessPerSec <= 0 || x.HarnessMs <= 0 || x.ReplicatorMs != 0 || x.ReplicatorPerSec != 0 || x.Poll != 20 {
		t.Errorf("got %+v, want the harness's waits only", x)
	}
}
