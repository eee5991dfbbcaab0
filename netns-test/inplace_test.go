package netnstest

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/control"
	"github.com/udpmapsync/udpmapsync/netns-test/datapath"
)

// TestDaemonInPlace runs two daemons on a map created by bpftool (no
// BTF), its options given on the command line as OFFSET:SIZE fields:
// bpftool's writes are captured, the datapath's in-place refresh on node1
// is found by node1's scans, node2 (whose clocks read an hour ahead,
// --mono-offset) holds each flow with the time node1's had left, and each
// node keeps its own ifindex. `udpmapsync status` shows the options.
func TestDaemonInPlace(t *testing.T) {
	if testing.Short() {
		t.Skip("the in-place paths are the replication package's; this checks the daemon's wiring once")
	}
	const flows = 100
	spec := MapSpec{Name: "ctflows", Type: ebpf.Hash, KeySize: 4, ValueSize: 40, MaxEntries: 4096,
		Options: "scan=200ms,clock=16:8:mono-ns,clock=24:4:mono-s,local=32:4"}
	c := startCluster(t, ClusterConfig{Nodes: 2, Maps: []MapSpec{spec}, NodeArgs: map[int][]string{1: {"--mono-offset", "1h"}}})
	ctx := t.Context()

	now := mono(0)
	var creates []Change
	for k := range uint32(flows) {
		exp := now + int64(time.Minute)
		v, _ := binary.Append(nil, binary.NativeEndian, datapath.CTEntry{Packets: 1, Expires: uint64(exp), Lifetime: uint32(exp / 1e9)})
		creates = append(creates, Change{Map: spec.Name, Key: binary.NativeEndian.AppendUint32(nil, k), Value: v})
	}
	if err := c.Write(ctx, 0, creates); err != nil {
		t.Fatal(err)
	}
	entries := func(i int) map[uint32]datapath.CTEntry {
		t.Helper()
		got, err := c.Read(i)
		if err != nil {
			t.Fatal(err)
		}
		out := map[uint32]datapath.CTEntry{}
		for k, v := range got[spec.Name] {
			var e datapath.CTEntry
			if _, err := binary.Decode([]byte(v), binary.NativeEndian, &e); err != nil {
				t.Fatal(err)
			}
			out[binary.NativeEndian.Uint32([]byte(k))] = e
		}
		return out
	}
	until := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: node1 %d flows, node2 %d", what, len(entries(0)), len(entries(1)))
			}
		}
	}
	until("node2 never held node1's flows", func() bool { return len(entries(1)) == flows })

	// node2 writes its own ifindex with bpftool: captured and sent, but
	// a local field, so node1 keeps its own (0).
	var own []Change
	for k, e := range entries(1) {
		e.Ifindex = 7
		v, _ := binary.Append(nil, binary.NativeEndian, e)
		own = append(own, Change{Map: spec.Name, Key: binary.NativeEndian.AppendUint32(nil, k), Value: v})
	}
	if err := c.Write(ctx, 1, own); err != nil {
		t.Fatal(err)
	}
	pinned, err := ebpf.LoadPinnedMap(c.PinPath(0, spec.Name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	dp, err := datapath.Attach(pinned)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	time.Sleep(300 * time.Millisecond) // node2's writes reach node1 first
	if err := dp.Refresh(0, flows, 10*time.Minute, 100); err != nil {
		t.Fatal(err)
	}
	until("node1's in-place refresh never reached node2", func() bool {
		for _, e := range entries(1) {
			if e.Packets != 2 {
				return false
			}
		}
		return true
	})

	at := mono(0)
	one, two := entries(0), entries(1)
	for k, a := range one {
		b := two[k]
		remA := time.Duration(int64(a.Expires) - at)
		remB := time.Duration(int64(b.Expires) - (at + int64(time.Hour)))
		if d := (remB - remA).Abs(); d > 100*time.Millisecond || remA < 9*time.Minute {
			t.Errorf("flow %d: %s left on node1, %s on node2", k, remA, remB)
		}
		if a.Ifindex != 0 || b.Ifindex != 7 || a.Bytes != 100 || b.Bytes != 100 {
			t.Errorf("flow %d: node1 %+v, node2 %+v", k, a, b)
		}
	}

	st, err := control.Query(c.Daemons[0].ControlSocket, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Maps) != 1 || !strings.Contains(st.Maps[0].Options, "scan=200ms") || !strings.Contains(st.Maps[0].Options, "clock=16:8:mono-ns[16:24]") ||
		!strings.Contains(st.Maps[0].Options, "local=32:4[32:36]") || st.Totals["scan_found"] < flows {
		t.Errorf("status maps %+v, scan_found %d", st.Maps, st.Totals["scan_found"])
	}
}

// mono is the kernel's monotonic clock in ns, shifted by offset.
func mono(offset time.Duration) int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano() + offset.Nanoseconds()
}
