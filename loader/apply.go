package loader

import (
	"bytes"
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ErrNotDeletable is wrapped by [Map.DeleteBatch] for array maps: their
// entries always exist, so a delete from a peer cannot be applied.
var ErrNotDeletable = errors.New("array map entries cannot be deleted")

// bpf(2) commands, from include/uapi/linux/bpf.h.
const (
	cmdMapLookupElem  = 1
	cmdMapUpdateElem  = 2
	cmdMapDeleteElem  = 3
	cmdMapGetNextKey  = 4
	cmdObjGet         = 7
	cmdMapLookupBatch = 24
	cmdMapUpdateBatch = 26
	cmdMapDeleteBatch = 27
)

// errENOTSUPP is the kernel-internal "not supported" that leaks out of
// bpf(2) when a map type lacks batch operations; x/sys/unix has no name for it.
const errENOTSUPP = unix.Errno(524)

// The attrs below hold user pointers as unsafe.Pointer so the garbage
// collector sees (and a growing stack updates) them; the kernel's fields are
// u64, which unsafe.Pointer fills only on 64-bit platforms. This line stops
// the build anywhere else.
var _ [unsafe.Sizeof(unsafe.Pointer(nil)) - 8]struct{}

// batchAttr is the batch member of union bpf_attr.
type batchAttr struct {
	inBatch  unsafe.Pointer // lookups only: where to resume
	outBatch unsafe.Pointer // lookups only: where the next one resumes

	keys      unsafe.Pointer
	values    unsafe.Pointer
	count     uint32
	mapFD     uint32
	elemFlags uint64
	flags     uint64
}

// elemAttr is the BPF_MAP_*_ELEM member of union bpf_attr.
type elemAttr struct {
	mapFD uint32
	_     uint32
	key   unsafe.Pointer
	value unsafe.Pointer
	flags uint64 // BPF_ANY, or BPF_F_LOCK
}

// UpdateBatch writes len(keys)/KeySize entries, keys and values packed back
// to back, in order, so a later duplicate key wins. It uses one
// BPF_MAP_UPDATE_BATCH where the kernel has it and BPF_MAP_UPDATE_ELEM per
// entry where it does not. An entry the kernel refuses (a full map, an array
// index out of range) is skipped and the rest are still written; the error
// then says how many failed. Only an error allocates.
func (m *Map) UpdateBatch(keys, values []byte) error {
	n, err := m.entries(keys)
	if err == nil && len(values) != n*int(m.ValueLen) {
		err = fmt.Errorf("%d B of values for %d keys of a %d B value map", len(values), n, m.ValueLen)
	}
	if err != nil {
		return fmt.Errorf("update map %s: %w", m.Name, err)
	}
	_, err = m.apply(cmdMapUpdateBatch, keys, values, n)
	return err
}

// Lookup reads the value of key into value ([Map.ValueLen] bytes) and
// reports whether the map holds the key. It does not allocate, but for an
// LPM trie: the kernel's lookup there finds the longest prefix that holds
// key's, which may be a shorter one, so Lookup then also asks whether the
// trie holds key's own prefix (see trieHolds).
func (m *Map) Lookup(key, value []byte) (bool, error) {
	if len(key) != int(m.KeySize) || len(value) != int(m.ValueLen) {
		return false, fmt.Errorf("look up in map %s: %d B key, %d B value for a %d B key, %d B value map",
			m.Name, len(key), len(value), m.KeySize, m.ValueLen)
	}
	attr := elemAttr{mapFD: uint32(m.m.FD()), key: unsafe.Pointer(&key[0]), value: unsafe.Pointer(&value[0]), flags: m.elemFlags}
	_, _, errno := unix.Syscall(unix.SYS_BPF, cmdMapLookupElem, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	switch {
	case errno == 0 && m.Type == ebpf.LPMTrie:
		return m.trieHolds(key)
	case errno == 0:
		return true, nil
	case errno == unix.ENOENT:
		return false, nil
	}
	return false, fmt.Errorf("look up in map %s: %w", m.Name, errno)
}

// trieHolds reports whether an LPM trie that holds some prefix of key's
// holds key's own. The kernel's next key after a key the trie holds is the
// one after it in the trie's order (none after its last), and after any
// other key the trie's first: so the trie holds key if key is its first,
// or if the key after key is not its first. A trie changing meanwhile can make the answer
// wrong, as any answer about a map others write can be by the time it is
// read.
func (m *Map) trieHolds(key []byte) (bool, error) {
	first, next := make([]byte, m.KeySize), make([]byte, m.KeySize)
	if ok, err := m.nextKey(nil, first); err != nil || !ok {
		return false, err
	}
	want := bytes.Clone(key)
	m.Canonical(want)
	m.Canonical(first)
	if bytes.Equal(want, first) {
		return true, nil
	}
	ok, err := m.nextKey(key, next)
	if err != nil {
		return false, err
	}
	if !ok {
		return true, nil // none after key: key is the trie's last
	}
	m.Canonical(next)
	return !bytes.Equal(next, first), nil
}

// nextKey reads into next the key after key (nil: the first) with
// BPF_MAP_GET_NEXT_KEY, and reports whether there is one.
func (m *Map) nextKey(key, next []byte) (bool, error) {
	attr := elemAttr{mapFD: uint32(m.m.FD()), value: unsafe.Pointer(&next[0])}
	if key != nil {
		attr.key = unsafe.Pointer(&key[0])
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, cmdMapGetNextKey, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	switch errno {
	case 0:
		return true, nil
	case unix.ENOENT:
		return false, nil
	}
	return false, fmt.Errorf("next key in map %s: %w", m.Name, errno)
}

// DeleteBatch deletes the len(keys)/KeySize packed keys. Keys the map does
// not hold are counted in missing and skipped; the others are still deleted.
// It uses one BPF_MAP_DELETE_BATCH where the kernel has it and
// BPF_MAP_DELETE_ELEM per key where it does not. Array maps (per-CPU ones
// too) return an error wrapping [ErrNotDeletable]. Only an error allocates.
func (m *Map) DeleteBatch(keys []byte) (missing int, err error) {
	if ArrayType(m.Type) {
		return 0, fmt.Errorf("delete from map %s: %w", m.Name, ErrNotDeletable)
	}
	n, err := m.entries(keys)
	if err != nil {
		return 0, fmt.Errorf("delete from map %s: %w", m.Name, err)
	}
	return m.apply(cmdMapDeleteBatch, keys, nil, n)
}

func (m *Map) entries(keys []byte) (int, error) {
	if len(keys)%int(m.KeySize) != 0 {
		return 0, fmt.Errorf("%d B of keys is not a multiple of the %d B key size", len(keys), m.KeySize)
	}
	return len(keys) / int(m.KeySize), nil
}

// apply runs a batch command over n entries. When the kernel stops at an
// entry, apply steps over it and resumes with the next, so one bad entry
// costs one more syscall rather than the rest of the batch. For deletes,
// ENOENT is a missing key, not a failure.
func (m *Map) apply(cmd uintptr, keys, values []byte, n int) (missing int, err error) {
	ks, vs := int(m.KeySize), int(m.ValueLen)
	if values == nil {
		vs = 0
	}
	fd := uint32(m.m.FD())
	flags := m.elemFlags
	if cmd == cmdMapDeleteBatch {
		flags = 0 // deletes take no lock
	}
	// batchWorks records that the kernel took a batch command for this map,
	// after which a batch error is about an entry, not about the command.
	batchWorks := false
	failed, firstAt, retries := 0, 0, 0
	var first unix.Errno
	for i := 0; i < n; {
		k, v := keys[i*ks:], values[i*vs:]
		var errno unix.Errno
		if m.noBatch.Load() {
			errno = elem(cmd, fd, flags, k, v)
		} else {
			var done int
			done, errno = batch(cmd, fd, flags, k, v, n-i)
			if errno == 0 {
				return missing, m.applyErr(cmd, n, failed, firstAt, first)
			}
			i += done
			if done > 0 {
				batchWorks = true
			} else if !batchWorks && unsupported(errno) {
				errno = elem(cmd, fd, flags, k, v)
				if errno == 0 {
					m.noBatch.Store(true)
				}
			}
		}
		switch {
		case errno == 0:
		case transient(errno) && retries < maxRetries:
			retries++
			continue // the same entry again
		case errno == unix.ENOENT && cmd == cmdMapDeleteBatch:
			missing++
		default:
			if failed == 0 {
				firstAt, first = i, errno
			}
			failed++
		}
		retries = 0
		i++
	}
	return missing, m.applyErr(cmd, n, failed, firstAt, first)
}

// maxRetries bounds how often one entry is retried after a transient error.
const maxRetries = 8

// transient reports whether errno is a bucket lock that gave up rather than
// a refusal of the entry: since 6.15 hash maps take resilient spin locks that
// return ETIMEDOUT or EDEADLK under contention instead of waiting, and the
// same write succeeds when tried again.
func transient(errno unix.Errno) bool {
	return errno == unix.ETIMEDOUT || errno == unix.EDEADLK || errno == unix.EBUSY
}

func (m *Map) applyErr(cmd uintptr, n, failed, firstAt int, first unix.Errno) error {
	if failed == 0 {
		return nil
	}
	op := "update map"
	if cmd == cmdMapDeleteBatch {
		op = "delete from map"
	}
	return fmt.Errorf("%s %s: %d of %d entries failed, the first (entry %d): %w", op, m.Name, failed, n, firstAt, first)
}

// unsupported reports whether errno means the kernel lacks the batch
// command for this map rather than refusing an entry.
func unsupported(errno unix.Errno) bool {
	return errno == unix.EINVAL || errno == errENOTSUPP || errno == unix.EOPNOTSUPP
}

// batch issues one batch command for the first n entries of keys and values
// (values empty for deletes), with elem_flags flags, and returns how many
// the kernel processed.
func batch(cmd uintptr, fd uint32, flags uint64, keys, values []byte, n int) (int, unix.Errno) {
	attr := batchAttr{
		keys:      unsafe.Pointer(&keys[0]),
		count:     uint32(n),
		mapFD:     fd,
		elemFlags: flags,
	}
	if len(values) > 0 {
		attr.values = unsafe.Pointer(&values[0])
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, cmd, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	// The kernel writes count back only once it starts on the entries; an
	// early refusal leaves our own n in place, which means none were done.
	if errno != 0 && int(attr.count) >= n {
		return 0, errno
	}
	return int(attr.count), errno
}

// elem applies the first entry of keys and values with the single-element
// command matching the batch command cmd, with flags.
func elem(cmd uintptr, fd uint32, flags uint64, keys, values []byte) unix.Errno {
	attr := elemAttr{mapFD: fd, key: unsafe.Pointer(&keys[0]), flags: flags}
	elemCmd := uintptr(cmdMapDeleteElem)
	if cmd == cmdMapUpdateBatch {
		elemCmd = cmdMapUpdateElem
		attr.value = unsafe.Pointer(&values[0])
	}
	_, _, errno := unix.Syscall(unix.SYS_BPF, elemCmd, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	return errno
}
