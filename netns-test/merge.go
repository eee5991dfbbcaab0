package netnstest

// Helpers of the merge tests (merge_test.go): writes at the kernel's
// batch speed, digests that compare maps of a million entries in a
// fraction of the time a [Cluster.Read] takes, and changes made to order
// (keys a map does not hold yet, new values for keys it holds) whose
// effect a test records itself with [Apply].

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// fastBatch is the most changes [Cluster.WriteFast] passes to one batch
// syscall: the capture queues a batch's changes in samples of up to 24
// KiB, a few hundred entries each, so larger batches gain nothing.
const fastBatch = 4096

// WriteFast applies changes to the maps of node i in order, as fast as the
// kernel takes them: every run of consecutive changes to one map with one
// op is one BPF_MAP_UPDATE_BATCH or BPF_MAP_DELETE_BATCH from this
// process (no bpftool, which opens the pin again for every line and
// writes about 65,000 entries a second). The capture sees batch commands
// as it sees single ones. A delete of a key the map lacks is skipped.
func (c *Cluster) WriteFast(i int, changes []Change) error {
	if err := writeBatches(c.Maps, c.open[i], changes); err != nil {
		return fmt.Errorf("write fast to %s: %w", c.Topology.Nodes[i].Name, err)
	}
	return nil
}

// writeBatches is [Cluster.WriteFast] to the maps open, of specs.
func writeBatches(specs []MapSpec, open []*ebpf.Map, changes []Change) error {
	for len(changes) > 0 {
		n := 1
		for n < len(changes) && n < fastBatch && changes[n].Map == changes[0].Map && changes[n].Delete == changes[0].Delete {
			n++
		}
		j := slices.IndexFunc(specs, func(m MapSpec) bool { return m.Name == changes[0].Map })
		if j < 0 {
			return fmt.Errorf("no map %q", changes[0].Map)
		}
		if err := writeRun(open[j], specs[j], changes[:n]); err != nil {
			return fmt.Errorf("map %s: %w", specs[j].Name, err)
		}
		changes = changes[n:]
	}
	return nil
}

// RawWriteRate writes changes (to the map spec describes) as
// [Cluster.WriteFast] does, into a new map of spec's shape that no capture
// watches, and returns the entries written per second: the kernel's own
// speed, which the daemons' speeds are read against.
func RawWriteRate(spec MapSpec, changes []Change) (float64, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: spec.Name, Type: spec.Type, KeySize: spec.KeySize, ValueSize: spec.ValueSize, MaxEntries: spec.MaxEntries})
	if err != nil {
		return 0, fmt.Errorf("raw write rate: %w", err)
	}
	defer m.Close()
	start := time.Now()
	if err := writeBatches([]MapSpec{spec}, []*ebpf.Map{m}, changes); err != nil {
		return 0, fmt.Errorf("raw write rate: %w", err)
	}
	return rate(len(changes), time.Since(start)), nil
}

// writeRun writes changes, all updates or all deletes of map m (of spec),
// with as few batch syscalls as the kernel allows.
func writeRun(m *ebpf.Map, spec MapSpec, run []Change) error {
	ks, vs := int(spec.KeySize), int(spec.ValueSize)
	keys, kb := byteArrays(len(run), ks)
	values, vb := byteArrays(len(run), vs)
	for k, ch := range run {
		if len(ch.Key) != ks || (!ch.Delete && len(ch.Value) != vs) {
			return fmt.Errorf("change of %d-byte key and %d-byte value to a map of %d and %d", len(ch.Key), len(ch.Value), ks, vs)
		}
		copy(kb[k*ks:], ch.Key)
		copy(vb[k*vs:], ch.Value)
	}
	kv, vv := reflect.ValueOf(keys), reflect.ValueOf(values)
	for done, busy := 0, 0; done < len(run); {
		var n int
		var err error
		if run[0].Delete {
			n, err = m.BatchDelete(kv.Slice(done, len(run)).Interface(), nil)
		} else {
			n, err = m.BatchUpdate(kv.Slice(done, len(run)).Interface(), vv.Slice(done, len(run)).Interface(), nil)
		}
		done += n
		switch {
		case err == nil:
		case run[0].Delete && errors.Is(err, ebpf.ErrKeyNotExist):
			done++ // the key at done is not there: nothing to delete
		case (errors.Is(err, unix.ETIMEDOUT) || errors.Is(err, unix.EDEADLK)) && busy < readAttempts:
			// A bucket lock that gave up (6.15+, see [ReadContents]).
			busy++
		default:
			return err
		}
	}
	return nil
}

