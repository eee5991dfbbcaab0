package replication

import (
	"encoding/binary"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/loader"
)

// BenchmarkDigestHeal is one digest round between two nodes whose kernel
// hash maps of 1M entries (16 B keys, 64 B values, the perf report's
// shape) agree but for one value changed in place on one of them: from
// the start of both nodes' reads of their maps to both holding the same
// value again. It reports the time that takes (the op), how long one
// node's read of its map into digests takes, and the bytes of digest
// datagrams of the round (the repair travels as a snapshot datagram).
// The two nodes share this process's two cores, and the network is the
// in-memory one.
func BenchmarkDigestHeal(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for kernel maps")
	}
	const entries, keySize, valueSize = 1 << 20, 16, 64
	keys, vals := make([]byte, entries*keySize), make([]byte, entries*valueSize)
	for i := range entries {
		binary.LittleEndian.PutUint64(keys[i*keySize:], uint64(i)*0x9e3779b97f4a7c15)
		binary.LittleEndian.PutUint64(vals[i*valueSize:], uint64(i))
	}
	var net memNet
	var nodes [2]*digestNode
	for i := range nodes {
		m := openKernelMap(b, &ebpf.MapSpec{Name: "digest_bench", Type: ebpf.Hash, KeySize: keySize, ValueSize: valueSize, MaxEntries: entries})
		if err := m.UpdateBatch(keys, vals); err != nil {
			b.Fatal(err)
		}
		// No round of its own: the benchmark starts them.
		nodes[i] = startDigestNodeOn(b, &net, uint32(i+1), time.Hour, m)
		nodes[i].n.digests.settle = 0
	}
	a, c := nodes[0], nodes[1]
	<-a.n.Ready()
	<-c.n.Ready()
	val := make([]byte, valueSize)
	var bytes, reads uint64
	var readTime time.Duration
	for i := 0; b.Loop(); i++ {
		key := keys[(i*7919%entries)*keySize:][:keySize]
		binary.LittleEndian.PutUint64(val, uint64(i)+1<<40)
		if err := c.m.UpdateBatch(key, val); err != nil { // in place, unseen
			b.Fatal(err)
		}
		before := a.stats.DigestBytes.Load()
		for _, n := range []*digestNode{c, a} { // the responder's read first: a's starts the round
			set, err := n.n.digester.read()
			if err != nil {
				b.Fatal(err)
			}
			readTime += set.took
			reads++
		}
		got := make([]byte, valueSize)
		for deadline := time.Now().Add(30 * time.Second); ; {
			x, _ := a.m.Lookup(key, got)
			if x && string(got) == string(mustLookup(b, c.m, key)) {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("not healed after 30s; logs:\n%s\n%s", a.logs, c.logs)
			}
			time.Sleep(time.Millisecond)
		}
		bytes += a.stats.DigestBytes.Load() - before
	}
	b.ReportMetric(float64(bytes)/float64(b.N), "digest-bytes/round")
	b.ReportMetric(readTime.Seconds()/float64(reads), "read-s/map")
}

func mustLookup(b *testing.B, m *loader.Map, key []byte) []byte {
	v := make([]byte, m.ValueSize)
	if found, err := m.Lookup(key, v); err != nil || !found {
		b.Fatalf("lookup: %v, found %v", err, found)
	}
	return v
}
