package loader

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Dump reads every entry of the map, a batch at a time, into keys and
// values, and calls fn with each batch read: fn's keys and values are
// prefixes of the buffers, packed back to back, overwritten by the next
// batch. keys must hold a whole number of keys, at least one, and values
// as many values. Dump stops at fn's first error and returns it.
//
// It uses BPF_MAP_LOOKUP_BATCH, and BPF_MAP_GET_NEXT_KEY with a lookup per
// entry where the kernel lacks it. The map may change while it is read: an
// entry written meanwhile may or may not be seen, one present throughout
// is seen. The buffers must be large enough for the map's biggest hash
// bucket (a few entries are; hundreds are safe). An LPM trie's keys come
// out in [Map.Canonical] form.
//
// An LPM trie is read key after key, in the kernel's batch command as in
// the fallback: an entry deleted between finding its key and reading its
// value is read with the value of the longest shorter prefix that holds
// it (or skipped if none does), and the key after a deleted one is the
// trie's first again, so a trie changing while it is read may be read
// partly twice.
func (m *Map) Dump(keys, values []byte, fn func(keys, values []byte) error) error {
	n, err := m.entries(keys)
	if err == nil && (n == 0 || len(values) < n*int(m.ValueLen)) {
		err = fmt.Errorf("buffers for %d keys and %d B of values; want at least one entry and %d B of values per key", n, len(values), m.ValueLen)
	}
	if err != nil {
		return fmt.Errorf("dump map %s: %w", m.Name, err)
	}
	if m.Type == ebpf.LPMTrie {
		read := fn
		fn = func(keys, values []byte) error {
			m.Canonical(keys)
			return read(keys, values)
		}
	}
	if !m.noBatch.Load() {
		err := m.dumpBatch(keys, values, n, fn)
		if !errors.Is(err, errBatchUnsupported) {
			return err
		}
	}
	return m.dumpElems(keys, values, n, fn)
}

var errBatchUnsupported = errors.New("batch lookup unsupported")

// dumpBatch reads the map with BPF_MAP_LOOKUP_BATCH, n entries at a time.
// The cursor is opaque: a bucket index for hash maps, a key for arrays,
// so it is as long as the longer of the two.
func (m *Map) dumpBatch(keys, values []byte, n int, fn func(keys, values []byte) error) error {
	ks, vs := int(m.KeySize), int(m.ValueLen)
	cursor := make([]byte, 2*max(ks, 8))
	in, out := cursor[:len(cursor)/2], cursor[len(cursor)/2:]
	first, retries := true, 0
	for {
		attr := batchAttr{
			outBatch:  unsafe.Pointer(&out[0]),
			keys:      unsafe.Pointer(&keys[0]),
			values:    unsafe.Pointer(&values[0]),
			count:     uint32(n),
			mapFD:     uint32(m.m.FD()),
			elemFlags: m.elemFlags,
		}
		if !first {
			attr.inBatch = unsafe.Pointer(&in[0])
		}
		_, _, errno := unix.Syscall(unix.SYS_BPF, cmdMapLookupBatch, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		switch {
		case errno == 0, errno == unix.ENOENT: // ENOENT: the last batch, maybe empty
		case transient(errno) && retries < maxRetries:
			retries++
			continue
		case first && unsupported(errno):
			return errBatchUnsupported
		case errno == unix.ENOSPC:
			return fmt.Errorf("dump map %s: a hash bucket holds more than the %d entries read at once: %w", m.Name, n, errno)
		default:
			return fmt.Errorf("dump map %s: %w", m.Name, errno)
		}
		retries = 0
		if c := int(attr.count); c > 0 {
			if err := fn(keys[:c*ks], values[:c*vs]); err != nil {
				return err
			}
		}
		if errno == unix.ENOENT {
			return nil
		}
		first = false
		copy(in, out)
	}
}

// dumpElems reads the map one key after the other, for kernels without
// batch lookups (before 5.6).
func (m *Map) dumpElems(keys, values []byte, n int, fn func(keys, values []byte) error) error {
	ks, vs := int(m.KeySize), int(m.ValueLen)
	var prev any // nil: start at the first key
	c := 0
	for {
		k, v := keys[c*ks:(c+1)*ks], values[c*vs:(c+1)*vs]
		if err := m.m.NextKey(prev, k); errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		} else if err != nil {
			return fmt.Errorf("dump map %s: %w", m.Name, err)
		}
		prev = k
		// Lookup, not cilium/ebpf's: it takes a per-CPU value as bytes.
		if found, err := m.Lookup(k, v); err != nil {
			return fmt.Errorf("dump map %s: %w", m.Name, err)
		} else if !found {
			continue // deleted since: the next key still follows it
		}
		if c++; c == n {
			if err := fn(keys, values[:n*vs]); err != nil {
				return err
			}
			// The last key read must survive the batch being reused.
			prev = append([]byte(nil), k...)
			c = 0
		}
	}
	if c > 0 {
		return fn(keys[:c*ks], values[:c*vs])
	}
	return nil
}
