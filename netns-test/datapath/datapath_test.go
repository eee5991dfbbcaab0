package datapath

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The programs load, write in place what they say, and the LRU churn
// leaves evictions behind.
func TestPrograms(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs")
	}
	n, err := New()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for k := range uint32(10) {
		if err := n.Flows.Put(k, CTEntry{Packets: 1}); err != nil {
			t.Fatal(err)
		}
		if err := n.LRUFlows.Put(k, CTEntry{}); err != nil {
			t.Fatal(err)
		}
		if err := n.Locked.Put(k, LockedEntry{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Refresh(0, 20, 30*time.Second, 100); err != nil {
		t.Fatal(err)
	}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	var e CTEntry
	if err := n.Flows.Lookup(uint32(3), &e); err != nil {
		t.Fatal(err)
	}
	now := ts.Nano()
	if e.Packets != 2 || e.Bytes != 100 || int64(e.Expires) < now+29e9 || int64(e.Expires) > now+30e9 ||
		int64(e.Lifetime) != (int64(e.Expires)-30e9)/1e9+30 {
		t.Errorf("refreshed entry %+v, now %d", e, now)
	}
	if n, _ := n.Flows.Info(); n == nil {
		t.Fatal("no info")
	}
	if err := n.Bump(0, 10); err != nil {
		t.Fatal(err)
	}
	var l LockedEntry
	if err := n.Locked.Lookup(uint32(9), &l); err != nil || l.Words[15] != 1 || l.Torn() || l.State != 1 {
		t.Errorf("bumped entry %+v, %v", l, err)
	}
	// 256 slots, 10 used: 300 inserts evict some of the 10.
	if err := n.Churn(1000, 300); err != nil {
		t.Fatal(err)
	}
	left := 0
	var k uint32
	for it := n.LRUFlows.Iterate(); it.Next(&k, &e); {
		if k >= 1000 {
			t.Errorf("churn left key %d", k)
		}
		left++
	}
	t.Logf("the churn left %d of 10 entries", left)
}
