package replication

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// BenchmarkScan is one scan of a kernel hash map of 16 B keys and 64 B
// values (the perf report's shape) in which 1% of the entries changed in
// place since the last: the CPU it costs the process (user and system:
// the batch lookups, the fingerprints, the knowledge), the bytes the
// changes it finds take on the wire, and the memory the prints take per
// key. The target is under 0.5 s of CPU for 1M entries.
func BenchmarkScan(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for a kernel map")
	}
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) { benchScan(b, n) })
	}
}

func benchScan(b *testing.B, entries int) {
	const keySize, valueSize = 16, 64
	km, err := ebpf.NewMap(&ebpf.MapSpec{Name: "scan_bench", Type: ebpf.Hash, KeySize: keySize, ValueSize: valueSize, MaxEntries: uint32(entries)})
	if err != nil {
		b.Fatal(err)
	}
	defer km.Close()
	info, _ := km.Info()
	id, _ := info.ID()
	ms, err := loader.OpenMaps([]string{fmt.Sprintf("id:%d", id)})
	if err != nil {
		b.Fatal(err)
	}
	lm := ms[0]
	defer lm.Close()

	// Counters in the first 16 bytes are refresh fields, as a conntrack
	// entry's would be; the scans here find changes elsewhere.
	opts := mapopt.Options{Scan: time.Second, RefreshPeriod: time.Second, Refresh: []mapopt.Field{{Name: "counters", Size: 16}}}
	m := MapFromLoader(lm)
	m.Options = opts
	tab, err := NewTable([]Map{m}, 1472)
	if err != nil {
		b.Fatal(err)
	}
	node := newTestNode(b, Config{Table: tab})
	keys, vals := make([]byte, 0, 4096*keySize), make([]byte, 0, 4096*valueSize)
	write := func(from, to, round int) {
		for i := from; i < to; i++ {
			keys = binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(keys, uint64(i)), 7)
			v := make([]byte, valueSize)
			binary.LittleEndian.PutUint64(v[16:], uint64(round))
			vals = append(vals, v...)
			if len(keys) == cap(keys) || i == to-1 {
				if err := lm.UpdateBatch(keys, vals); err != nil {
					b.Fatal(err)
				}
				keys, vals = keys[:0], vals[:0]
			}
		}
	}
	write(0, entries, 0)
	// Every entry known from a capture, as on a running node.
	h := node.know.Lock()
	now := time.Now()
	for i := range entries {
		key := binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, uint64(i)), 7)
		h.Set(h.Put(0, key), 0, key, knowledge.Version{Stamp: node.clock.At(now), Origin: ourNode}, false, false, now)
	}
	h.Unlock()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	node.scan.scan(0) // the first scan takes every entry as it is
	runtime.GC()
	runtime.ReadMemStats(&after)
	if got := node.prints.size(); got != entries {
		b.Fatalf("%d prints after the first scan, want %d", got, entries)
	}

	var w wire.ChangeWriter
	buf := make([]byte, 1472)
	var cpu time.Duration
	found, wireBytes := 0, 0
	round := 0
	for b.Loop() {
		b.StopTimer()
		round++
		changed := entries / 100
		first := (round * changed) % (entries - changed)
		write(first, first+changed, round)
		var r0, r1 unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_SELF, &r0)
		b.StartTimer()
		node.scan.scan(0)
		b.StopTimer()
		_ = unix.Getrusage(unix.RUSAGE_SELF, &r1)
		cpu += rusageCPU(&r1) - rusageCPU(&r0)
		w.Reset(buf, ourNode, 0)
		found += node.relay.drain(func(m int, op ops.Op, v knowledge.Version, key, value []byte) {
			if !w.Append(tab.maps[m].fp, op, uint64(v.Stamp), v.Origin, key, value) {
				wireBytes += len(w.Finish(wire.Header{Node: ourNode, Seq: 1}))
				w.Reset(buf, ourNode, 0)
				w.Append(tab.maps[m].fp, op, uint64(v.Stamp), v.Origin, key, value)
			}
		})
		if w.Count() > 0 {
			wireBytes += len(w.Finish(wire.Header{Node: ourNode, Seq: 1}))
		}
		b.StartTimer()
	}
	if found != b.N*(entries/100) {
		b.Fatalf("the scans found %d changes, want %d", found, b.N*(entries/100))
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/scan")
	b.ReportMetric(float64(wireBytes)/float64(b.N), "wire-B/scan")
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(entries), "prints-B/key")
}

func rusageCPU(r *unix.Rusage) time.Duration {
	return time.Duration(r.Utime.Nano() + r.Stime.Nano())
}
