package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/transport"
)

// split puts the records whose hash has the split bit set after the
// others, each half in the order it had.
func TestApplySplit(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 10, 4, 8, nopTarget{}))
	a := newTestNode(t, Config{Table: tab}).apply
	m := tab.byID(10)
	const n = 40
	var keys, vals []byte
	hashes := make([]uint64, n)
	var want [2][]int
	for i := range n {
		keys = binary.BigEndian.AppendUint32(keys, uint32(i))
		vals = binary.BigEndian.AppendUint64(vals, uint64(i))
		half := (i * 7 / 3) % 2 // uneven runs of each half
		hashes[i] = uint64(half)<<splitBit | uint64(i)
		want[half] = append(want[half], i)
	}
	first := a.split(m, ops.Update, keys, vals, hashes)
	if first != len(want[0]) {
		t.Fatalf("first half of %d records, want %d", first, len(want[0]))
	}
	for j, i := range append(want[0], want[1]...) {
		if k, v := binary.BigEndian.Uint32(keys[j*4:]), binary.BigEndian.Uint64(vals[j*8:]); k != uint32(i) || v != uint64(i) {
			t.Fatalf("record %d is key %d value %d, want %d", j, k, v, i)
		}
	}
	// Deletes have no values to move.
	keys = keys[:0]
	for i := range n {
		keys = binary.BigEndian.AppendUint32(keys, uint32(i))
	}
	if got := a.split(m, ops.Delete, keys, nil, hashes); got != first {
		t.Fatalf("deletes: first half of %d, want %d", got, first)
	}
	for j, i := range append(want[0], want[1]...) {
		if k := binary.BigEndian.Uint32(keys[j*4:]); k != uint32(i) {
			t.Fatalf("delete %d is key %d, want %d", j, k, i)
		}
	}
}

// workerStream is a peer's stream of datagrams for the worker tests and
// benchmarks: records of keys of keySize bytes drawn from keys distinct
// ones, values of valueSize bytes; every key spread over the whole range,
// each record stamped after the one before. Keys and values hold the
// record's number, so the last write of each key can be told. With
// deleteEvery, every deleteEvery-th run of deleteRun records deletes, as
// a writer's batch syscall of deletes does.
type workerStream struct {
	fp                   uint32
	keySize, valueSize   int
	keys                 int
	deleteEvery, records int
}

const deleteRun = 200

// datagrams builds count datagrams from record first on, stamped from
// base on.
func (s workerStream) datagrams(base hlc.Stamp, first, count int) [][]byte {
	out := make([][]byte, 0, count)
	key, val := make([]byte, s.keySize), make([]byte, s.valueSize)
	r := first
	for range count {
		var c changesBuilder
		c.start()
		c.w.Reset(c.buf, peerNode, uint64(base))
		for {
			k := uint32(r) * 2654435761 % uint32(s.keys) // Fibonacci hashing: spread
			binary.BigEndian.PutUint32(key, k)
			binary.BigEndian.PutUint64(val, uint64(r))
			op, v := ops.Update, val
			if s.deleteEvery > 0 && r/deleteRun%s.deleteEvery == s.deleteEvery-1 {
				op, v = ops.Delete, nil
			}
			if !c.w.Append(s.fp, op, uint64(base)+uint64(r), peerNode, key, v) {
				break
			}
			r++
		}
		out = append(out, c.finish(peerNode, 1, 1))
	}
	return out
}

// workerNode is a node that applies into a new kernel hash map of the
// stream's sizes, with the given number of apply workers.
func workerNode(t testing.TB, s *workerStream, workers int) (*Node, *ebpf.Map) {
	t.Helper()
	km, err := ebpf.NewMap(&ebpf.MapSpec{Name: "apply_workers", Type: ebpf.Hash, KeySize: uint32(s.keySize),
		ValueSize: uint32(s.valueSize), MaxEntries: uint32(s.keys)})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	t.Cleanup(func() { km.Close() })
	tab := mustTable(t, testPayload, MapFromLoader(openLoaderMap(t, km)))
	s.fp = tab.maps[0].fp
	n := newTestNode(t, Config{Table: tab})
	if workers == 2 {
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		n.apply.worker = startApplyWorker(stop)
	}
	return n, km
}

