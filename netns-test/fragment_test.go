package netnstest

// Records larger than a datagram on the real kernel: 4 KiB and 16000-byte
// values at the veth's 1500-byte MTU travel as fragments (wire/FORMAT.md,
// "Fragments").
//
//	┌─ node1 ──────────┐ ┌─ node2 ──────────┐ ┌─ node3 ──────────┐
//	│ udpmapsync       │ │ udpmapsync       │ │ udpmapsync, late │
//	│ the test writes  │ │ drops 10% of the │ │ join; drops 10%  │
//	│ 4 KiB, 16000 B   │ │ datagrams to it  │ │ (TestLargeValues)│
//	│                  │ │                  │ │ or the attacker, │
//	│                  │ │                  │ │ no daemon        │
//	│ eth1 10.77.0.1   │ │ eth1 10.77.0.2   │ │ eth1 10.77.0.3   │
//	└────────┬─────────┘ └────────┬─────────┘ └────────┬─────────┘
//	         └────────────────────┴────────────────────┘
//	                    br0 (MTU 1500)

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// bigMaps is one hash map of values of size bytes: 4096 bytes are 3
// fragments a record at MTU 1500, 16000 bytes 12.
func bigMaps(size uint32) []MapSpec {
	return []MapSpec{{Name: "big", Type: ebpf.Hash, KeySize: 4, ValueSize: size, MaxEntries: 1024}}
}

// writeBig makes n changes of w on node i with the ebpf library, from
// the test's process: bpftool takes a value as one argument a byte, more
// than its batch mode allows a line for a 4 KiB value.
func writeBig(t *testing.T, c *Cluster, i int, w *Workload, n int) {
	t.Helper()
	m := c.open[i][0]
	for range n {
		ch := w.Next()
		var err error
		if ch.Delete {
			err = m.Delete(ch.Key)
		} else {
			err = m.Put(ch.Key, ch.Value)
		}
		if err != nil {
			t.Fatalf("write %s on node%d: %v", ch.Map, i+1, err)
		}
	}
}

// waitWant waits until every started node holds want, failing after d.
func waitWant(t *testing.T, c *Cluster, want map[string]Contents, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	if st, err := c.WaitConverged(ctx, want, 100*time.Millisecond, nil); err != nil {
		t.Fatalf("not converged after %v: %v\n%v", d, err, st)
	}
}

// lastStats waits for a stats line of node i's daemon that satisfies ok.
func lastStats(t *testing.T, c *Cluster, i int, ok func(Stats) bool) Stats {
	t.Helper()
	var s Stats
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var err error
		if s, err = c.Daemons[i].Stats(); err != nil {
			t.Fatal(err)
		}
		if s != nil && ok(s) || time.Now().After(deadline) {
			return s
		}
	}
}

// TestLargeValues writes 4 KiB and 16000-byte values on node1; node2
// loses a tenth of what is sent to it and repairs it, node3 joins late
// through a resync, losing a tenth too, and all three end with exactly
// what was written. The daemons seal (--key-file), so every fragment is
// sealed.
func TestLargeValues(t *testing.T) {
	for _, size := range []uint32{4096, 16000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) { largeValues(t, size) })
	}
}

