// Package loader is everything in udpmapsync that touches the BPF syscall:
// it resolves map specs to maps, loads and attaches the capture programs,
// reads captured changes from the ring buffer and applies received changes
// with batch syscalls. It knows nothing of the network.
package loader

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where [OpenMaps] looks for maps when it is given no
// specs: every map pinned directly below it is replicated.
const DefaultPinDir = "/sys/fs/bpf/udpmapsync"

// Size limits of a replicated map: what one change of the capture's
// scratch buffer holds (bpf/capture.h, CAPTURE_MAX_KEY and
// CAPTURE_MAX_VALUE: a value region of 16 KiB less a byte). A change too
// large for one datagram travels in fragments (wire/FORMAT.md).
const (
	MaxKeySize   = 512
	MaxValueSize = 16383
)

// maxNameLen is the longest map name the kernel keeps (BPF_OBJ_NAME_LEN - 1).
const maxNameLen = 15

// Map is one replicated map on this node. Name and the schema fields are
// what nodes compare to decide that two maps are the same map.
type Map struct {
	Name       string
	Type       ebpf.MapType
	KeySize    uint32
	ValueSize  uint32
	MaxEntries uint32
	Flags      uint32     // map_flags at creation; informational, not compared
	ID         ebpf.MapID // local to this kernel; never sent
	// CPUs is, for the per-CPU types, how many CPUs the kernel may ever
	// have (possible, not online): each value holds one slot per CPU.
	// Zero for the other types.
	CPUs uint32
	// ValueLen is the length of one value as bpf(2) reads and writes it,
	// and as it is replicated: ValueSize, or for a per-CPU map CPUs slots
	// of ValueSize rounded up to 8 bytes, back to back.
	ValueLen uint32

	m *ebpf.Map
	// elemFlags is BPF_F_LOCK for a value with a spin lock (UseSpinLock),
	// passed with every lookup and update.
	elemFlags uint64

	// noBatch is set once the kernel refused a batch command for this map
	// but took the same element one at a time, so later calls skip the
	// batch attempt.
	noBatch atomic.Bool
}

// OpenMaps resolves map specs to the maps to replicate. A spec is a path
// of a map pinned on bpffs, "name:NAME" or "id:N"; with no specs every map
// pinned directly under [DefaultPinDir] is used, and none there is
// [ErrNoMaps]. Maps of other types than hash, LRU hash, array, their
// per-CPU forms and LPM trie, keys over [MaxKeySize], values (all the
// CPUs' slots of a per-CPU value) over [MaxValueSize], unnamed maps
// ([ErrUnsupportedMap]), a map given twice ([ErrDuplicateMap]) and two maps
// with one name ([ErrDuplicateName]) are refused, because nodes match maps by
// name and schema. An error about one map is a [*MapError]; a refusal for
// lack of privilege matches [ErrPermission]. The caller closes the maps.
func OpenMaps(specs []string) ([]*Map, error) {
	return openMaps(specs, DefaultPinDir)
}

// openMaps is [OpenMaps] with the default directory as a parameter, so tests
// can use their own bpffs.
func openMaps(specs []string, pinDir string) ([]*Map, error) {
	var ems []*ebpf.Map
	var from []*MapError // each map's spec or pin, Err unset
	closeAll := func() {
		for _, em := range ems {
			em.Close()
		}
	}
	if len(specs) == 0 {
		var paths []string
		var err error
		if ems, paths, err = pinnedMaps(pinDir); err != nil {
			return nil, err
		}
		for _, p := range paths {
			from = append(from, &MapError{Spec: p, Pinned: true})
		}
	}
	for _, spec := range specs {
		em, err := openSpec(spec)
		if err != nil {
			closeAll()
			return nil, &MapError{Spec: spec, Err: err}
		}
		ems = append(ems, em)
		from = append(from, &MapError{Spec: spec})
	}

	maps := make([]*Map, 0, len(ems))
	for i, em := range ems {
		m, err := newMap(em)
		if err != nil {
			closeAll()
			return nil, &MapError{Spec: from[i].Spec, Pinned: from[i].Pinned, Err: err}
		}
		for j, prev := range maps {
			if prev.ID == m.ID {
				err = fmt.Errorf("%w: %s (id %d) is also %s", ErrDuplicateMap, m.Name, m.ID, origin(from[j]))
			} else if prev.Name == m.Name {
				err = fmt.Errorf("%w: this map (id %d) and map %d, %s, are both named %s", ErrDuplicateName, m.ID, prev.ID, origin(from[j]), m.Name)
			}
			if err != nil {
				closeAll()
				return nil, &MapError{Spec: from[i].Spec, Pinned: from[i].Pinned, Err: err}
			}
		}
		maps = append(maps, m)
	}
	return maps, nil
}

