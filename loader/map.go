// Package loader is everything in udpmapsync that touches the BPF syscall:
// it resolves --map specs to maps, loads and attaches the capture programs,
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

// DefaultPinDir is where maps are looked for when no --map is given: every
// map pinned directly below it is replicated.
const DefaultPinDir = "/sys/fs/bpf/udpmapsync"

// Size limits of a replicated map. They bound the capture records and the
// datagrams a single change can need, so every change fits one datagram.
const (
	MaxKeySize   = 512
	MaxValueSize = 4096
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

	// noBatch is set once the kernel refused a batch command for this map
	// but took the same element one at a time, so later calls skip the
	// batch attempt.
	noBatch atomic.Bool
}

// OpenMaps resolves --map specs to the maps to replicate. A spec is a path
// of a map pinned on bpffs, "name:NAME" or "id:N"; with no specs every map
// pinned directly under [DefaultPinDir] is used. Maps of other types than
// hash, LRU hash and array, keys over [MaxKeySize], values over
// [MaxValueSize], unnamed maps, a map given twice and two maps with one name
// are refused, because nodes match maps by name and schema. The caller
// closes the maps.
func OpenMaps(specs []string) ([]*Map, error) {
	return openMaps(specs, DefaultPinDir)
}

// openMaps is [OpenMaps] with the default directory as a parameter, so tests
// can use their own bpffs.
func openMaps(specs []string, pinDir string) ([]*Map, error) {
	var ems []*ebpf.Map
	var labels []string
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
			labels = append(labels, "pinned map "+p)
		}
	}
	for _, spec := range specs {
		em, err := openSpec(spec)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("--map %s: %w", spec, permissionHint(err))
		}
		ems = append(ems, em)
		labels = append(labels, "--map "+spec)
	}

	maps := make([]*Map, 0, len(ems))
	for i, em := range ems {
		m, err := newMap(em)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("%s: %w", labels[i], permissionHint(err))
		}
		for j, prev := range maps {
			if prev.ID == m.ID {
				err = fmt.Errorf("%s and %s: both are map %s (id %d); give each map once", labels[j], labels[i], m.Name, m.ID)
			} else if prev.Name == m.Name {
				err = fmt.Errorf("%s and %s: two maps named %s (ids %d and %d); nodes match maps by name, so rename one", labels[j], labels[i], m.Name, prev.ID, m.ID)
			}
			if err != nil {
				closeAll()
				return nil, err
			}
		}
		maps = append(maps, m)
	}
	return maps, nil
}

// pinnedMaps opens the maps pinned directly under dir. Subdirectories, and
// pinned programs and links, are left alone: they belong to other tools, and
// a bpffs mounted on dir has kernel files (maps.debug) at its root.
func pinnedMaps(dir string) ([]*ebpf.Map, []string, error) {
	hint := "pin the maps to replicate there or pass --map"
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("no --map given and %s does not exist: %s", dir, hint)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("list pinned maps in %s: %w", dir, err)
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
			return nil, nil, fmt.Errorf("pinned map %s: %w", p, permissionHint(err))
		}
		maps = append(maps, em)
		paths = append(paths, p)
	}
	if len(maps) == 0 {
		return nil, nil, fmt.Errorf("no --map given and no map is pinned in %s: %s", dir, hint)
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

// openSpec opens the map one --map spec names.
func openSpec(spec string) (*ebpf.Map, error) {
	if name, ok := strings.CutPrefix(spec, "name:"); ok {
		return mapByName(name)
	}
	if id, ok := strings.CutPrefix(spec, "id:"); ok {
		return mapByID(id)
	}
	em, kind, err := loadPinned(spec)
	if errors.Is(err, os.ErrNotExist) {
		return nil, errors.New("no such pinned map; pin it on bpffs or use name:NAME or id:N")
	}
	if err == nil && em == nil {
		return nil, fmt.Errorf("the pinned object is a %s, not a map", kind)
	}
	return em, err
}

// permissionHint tells the operator what is missing when the kernel refuses
// a bpf(2) command for lack of privilege.
func permissionHint(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%w: needs root (CAP_BPF and CAP_SYS_ADMIN)", err)
	}
	return err
}

func mapByID(s string) (*ebpf.Map, error) {
	id, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("bad map id %q: want a decimal number", s)
	}
	em, err := ebpf.NewMapFromID(ebpf.MapID(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no map with id %d; list maps with bpftool map show", id)
	}
	return em, err
}

// mapByName walks every map of the kernel: names are not unique, so a name
// only resolves when exactly one map carries it.
func mapByName(name string) (*ebpf.Map, error) {
	if name == "" {
		return nil, errors.New("empty map name")
	}
	if len(name) > maxNameLen {
		return nil, fmt.Errorf("map names are at most %d characters; list maps with bpftool map show", maxNameLen)
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
		return nil, fmt.Errorf("no map named %s; list maps with bpftool map show", name)
	case 1:
		return found[0], nil
	}
	closeFound()
	return nil, fmt.Errorf("ambiguous: %d maps named %s (ids %s); use a pinned path or id:N", len(found), name, strings.Join(ids, ", "))
}

// newMap describes em and checks that it can be replicated; on success the
// [Map] owns em.
func newMap(em *ebpf.Map) (*Map, error) {
	info, err := em.Info()
	if err != nil {
		return nil, fmt.Errorf("map info: %w", err)
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
		return fmt.Errorf("map type %s is not supported; supported: hash, lru_hash, array", info.Type)
	}
	if info.KeySize > MaxKeySize {
		return fmt.Errorf("key size %d B is over the %d B limit", info.KeySize, MaxKeySize)
	}
	if info.ValueSize > MaxValueSize {
		return fmt.Errorf("value size %d B is over the %d B limit", info.ValueSize, MaxValueSize)
	}
	if info.Name == "" {
		return errors.New("map has no name; give the map a name (nodes match maps by name)")
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