// bulkWriter writes a list of changes to one node in the background with
// [Cluster.WriteFast].
type bulkWriter struct {
	// written counts the changes written so far.
	written    atomic.Int64
	total      int
	start, end time.Time // valid once done is closed
	done       chan struct{}
	err        error // valid once done is closed
}

// bulkChunk is how many changes a [bulkWriter] writes between updates of
// its count.
const bulkChunk = fastBatch

// startBulk starts writing changes to node i once gate is closed (at once
// if gate is nil).
func startBulk(c *Cluster, i int, changes []Change, gate <-chan struct{}) *bulkWriter {
	b := &bulkWriter{total: len(changes), done: make(chan struct{})}
	go func() {
		defer close(b.done)
		if gate != nil {
			<-gate
		}
		b.start = time.Now()
		for len(changes) > 0 && b.err == nil {
			n := min(len(changes), bulkChunk)
			b.err = c.WriteFast(i, changes[:n])
			b.written.Add(int64(n))
			changes = changes[n:]
		}
		b.end = time.Now()
	}()
	return b
}

// wait waits until every change is written and returns how long that
// took.
func (b *bulkWriter) wait() (time.Duration, error) {
	<-b.done
	return b.end.Sub(b.start), b.err
}

// waitWritten waits until at least n changes are written.
func (b *bulkWriter) waitWritten(n int) error {
	for b.written.Load() < int64(n) {
		select {
		case <-b.done:
			if b.err != nil || b.written.Load() < int64(n) {
				return fmt.Errorf("bulk writer stopped after %d of %d changes: %v", b.written.Load(), b.total, b.err)
			}
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// rate is count per second over d.
func rate(count int, d time.Duration) float64 {
	return float64(count) / d.Seconds()
}

// MapDigest sums up what a map holds: how many entries, and the sum of a
// hash of each entry's key and value. Two maps with equal digests hold,
// but for a chance of about 2^-64, the same entries; reading a digest
// allocates nothing per entry, so a map of a million entries can be
// polled, which [Cluster.Read] cannot do quickly.
type MapDigest struct {
	Entries int
	Sum     uint64
}

func (d MapDigest) String() string {
	return fmt.Sprintf("%d entries (sum %016x)", d.Entries, d.Sum)
}

// Digest is the [MapDigest] of each map of a cluster, in the order of
// [Cluster.Maps].
type Digest []MapDigest

// digestSeed makes the hashes of one test run.
var digestSeed = maphash.MakeSeed()

func entryHash(h *maphash.Hash, key, value string) uint64 {
	h.Reset()
	h.WriteString(key)
	h.WriteString(value)
	return h.Sum64()
}

// DigestOf is the digest of contents (by map name) in maps.
func DigestOf(maps []MapSpec, contents map[string]Contents) Digest {
	var h maphash.Hash
	h.SetSeed(digestSeed)
	d := make(Digest, len(maps))
	for j, m := range maps {
		for k, v := range contents[m.Name] {
			d[j].Entries++
			d[j].Sum += entryHash(&h, k, v)
		}
	}
	return d
}

// Digest reads the digest of node i's maps. Array slots holding zeros
// are left out, as [Contents] leaves them out.
func (c *Cluster) Digest(i int) (Digest, error) {
	d := make(Digest, len(c.Maps))
	for j, spec := range c.Maps {
		var err error
		for range readAttempts {
			d[j], err = mapDigest(c.open[i][j])
			if !errors.Is(err, unix.ETIMEDOUT) && !errors.Is(err, unix.EDEADLK) {
				break
			}
		}
		if err != nil {
			return nil, fmt.Errorf("digest of %s: %w", c.PinPath(i, spec.Name), err)
		}
	}
	return d, nil
}

func mapDigest(m *ebpf.Map) (MapDigest, error) {
	var h maphash.Hash
	h.SetSeed(digestSeed)
	ks, vs := int(m.KeySize()), int(m.ValueSize())
	keys, kb := byteArrays(readBatch, ks)
	vals, vb := byteArrays(readBatch, vs)
	var d MapDigest
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for k := range n {
			v := vb[k*vs : (k+1)*vs]
			if m.Type() == ebpf.Array && isZero(v) {
				continue
			}
			d.Entries++
			// The conversions allocate nothing: the hash only reads them.
			d.Sum += entryHash(&h, unsafe.String(&kb[k*ks], ks), unsafe.String(&v[0], vs))
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return d, nil
		}
		if err != nil {
			return MapDigest{}, err
		}
	}
}

// WaitDigest reads the digests of the nodes' maps every poll until every
// node with a running daemon has want, or ctx ends, or a daemon exits. It
// says which nodes differ.
func (c *Cluster) WaitDigest(ctx context.Context, want Digest, poll time.Duration) error {
	for {
		var differ []string
		for i, d := range c.Daemons {
			if d == nil {
				continue
			}
			if exited, err := d.Exited(); exited {
				return fmt.Errorf("wait for digest: daemon on %s exited: %v", d.Node.Name, err)
			}
			have, err := c.Digest(i)
			if err != nil {
				return fmt.Errorf("wait for digest: %w", err)
			}
			if !slices.Equal(have, want) {
				differ = append(differ, fmt.Sprintf("%s %v, want %v", d.Node.Name, have, want))
			}
		}
		if len(differ) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for digest: %w; differing: %s", context.Cause(ctx), strings.Join(differ, "; "))
		case <-time.After(poll):
		}
	}
}

// Apply records the effect of changes, in order, in want (contents by map
// name).
func Apply(want map[string]Contents, changes []Change) {
	for _, ch := range changes {
		if want[ch.Map] == nil {
			want[ch.Map] = make(Contents)
		}
		if ch.Delete {
			delete(want[ch.Map], string(ch.Key))
		} else {
			want[ch.Map][string(ch.Key)] = string(ch.Value)
		}
	}
}

// newKeys makes n updates of distinct keys that want (contents by map
// name) does not hold, spread over the hash maps of maps in turn (arrays
// have no keys to add). Every key starts with tag: a tag above a
// [Workload]'s writer count is a key no writer of it touches. The
// changes are not recorded in want.
func newKeys(rng *rand.Rand, maps []MapSpec, want map[string]Contents, tag byte, n int) []Change {
	hashes := slices.DeleteFunc(slices.Clone(maps), func(m MapSpec) bool { return m.Type == ebpf.Array })
	seen := make(map[string]bool, n)
	var out []Change
	for len(out) < n {
		m := hashes[len(out)%len(hashes)]
		key := randomBytes(rng, int(m.KeySize))
		key[0] = tag
		if _, held := want[m.Name][string(key)]; held || seen[m.Name+string(key)] {
			continue
		}
		seen[m.Name+string(key)] = true
		out = append(out, Change{Map: m.Name, Key: key, Value: randomValue(rng, int(m.ValueSize))})
	}
	return out
}

// heldKeys picks n distinct keys that want (contents by map name) holds,
// at random but the same for the same rng and want, as updates with the
// values held.
func heldKeys(rng *rand.Rand, want map[string]Contents, n int) []Change {
	var all []Change
	for name, entries := range want {
		for k, v := range entries {
			all = append(all, Change{Map: name, Key: []byte(k), Value: []byte(v)})
		}
	}
	if n > len(all) {
		panic(fmt.Sprintf("held keys: %d wanted, %d held", n, len(all)))
	}
	// Map iteration order is random: sort first.
	slices.SortFunc(all, func(a, b Change) int {
		return cmp.Or(strings.Compare(a.Map, b.Map), bytes.Compare(a.Key, b.Key))
	})
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	return all[:n]
}

// revalue returns updates of the keys of changes, in the same order, with
// new random values.
func revalue(rng *rand.Rand, changes []Change) []Change {
	out := make([]Change, len(changes))
	for i, ch := range changes {
		out[i] = Change{Map: ch.Map, Key: ch.Key, Value: randomValue(rng, len(ch.Value))}
	}
	return out
}

// deletes returns deletes of the keys of changes, in the same order.
func deletes(changes []Change) []Change {
	out := make([]Change, len(changes))
	for i, ch := range changes {
		out[i] = Change{Map: ch.Map, Delete: true, Key: ch.Key}
	}
	return out
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// randomValue is random but never all zeros: an array slot holding zeros
// reads as unwritten.
func randomValue(rng *rand.Rand, n int) []byte {
	v := randomBytes(rng, n)
	v[0] |= 1
	return v
}

// ConnMaps is one hash of the shape of a connection-tracking entry in
// the measurements, 16-byte keys and 64-byte values, with room for
// twice entries (so a [Workload] may draw that many keys from it).
func ConnMaps(entries int) []MapSpec {
	return []MapSpec{{Name: "conns", Type: ebpf.Hash, KeySize: 16, ValueSize: 64, MaxEntries: uint32(2 * entries)}}
}

// nextChanges makes the next n changes of w, recording them in its
// [Workload.Want] as [Workload.Next] does.
func nextChanges(w *Workload, n int) []Change {
	out := make([]Change, n)
	for i := range out {
		out[i] = w.Next()
	}
	return out
}