// origin says where a map came from: "given as SPEC" or "pinned at PATH".
func origin(e *MapError) string {
	if e.Pinned {
		return "pinned at " + e.Spec
	}
	return "given as " + e.Spec
}

// pinnedMaps opens the maps pinned directly under dir. Subdirectories, and
// pinned programs and links, are left alone: they belong to other tools, and
// a bpffs mounted on dir has kernel files (maps.debug) at its root.
func pinnedMaps(dir string) ([]*ebpf.Map, []string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("list maps pinned in %s: %w: the directory does not exist", dir, ErrNoMaps)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list maps pinned in %s: %w", dir, permissionError(err))
	}
	var maps []*ebpf.Map
	var paths []string
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		em, _, err := loadPinned(p)
		if errors.Is(err, os.ErrNotExist) || (err == nil && em == nil) {
			continue
		}
		if err != nil {
			for _, em := range maps {
				em.Close()
			}
			return nil, nil, &MapError{Spec: p, Pinned: true, Err: permissionError(err)}
		}
		maps = append(maps, em)
		paths = append(paths, p)
	}
	if len(maps) == 0 {
		return nil, nil, fmt.Errorf("list maps pinned in %s: %w: none is pinned there", dir, ErrNoMaps)
	}
	return maps, paths, nil
}

// loadPinned opens the BPF object pinned at path; when it is not a map it
// returns a nil map and the object's kind (bpf-prog, bpf_link, ...).
func loadPinned(path string) (*ebpf.Map, string, error) {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return nil, "", err
	}
	attr := struct {
		pathname  unsafe.Pointer
		bpfFD     uint32
		fileFlags uint32
	}{pathname: unsafe.Pointer(p)}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, cmdObjGet, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return nil, "", fmt.Errorf("open pinned object: %w", errno)
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if kind := strings.TrimPrefix(link, "anon_inode:"); err != nil || kind != "bpf-map" {
		unix.Close(int(fd))
		if err != nil {
			return nil, "", fmt.Errorf("pinned object type: %w", err)
		}
		return nil, kind, nil
	}
	em, err := ebpf.NewMapFromFD(int(fd)) // owns fd from here
	return em, "", err
}

// openSpec opens the map one spec names.
func openSpec(spec string) (*ebpf.Map, error) {
	// The kernel hands out maps by id (BPF_MAP_GET_FD_BY_ID, and
	// BPF_MAP_GET_NEXT_ID to find a name) to CAP_SYS_ADMIN only.
	if name, ok := strings.CutPrefix(spec, "name:"); ok {
		em, err := mapByName(name)
		return em, permissionError(err, capSysAdmin)
	}
	if id, ok := strings.CutPrefix(spec, "id:"); ok {
		em, err := mapByID(id)
		return em, permissionError(err, capSysAdmin)
	}
	em, kind, err := loadPinned(spec)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: nothing is pinned at this path", ErrMapNotFound)
	}
	if err == nil && em == nil {
		return nil, fmt.Errorf("%w: the pinned object is a %s", ErrMapNotFound, kind)
	}
	return em, permissionError(err)
}

