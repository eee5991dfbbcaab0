package replication

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
)

// memKernel is a kernel map in memory, for the measure of the daemon's
// own memory: only what a CounterTarget uses.
type memKernel map[string][]byte

func (m memKernel) Dump(keys, values []byte, fn func(keys, values []byte) error) error { return nil }
func (m memKernel) Lookup(key, value []byte) (bool, error)                            { return false, nil }
func (m memKernel) DeleteBatch(keys []byte) (int, error)                              { return 0, nil }
func (m memKernel) Add(keys, deltas []byte) (int, error)                              { return 0, nil }

// BenchmarkCounterBytes measures what a sum map's contributions cost the
// daemon per key (one 8-byte counter), with 3 and 16 origins counting
// every key, beside the knowledge's 25 to 32 bytes per contribution
// entry.
func BenchmarkCounterBytes(b *testing.B) {
	const keys = 1 << 16
	for _, origins := range []int{3, 16} {
		b.Run(map[int]string{3: "3-origins", 16: "16-origins"}[origins], func(b *testing.B) {
			for range b.N {
				var before, after runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&before)
				k := memKernel{}
				ct := NewCounterTarget(k, k, 4, 8, 1, 1, origins, time.Now)
				ks, vs := ct.entrySize()
				key, val := make([]byte, ks), make([]byte, vs)
				for o := range origins {
					for i := range keys {
						binary.NativeEndian.PutUint32(key, uint32(i))
						binary.BigEndian.PutUint32(key[4:], uint32(o+2))
						binary.BigEndian.PutUint64(val[12:], uint64(hlc.Make(1, 1)))
						binary.BigEndian.PutUint64(val[20:], 1)
						if err := ct.UpdateBatch(key, val); err != nil {
							b.Fatal(err)
						}
					}
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/keys, "B/key")
				runtime.KeepAlive(ct)
			}
		})
	}
}