func largeValues(t *testing.T, size uint32) {
	maps := bigMaps(size)
	c := newScenario(t, ClusterConfig{Nodes: 3, Maps: maps, Later: []int{2},
		Daemon: DaemonConfig{StatsInterval: 200 * time.Millisecond}})
	filter(t, func(ctx context.Context) (*Filter, error) { return c.Topology.Nodes[1].DropDatagrams(ctx, 10) })
	w, err := NewWorkload(WorkloadConfig{Maps: maps, Writer: 1, Writers: 1, Keys: 300, DeleteRatio: 0.1, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	writeBig(t, c, 0, w, 600)
	filter(t, func(ctx context.Context) (*Filter, error) { return c.Topology.Nodes[2].DropDatagrams(ctx, 10) })
	if err := c.Start(2); err != nil {
		t.Fatal(err)
	}
	writeBig(t, c, 0, w, 200)
	waitWant(t, c, w.Want(), 60*time.Second)

	// Sealed datagrams: the payload less the seal.
	per := wire.FragmentCount(int(size), wire.FragmentRoom(linkMTU-UDPOverhead-wire.SealSize, 4))
	// Counted as sent, by the sender and the snapshot server: a whole
	// number of records' worth once both are done.
	whole := func(s Stats) bool {
		n := s["fragments_sent"]
		return n >= uint64(per)*600 && n%uint64(per) == 0
	}
	if s := lastStats(t, c, 0, whole); !whole(s) {
		t.Errorf("node1 sent %d fragments for 800 changes (some deletes) and a resync, want %d a record", s["fragments_sent"], per)
	}
	for i := 1; i < 3; i++ {
		s := lastStats(t, c, i, func(s Stats) bool { return s["records_reassembled"] > 0 })
		if s["records_reassembled"] == 0 {
			t.Errorf("node%d put no record together: %v", i+1, s)
		}
		for _, bad := range []string{"fragments_malformed", "fragments_inconsistent", "fragments_refused", "fragments_duplicate"} {
			if s[bad] != 0 {
				t.Errorf("node%d: %s %d from an honest peer", i+1, bad, s[bad])
			}
		}
		t.Logf("node%d: %v", i+1, s)
	}
	if s := lastStats(t, c, 1, func(s Stats) bool { return s["repaired"] > 0 }); s["repaired"] == 0 {
		t.Errorf("node2 repaired nothing under 10%% loss: %v", s)
	}
	if s := lastStats(t, c, 2, func(s Stats) bool { return s["resyncs_received"] > 0 }); s["resyncs_received"] == 0 {
		t.Errorf("node3 joined late without a resync: %v", s)
	}
}

// TestHostileFragments has a host without a daemon, on a cluster without
// a key (so that what it forges is read), send node2 fragments that lie
// in every way: index and count at the ends of their ranges, fragments of
// deletes, records never completed, repeated chunks, counts that change,
// thousands of records from dozens of forged nodes. node2's map stays
// what node1 wrote, its memory does not grow by more than the reassembly
// bound, every kind of lie is counted, and it still replicates after.
func TestHostileFragments(t *testing.T) {
	maps := bigMaps(4096)
	c := newScenario(t, ClusterConfig{Nodes: 3, Maps: maps, Later: []int{2},
		Daemon: DaemonConfig{StatsInterval: 200 * time.Millisecond, InsecureNoKey: true}})
	w, err := NewWorkload(WorkloadConfig{Maps: maps, Writer: 1, Writers: 1, Keys: 100, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	writeBig(t, c, 0, w, 200)
	waitWant(t, c, w.Want(), 30*time.Second)
	att, err := NewAttacker(c.Topology.Nodes[2], Group, Port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { att.Close() })
	victim := c.Daemons[1]
	honest := lastStats(t, c, 1, func(s Stats) bool { return s["records_reassembled"] >= 200 })
	before, err := RSS(victim.Pid())
	if err != nil {
		t.Fatal(err)
	}

	desc := maps[0].Descriptor()
	fp := desc.Fingerprint()
	dst := netip.AddrPortFrom(c.Topology.Nodes[1].Addr, Port)
	rng := rand.New(rand.NewPCG(3, 4))
	value := make([]byte, 4096)
	buf := make([]byte, linkMTU-UDPOverhead)
	seqs := map[uint32]uint64{}
	// send sends one changes datagram of the forged node with the base
	// stamp base, holding the fragments that add appends, then lets edit
	// change its bytes.
	send := func(node uint32, base uint64, add func(w *wire.ChangeWriter), edit func(d []byte)) {
		var cw wire.ChangeWriter
		cw.Reset(buf, node, base)
		add(&cw)
		seqs[node]++
		d := cw.Finish(wire.Header{Node: node, Epoch: 1, Seq: seqs[node]})
		if edit != nil {
			edit(d)
		}
		if err := att.Send(dst, d); err != nil {
			t.Fatal(err)
		}
	}
	key := func(i int) []byte { return binary.BigEndian.AppendUint32(nil, 0xee000000|uint32(i)) }
	// The index and count of the first record, after its op, one-byte
	// offset (0: its stamp is the base) and 4-byte key.
	const at = wire.HeaderSize + wire.StampBaseSize + wire.SectionHeaderSize + 1 + 1 + 4
	stamp := uint64(time.Now().UnixMilli()) << 16
	for round := range 40 {
		node := uint32(0x0bad0000 + round%32)
		for i := range value {
			value[i] = byte(rng.Uint32())
		}
		s := stamp + uint64(round)
		// Never completed: the first of 3, of many records.
		for i := range 50 {
			send(node, s, func(w *wire.ChangeWriter) { w.AppendFragment(fp, s, node, key(round*50+i), value, 0, 3) }, nil)
		}
		// Interleaved, repeated, and with a count that changes: 128
		// chunks of 32 bytes and 100 of 41, many records a datagram.
		send(node, s, func(w *wire.ChangeWriter) {
			w.AppendFragment(fp, s, node, key(0), value, 0, 128)
			w.AppendFragment(fp, s, node, key(0), value, 0, 128)
			for i := range 12 {
				w.AppendFragment(fp, s, node, key(i%3), value, i%5, 128)
				w.AppendFragment(fp, s, node, key(i%3), value, i%5, 100)
			}
		}, nil)
		// Ends of the ranges: index = count, count 1, count 0, 255 of
		// 255 and 0 of 255, counts that leave the last chunk of 4096
		// bytes empty, and a fragment of a delete.
		for _, b := range [][2]byte{{3, 3}, {0, 1}, {0, 0}, {255, 255}, {0, 255}} {
			send(node, s, func(w *wire.ChangeWriter) { w.AppendFragment(fp, s, node, key(0), value, 0, 3) },
				func(d []byte) { d[at], d[at+1] = b[0], b[1] })
		}
		send(node, s, func(w *wire.ChangeWriter) { w.AppendFragment(fp, s, node, key(0), value, 0, 3) },
			func(d []byte) { d[at-6] = wire.RecordFragment | byte(ops.Delete) })
		time.Sleep(5 * time.Millisecond)
	}

	s := lastStats(t, c, 1, func(s Stats) bool {
		return s["fragments_malformed"] >= 40*6
	})
	s = lastStats(t, c, 1, func(s Stats) bool {
		return s["fragments_abandoned"] > 0 && s["fragments_duplicate"] > 0 && s["fragments_inconsistent"] > 0 && s["fragments_malformed"] > 0
	})
	for _, want := range []string{"fragments_abandoned", "fragments_duplicate", "fragments_inconsistent", "fragments_malformed"} {
		if s[want] == 0 {
			t.Errorf("node2 counted no %s: %v", want, s)
		}
	}
	if s["records_reassembled"] != honest["records_reassembled"] {
		t.Errorf("node2 put %d forged records together, none of which was complete", s["records_reassembled"]-honest["records_reassembled"])
	}
	if s["fragments_malformed"] != 40*6 {
		t.Errorf("node2 counted %d malformed fragment datagrams, want the 240 sent", s["fragments_malformed"])
	}
	after, err := RSS(victim.Pid())
	if err != nil {
		t.Fatal(err)
	}
	// The default reassembly bound (32 MiB) is far more than a forged node's
	// one partial of its change stream at a time can hold: 32 of them,
	// 4 KiB each. 16 MiB of slack for the Go heap.
	if after > before+16<<20 {
		t.Errorf("node2's RSS grew from %.1f to %.1f MiB under forged fragments", mib(before), mib(after))
	}
	t.Logf("node2 RSS %.1f → %.1f MiB; %v", mib(before), mib(after), s)
	// The map is what node1 wrote, and still replicates.
	writeBig(t, c, 0, w, 100)
	waitWant(t, c, w.Want(), 30*time.Second)
}
