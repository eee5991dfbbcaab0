package main

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestDaemonFilterAndStats starts the configuration the run uses on one
// node and checks that the kernel-space filter lets exactly the injected
// range through and that the stats answer parses.
func TestDaemonFilterAndStats(t *testing.T) {
	if _, err := exec.LookPath("conntrackd"); err != nil {
		t.Skip("conntrackd not installed (apt-get install conntrackd)")
	}
	n := oneNode(t)
	d, err := startDaemon(t.Context(), n, filepath.Join(t.TempDir(), n.Name), 1000)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.stop(); err != nil {
			t.Error(err)
		}
	})
	if err := d.waitReady(t.Context()); err != nil {
		t.Fatal(err)
	}

	inj := newInjector(t, n, 16)
	const outside = 0x0a010000 // 10.1.0.0: not in 10.128.0.0/9
	if err := inj.Inject(outside, 0, 30); err != nil {
		t.Fatal(err)
	}
	if err := inj.Inject(entryBase, 0, 100); err != nil {
		t.Fatal(err)
	}
	var s stats
	deadline := time.Now().Add(10 * time.Second)
	for {
		if s, err = d.stats(); err != nil {
			t.Fatal(err)
		}
		if s.InternalActive >= 100 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Give stray events from the other range time to show up.
	time.Sleep(200 * time.Millisecond)
	if s, err = d.stats(); err != nil {
		t.Fatal(err)
	}
	if s.InternalActive != 100 {
		t.Fatalf("internal cache holds %d entries; want the 100 in the accepted range", s.InternalActive)
	}
	if s.ExternalActive != 0 {
		t.Fatalf("external cache holds %d entries with no peer", s.ExternalActive)
	}
}