func mapByID(s string) (*ebpf.Map, error) {
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%w: id %q is not a decimal number", ErrBadSpec, s)
	}
	em, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: no map has id %d", ErrMapNotFound, id)
	}
	return em, err
}

// mapByName walks every map of the kernel: names are not unique, so a name
// only resolves when exactly one map carries it.
func mapByName(name string) (*ebpf.Map, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty map name", ErrBadSpec)
	}
	if len(name) > maxNameLen {
		return nil, fmt.Errorf("%w: name of %d characters; the kernel keeps at most %d", ErrBadSpec, len(name), maxNameLen)
	}
	var found []*ebpf.Map
	var ids []string
	closeFound := func() {
		for _, em := range found {
			em.Close()
		}
	}
	id, err := ebpf.MapGetNextID(0)
	for ; err == nil; id, err = ebpf.MapGetNextID(id) {
		em, err := ebpf.NewMapFromID(id)
		if errors.Is(err, os.ErrNotExist) {
			continue // freed since MapGetNextID saw it
		}
		if err != nil {
			closeFound()
			return nil, fmt.Errorf("open map id %d: %w", id, err)
		}
		info, err := em.Info()
		if err != nil || info.Name != name {
			em.Close()
			continue
		}
		found = append(found, em)
		ids = append(ids, strconv.FormatUint(uint64(id), 10))
	}
	if !errors.Is(err, os.ErrNotExist) {
		closeFound()
		return nil, fmt.Errorf("list maps: %w", err)
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w: no map is named %s", ErrMapNotFound, name)
	case 1:
		return found[0], nil
	}
	closeFound()
	return nil, fmt.Errorf("%w: %d maps are named %s (ids %s)", ErrAmbiguousName, len(found), name, strings.Join(ids, ", "))
}

// newMap describes em and checks that it can be replicated; on success the
// [Map] owns em.
func newMap(em *ebpf.Map) (*Map, error) {
	info, err := em.Info()
	if err != nil {
		return nil, fmt.Errorf("map info: %w", permissionError(err))
	}
	var cpus uint32
	if PerCPU(info.Type) {
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return nil, fmt.Errorf("map %s: possible CPUs: %w", info.Name, err)
		}
		cpus = uint32(n)
	}
	if err := checkReplicable(info, cpus); err != nil {
		return nil, err
	}
	id, _ := info.ID()
	return &Map{
		Name:       info.Name,
		Type:       info.Type,
		KeySize:    info.KeySize,
		ValueSize:  info.ValueSize,
		MaxEntries: info.MaxEntries,
		Flags:      info.Flags,
		ID:         id,
		CPUs:       cpus,
		ValueLen:   valueLen(info.ValueSize, cpus),
		m:          em,
	}, nil
}

// PerCPU reports whether maps of type t hold one value per possible CPU
// for each key.
func PerCPU(t ebpf.MapType) bool {
	return t == ebpf.PerCPUHash || t == ebpf.PerCPUArray || t == ebpf.LRUCPUHash
}

// ArrayType reports whether maps of type t are arrays, whose entries always
// exist and cannot be deleted.
func ArrayType(t ebpf.MapType) bool {
	return t == ebpf.Array || t == ebpf.PerCPUArray
}

// valueLen is [Map.ValueLen] for a value of size bytes and cpus slots
// (0: not a per-CPU map). The kernel gives each CPU's slot 8-byte
// alignment.
func valueLen(size, cpus uint32) uint32 {
	if cpus == 0 {
		return size
	}
	return cpus * ((size + 7) &^ 7)
}

// replicable are the map types udpmapsync replicates, each with its name
// as bpftool and the kernel's documentation give it.
var replicable = []struct {
	typ  ebpf.MapType
	name string
}{
	{ebpf.Hash, "hash"},
	{ebpf.LRUHash, "lru_hash"},
	{ebpf.Array, "array"},
	{ebpf.PerCPUHash, "percpu_hash"},
	{ebpf.LRUCPUHash, "lru_percpu_hash"},
	{ebpf.PerCPUArray, "percpu_array"},
	{ebpf.LPMTrie, "lpm_trie"},
}