// feed hands the datagrams to n in order, from sequence number seq on,
// applying every batch of them as one receive batch; it returns the next
// sequence number and how many changes were applied.
func feed(n *Node, dgrams [][]byte, batch int, seq uint64) (uint64, int) {
	now := time.Now()
	applied := 0
	for i, d := range dgrams {
		setSeq(d, seq)
		seq++
		pkt := transport.Packet{Data: d, From: peerA, Unicast: true}
		n.dispatch.handle(&pkt, now)
		if (i+1)%batch == 0 || i == len(dgrams)-1 {
			applied += n.apply.applyRuns()
		}
	}
	return seq, applied
}

// Two workers leave the map as one does: each key holds its last write,
// though a receive batch carries several writes of many keys, deletes
// among them, and the runs are large enough to be split.
func TestApplyWorkersKeepOrder(t *testing.T) {
	maps := make([]*ebpf.Map, 0, 2)
	for _, workers := range []int{1, 2} {
		s := &workerStream{keySize: 16, valueSize: 64, keys: 128, deleteEvery: 3}
		n, km := workerNode(t, s, workers)
		// 64 datagrams a batch, 15 records each, in runs of 200 to 400:
		// every key written two or three times in each run.
		dgrams := s.datagrams(testClock.Now(), 0, 256)
		if _, applied := feed(n, dgrams, 64, 1); applied == 0 {
			t.Fatalf("%d workers: nothing applied", workers)
		}
		if st := n.Stats().Snapshot(); st.ApplyErrors != 0 || st.Malformed != 0 {
			t.Fatalf("%d workers: stats %+v", workers, st)
		}
		maps = append(maps, km)
	}
	one, two := dump(t, maps[0]), dump(t, maps[1])
	if len(one) == 0 {
		t.Fatal("the map of one worker is empty")
	}
	if len(one) != len(two) {
		t.Fatalf("one worker left %d keys, two %d", len(one), len(two))
	}
	for k, v := range one {
		if !bytes.Equal(two[k], v) {
			t.Errorf("key %x: one worker left %x, two %x", k, v[:8], two[k][:8])
		}
	}
}

// dump reads a kernel map into key -> value.
func dump(t *testing.T, km *ebpf.Map) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	var k, v []byte
	it := km.Iterate()
	for it.Next(&k, &v) {
		out[string(k)] = slices.Clone(v)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// BenchmarkApplyWorkers applies the same stream of a peer, 16 B keys and
// 64 B values spread over 256k keys of a kernel hash map, with one and
// with two apply workers, 32 datagrams (about 500 changes) a receive
// batch: the rate one receiver applies at, and what a second core buys;
// cpu-ns/change is the CPU both take, the benchmark's own generation of
// the datagrams left out.
func BenchmarkApplyWorkers(b *testing.B) {
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			s := &workerStream{keySize: 16, valueSize: 64, keys: 1 << 18}
			n, _ := workerNode(b, s, workers)
			const rounds, batch = 1024, 32
			seq, record, count := uint64(1), 0, 0
			var dgrams [][]byte
			var cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				dgrams = s.datagrams(testClock.Now(), record, rounds)
				record += rounds * 16
				b.StartTimer()
				began := processCPU(b)
				var applied int
				seq, applied = feed(n, dgrams, batch, seq)
				count += applied
				cpu += processCPU(b) - began
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(max(count, 1)), "ns/change")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(max(count, 1)), "cpu-ns/change")
		})
	}
}

// processCPU is the CPU time, user and system, the process has used.
func processCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A node takes one or two apply workers, no other number.
func TestApplyWorkersRefused(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 10, 4, 8, nopTarget{}))
	for _, w := range []int{-1, 3} {
		_, err := NewNode(Config{Node: ourNode, Table: tab, Source: &chanSource{ch: make(chan loader.Change)},
			Transport: nopTransport{}, ApplyWorkers: w})
		if !errors.Is(err, ErrApplyWorkers) {
			t.Errorf("%d workers: %v, want ErrApplyWorkers", w, err)
		}
	}
}
