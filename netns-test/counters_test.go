package netnstest

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// TestCountersDaemons runs three daemons whose one map is a merge=sum map
// of counters (so they run without a capture: scans find what the
// datapath counts). Each node's datapath adds to one client's counter in
// place; every node ends with the cluster-wide total. A daemon stopped
// while its datapath counts on takes up, at its restart, the
// contributions it saved, and the increments made meanwhile reach every
// node; a daemon killed (no saved contributions) clears its map and
// relearns the group's, losing only what its datapath counted since it
// last sent.
func TestCountersDaemons(t *testing.T) {
	hits := MapSpec{Name: "hits", Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 1024, Options: "merge=sum,origins=3,scan=50ms"}
	c := startCluster(t, ClusterConfig{Nodes: 3, Maps: []MapSpec{hits}})
	key := binary.NativeEndian.AppendUint32(nil, 7)
	var progs []*ebpf.Program
	for i := range 3 {
		m, err := ebpf.LoadPinnedMap(c.PinPath(i, hits.Name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		// The client's entry, created from user space on every node.
		if err := c.Write(t.Context(), i, []Change{{Map: hits.Name, Key: key, Value: make([]byte, 16)}}); err != nil {
			t.Fatal(err)
		}
		progs = append(progs, addInPlace(t, m, 7, int32(10*(i+1))))
	}
	var total uint64
	count := func(i, times int) {
		t.Helper()
		for range times {
			if _, err := progs[i].Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
				t.Fatal(err)
			}
			total += uint64(10 * (i + 1))
		}
	}
	converge := func(what string) {
		t.Helper()
		want := Contents{string(key): string(binary.NativeEndian.AppendUint64(binary.NativeEndian.AppendUint64(nil, total), 0))}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		if _, err := c.WaitConverged(ctx, map[string]Contents{hits.Name: want}, 50*time.Millisecond, nil); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	for round := range 5 {
		for i := range 3 {
			count(i, round+1)
		}
	}
	converge("three nodes counting")

	if err := c.Daemons[1].Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	count(1, 4)
	count(0, 2)
	if err := c.Start(1); err != nil {
		t.Fatal(err)
	}
	converge("after a restart of node2's daemon, which counted on while it was down")

	c.Daemons[2].Kill()
	if _, err := c.Daemons[2].Exited(); err == nil {
		time.Sleep(100 * time.Millisecond)
	}
	count(2, 3)
	total -= 3 * 30 // counted while no daemon ran, and lost with the contributions the killed one never saved
	if err := c.Start(2); err != nil {
		t.Fatal(err)
	}
	converge("after node3's daemon was killed and restarted")
}