// TypeName names a map type udpmapsync replicates as bpftool does
// ("lru_percpu_hash"); ok is false for any other type.
func TypeName(t ebpf.MapType) (name string, ok bool) {
	for _, r := range replicable {
		if r.typ == t {
			return r.name, true
		}
	}
	return "", false
}

// checkReplicable refuses the maps udpmapsync cannot replicate faithfully.
// cpus is the possible CPUs for a per-CPU map, else 0.
func checkReplicable(info *ebpf.MapInfo, cpus uint32) error {
	if _, ok := TypeName(info.Type); !ok {
		names := make([]string, len(replicable))
		for i, r := range replicable {
			names[i] = r.name
		}
		return fmt.Errorf("%w: type %s is not one of %s and %s",
			ErrUnsupportedMap, info.Type, strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
	}
	if info.KeySize > MaxKeySize {
		return fmt.Errorf("%w: key size %d B is over the %d B limit", ErrUnsupportedMap, info.KeySize, MaxKeySize)
	}
	if info.ValueSize > MaxValueSize {
		return fmt.Errorf("%w: value size %d B is over the %d B limit", ErrUnsupportedMap, info.ValueSize, MaxValueSize)
	}
	if n := valueLen(info.ValueSize, cpus); n > MaxValueSize {
		return fmt.Errorf("%w: a per-CPU value of %d B holds a slot of %d B for each of the %d possible CPUs, %d B in all, over the %d B limit: shrink the value",
			ErrUnsupportedMap, info.ValueSize, (info.ValueSize+7)&^7, cpus, n, MaxValueSize)
	}
	if info.Name == "" {
		return fmt.Errorf("%w: it has no name, and nodes match maps by name", ErrUnsupportedMap)
	}
	return nil
}

// Close releases the map's file descriptor; the map itself lives on as long
// as a pin or a program holds it.
func (m *Map) Close() error {
	return m.m.Close()
}

// String describes the map for logs: name, type, sizes (and the CPUs of a
// per-CPU map) and local id.
func (m *Map) String() string {
	cpus := ""
	if m.CPUs > 0 {
		cpus = fmt.Sprintf(" per CPU, %d CPUs", m.CPUs)
	}
	return fmt.Sprintf("%s (%s, key %d B, value %d B%s, max %d, id %d)", m.Name, m.Type, m.KeySize, m.ValueSize, cpus, m.MaxEntries, m.ID)
}

// lpmPrefixLen is the size of the prefix length that starts an LPM trie's
// key (struct bpf_lpm_trie_key_u8, in the machine's byte order); the
// prefix's bytes follow it.
const lpmPrefixLen = 4

// Canonical clears, in an LPM trie's keys (packed back to back), the bits
// after each key's prefix length, in place; it leaves other maps' keys
// alone. The trie holds one entry for all the keys that agree on their
// first prefix-length bits, and keeps the bytes of the last one written:
// replicated as they are, two spellings of one prefix would be two keys
// with versions of their own, and the older write could win on a peer.
func (m *Map) Canonical(keys []byte) {
	if m.Type == ebpf.LPMTrie {
		CanonicalPrefixes(keys, int(m.KeySize))
	}
}

// CanonicalPrefixes is [Map.Canonical] for the keys of an LPM trie whose
// keys are keySize bytes: for the receiving side, where a key may come
// from a peer that did not clear them.
func CanonicalPrefixes(keys []byte, keySize int) {
	if keySize <= lpmPrefixLen {
		return
	}
	ks := keySize
	bits := uint32(ks-lpmPrefixLen) * 8
	for len(keys) >= ks {
		plen := binary.NativeEndian.Uint32(keys)
		if plen < bits {
			data := keys[lpmPrefixLen:ks]
			i := plen / 8
			data[i] &= byte(uint16(0xff00) >> (plen % 8))
			clear(data[i+1:])
		}
		keys = keys[ks:]
	}
}
