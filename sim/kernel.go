package sim

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
)

// errMapFull is a hash map's answer to a new key once it holds its
// maximum entries (E2BIG in the kernel).
var errMapFull = errors.New("map full")

// memMap is a BPF hash map in memory, as the kernel's behaves to its
// users: batch writes apply in order and stop at the first failure, a
// new key in a full map fails, and deletes of absent keys are counted.
// An LRU hash map instead makes room for a new key by evicting the
// entry written least recently (by the datapath or the daemon; the
// kernel's lookups from user space do not count as use), and no capture
// sees the eviction. An array holds every key from 0 to its maximum
// entries less one (a native-endian index) from its creation, zeros at
// first; a key outside fails, and so does every delete, as
// [loader.Map.DeleteBatch] refuses them. Like the kernel's maps it
// outlives the daemon: a restarted node finds what it held. It
// implements [replication.Target].
type memMap struct {
	keySize, valueSize int
	max                int
	typ                ebpf.MapType // Hash, LRUHash or Array
	entries            map[string][]byte
	// used is, for an LRU map, when each key was last written, in writes
	// made to the map.
	used   map[string]uint64
	writes uint64
	// written holds an array's keys written since its creation by the
	// datapath, or by an apply of a value other than zeros: the others
	// hold zeros, from the array's creation or a peer's zeroing.
	written map[string]bool
	// applied is told of every write the daemon makes: the trace;
	// evicted, of every key the map evicts.
	applied func(op ops.Op, key, value []byte)
	evicted func(key, value []byte)
}

func newMemMap(keySize, valueSize, max int, typ ebpf.MapType) *memMap {
	m := &memMap{keySize: keySize, valueSize: valueSize, max: max, typ: typ, entries: make(map[string][]byte),
		used: make(map[string]uint64), written: make(map[string]bool)}
	if typ == ebpf.Array {
		for i := range max {
			m.entries[string(arrayKey(i))] = make([]byte, valueSize)
		}
	}
	return m
}

// arrayKey is an array's key of index i.
func arrayKey(i int) []byte { return binary.NativeEndian.AppendUint32(nil, uint32(i)) }

func (m *memMap) lru() bool   { return m.typ == ebpf.LRUHash }
func (m *memMap) array() bool { return m.typ == ebpf.Array }

// write is a write of the node's datapath: it reports whether it took.
func (m *memMap) write(op ops.Op, key, value []byte) bool {
	if m.array() {
		_, ok := m.entries[string(key)]
		if ok && op == ops.Update {
			m.entries[string(key)] = bytes.Clone(value)
		}
		return ok && op == ops.Update
	}
	if op == ops.Delete {
		_, ok := m.entries[string(key)]
		delete(m.entries, string(key))
		delete(m.used, string(key))
		return ok
	}
	if _, ok := m.entries[string(key)]; !ok && len(m.entries) >= m.max {
		if !m.lru() {
			return false
		}
		m.evict()
	}
	m.entries[string(key)] = bytes.Clone(value)
	if m.lru() {
		m.writes++
		m.used[string(key)] = m.writes
	}
	return true
}

// evict removes the entry of an LRU map written least recently.
func (m *memMap) evict() {
	var oldest string
	first := true
	for k, at := range m.used {
		if first || at < m.used[oldest] {
			oldest, first = k, false
		}
	}
	if m.evicted != nil {
		m.evicted([]byte(oldest), m.entries[oldest])
	}
	delete(m.entries, oldest)
	delete(m.used, oldest)
}

// UpdateBatch writes the packed pairs in order, stopping at the first
// that fails.
func (m *memMap) UpdateBatch(keys, values []byte) error {
	for i := 0; i*m.keySize < len(keys); i++ {
		k, v := keys[i*m.keySize:(i+1)*m.keySize], values[i*m.valueSize:(i+1)*m.valueSize]
		if !m.write(ops.Update, k, v) {
			return errMapFull
		}
		if m.array() && !isZero(v) {
			m.written[string(k)] = true
		}
		if m.applied != nil {
			m.applied(ops.Update, k, v)
		}
	}
	return nil
}

// DeleteBatch deletes the packed keys and counts the absent ones; an
// array's are refused, none deleted.
func (m *memMap) DeleteBatch(keys []byte) (int, error) {
	if m.array() {
		return 0, fmt.Errorf("delete from map %s: %w", mapName, loader.ErrNotDeletable)
	}
	missing := 0
	for i := 0; i*m.keySize < len(keys); i++ {
		k := keys[i*m.keySize : (i+1)*m.keySize]
		if !m.write(ops.Delete, k, nil) {
			missing++
		}
		if m.applied != nil {
			m.applied(ops.Delete, k, nil)
		}
	}
	return missing, nil
}

// Lookup reads key's value.
func (m *memMap) Lookup(key, value []byte) (bool, error) {
	v, ok := m.entries[string(key)]
	copy(value, v)
	return ok, nil
}

// Dump calls fn with every entry, a batch at a time, in key order (the
// kernel's order is its buckets'; any fixed one will do).
func (m *memMap) Dump(keys, values []byte, fn func(keys, values []byte) error) error {
	batch := len(keys) / m.keySize
	ks := m.sortedKeys()
	for len(ks) > 0 {
		n := min(batch, len(ks))
		for i, k := range ks[:n] {
			copy(keys[i*m.keySize:], k)
			copy(values[i*m.valueSize:], m.entries[k])
		}
		if err := fn(keys[:n*m.keySize], values[:n*m.valueSize]); err != nil {
			return err
		}
		ks = ks[n:]
	}
	return nil
}

func (m *memMap) sortedKeys() []string {
	ks := make([]string, 0, len(m.entries))
	for k := range m.entries {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// ring is a capture ring buffer in memory: one record per change of the
// node's datapath, sized to key and value as the kernel's are, lost and
// counted when the ring is full. It lives as long as one daemon: writes
// made while no daemon runs are not captured. It implements
// [replication.Source]; it never blocks: empty, it returns
// [os.ErrDeadlineExceeded] whatever the deadline.
type ring struct {
	size, used int
	queue      []loader.Change
	lost       uint64
	cur        loader.Change
}

// recordOverhead is a ring record's size besides its key and value.
const recordOverhead = 16

// capture queues a change of the datapath; it reports false when the
// ring is full and the change is lost.
func (r *ring) capture(id ebpf.MapID, op ops.Op, key, value []byte) bool {
	n := recordOverhead + len(key) + len(value)
	if r.used+n > r.size {
		r.lost++
		return false
	}
	r.used += n
	r.queue = append(r.queue, loader.Change{MapID: id, Op: op, Key: bytes.Clone(key), Value: bytes.Clone(value)})
	return true
}

func (r *ring) Read(ch *loader.Change) error {
	if len(r.queue) == 0 {
		return os.ErrDeadlineExceeded
	}
	*ch = r.queue[0]
	r.queue = r.queue[1:]
	r.used -= recordOverhead + len(ch.Key) + len(ch.Value)
	return nil
}

func (r *ring) SetDeadline(time.Time) {}

func (r *ring) Buffered() int { return r.used }

func (r *ring) Overflows() (uint64, error) { return r.lost, nil }
