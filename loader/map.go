// Package loader is everything in udpmapsync that touches the BPF syscall:
// it resolves map specs to maps, loads and attaches the capture programs,
// reads captured changes from the ring buffer and applies received changes
// with batch syscalls. It knows nothing of the network.
package loader

import (
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
// [ErrNoMaps]. Maps of other types than hash, LRU hash and array, keys over
// [MaxKeySize], values over [MaxValueSize], unnamed maps
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
	if err := checkReplicable(info); err != nil {
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
		m:          em,
	}, nil
}

// checkReplicable refuses the maps udpmapsync cannot replicate faithfully.
func checkReplicable(info *ebpf.MapInfo) error {
	switch info.Type {
	case ebpf.Hash, ebpf.LRUHash, ebpf.Array:
	default:
		return fmt.Errorf("%w: type %s is not one of hash, lru_hash and array", ErrUnsupportedMap, info.Type)
	}
	if info.KeySize > MaxKeySize {
		return fmt.Errorf("%w: key size %d B is over the %d B limit", ErrUnsupportedMap, info.KeySize, MaxKeySize)
	}
	if info.ValueSize > MaxValueSize {
		return fmt.Errorf("%w: value size %d B is over the %d B limit", ErrUnsupportedMap, info.ValueSize, MaxValueSize)
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

// String describes the map for logs: name, type, sizes and local id.
func (m *Map) String() string {
	return fmt.Sprintf("%s (%s, key %d B, value %d B, max %d, id %d)", m.Name, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, m.ID)
}
