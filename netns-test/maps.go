package netnstest

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/loader"
)

// MapSpec is a map the harness creates on every node with bpftool.
type MapSpec struct {
	// Name is the map's name in the kernel (what nodes match maps by) and
	// the file name of its pin.
	Name string
	// Type is one of the types udpmapsync replicates: [ebpf.Hash],
	// [ebpf.LRUHash], [ebpf.Array], their per-CPU forms or [ebpf.LPMTrie].
	Type                           ebpf.MapType
	KeySize, ValueSize, MaxEntries uint32
	// Options follow the map's path in its --map (scan=1s,clock=...), the
	// same on every node; empty for none.
	Options string
	// NodeOptions[i], when present, replace Options on node i (an index
	// into Topology.Nodes), to test nodes whose options differ.
	NodeOptions map[int]string
}

// DefaultMaps are the maps the convergence test and the demo replicate:
// one of each supported type, plus a hash with odd sizes so that nothing
// on the way can lean on alignment.
func DefaultMaps() []MapSpec {
	return []MapSpec{
		{Name: "flows", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 65536},
		{Name: "odd", Type: ebpf.Hash, KeySize: 13, ValueSize: 37, MaxEntries: 65536},
		// LRU evictions are not replicated; far more room than any
		// workload here fills keeps them out of the picture.
		{Name: "lru", Type: ebpf.LRUHash, KeySize: 8, ValueSize: 16, MaxEntries: 65536},
		{Name: "arr", Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 8192},
	}
}

// bpftoolType is the type's name on bpftool's command line.
func (s MapSpec) bpftoolType() (string, error) {
	if name, ok := loader.TypeName(s.Type); ok {
		return name, nil
	}
	return "", fmt.Errorf("map %s: type %s is not one udpmapsync replicates", s.Name, s.Type)
}

// BPFFS is a bpffs instance of its own, mounted for one run in a temporary
// directory: pins of leftover or parallel runs cannot collide, and the host
// needs no /sys/fs/bpf. It lives in the harness's mount namespace, which the
// daemons share (they only change network namespace).
type BPFFS struct {
	// Dir is where the instance is mounted.
	Dir string
}

// MountBPFFS mounts a new bpffs instance. Close unmounts it, which unpins
// everything below it.
func MountBPFFS() (*BPFFS, error) {
	dir, err := os.MkdirTemp("", "udpmapsync-bpffs-")
	if err != nil {
		return nil, fmt.Errorf("mount bpffs: %w", err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return &BPFFS{Dir: dir}, nil
}

// Close unmounts the instance and removes its directory.
func (fs *BPFFS) Close() error {
	if err := unix.Unmount(fs.Dir, 0); err != nil {
		return fmt.Errorf("unmount bpffs %s: %w", fs.Dir, err)
	}
	if err := os.Remove(fs.Dir); err != nil {
		return fmt.Errorf("remove bpffs mount point: %w", err)
	}
	return nil
}

// CreateMap creates the map spec describes with bpftool and pins it at
// path, creating path's directory on the bpffs as needed.
func CreateMap(ctx context.Context, path string, spec MapSpec) error {
	typ, err := spec.bpftoolType()
	if err != nil {
		return fmt.Errorf("create map %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create map %s: %w", path, err)
	}
	args := []string{"map", "create", path, "type", typ,
		"key", fmt.Sprint(spec.KeySize), "value", fmt.Sprint(spec.ValueSize),
		"entries", fmt.Sprint(spec.MaxEntries), "name", spec.Name}
	if spec.Type == ebpf.LPMTrie {
		args = append(args, "flags", "1") // BPF_F_NO_PREALLOC: the kernel takes no trie without
	}
	_, err = bpftool(exec.CommandContext(ctx, "bpftool", args...))
	return err
}

// bpftool runs a prepared bpftool command and returns its output; a
// failure carries what bpftool said.
func bpftool(cmd *exec.Cmd) ([]byte, error) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Contents is what a map holds: key bytes to value bytes, kept as strings
// so that contents compare with == and keys serve as Go map keys. Array
// slots holding only zeros are left out: they are what an array slot
// holds when nothing was written to it, the array counterpart of an
// absent key, so arrays compare like hashes.
type Contents map[string]string

// readBatch is how many entries one BPF_MAP_LOOKUP_BATCH fetches: reading
// 20,000 entries one by one takes 40,000 syscalls, which would slow the
// daemons down while a demo polls ten times a second.
const readBatch = 4096

// readAttempts bounds the reads of a map that the kernel cuts short.
const readAttempts = 5

// ReadContents reads every entry of m: a per-CPU map's values whole, every
// CPU's slot, and an LPM trie's keys canonical, as udpmapsync replicates
// them (loader.Map.Dump).
func ReadContents(m *ebpf.Map) (c Contents, err error) {
	// Recent kernels (6.15+) lock hash buckets with a resilient spinlock
	// that gives up with ETIMEDOUT or EDEADLK instead of waiting on; a
	// batch lookup failed so here with three daemons and a writer busy on
	// two vCPUs. Reading again is the remedy.
	for range readAttempts {
		c, err = readContents(m)
		if !errors.Is(err, unix.ETIMEDOUT) && !errors.Is(err, unix.EDEADLK) {
			break
		}
	}
	return c, err
}

func readContents(m *ebpf.Map) (Contents, error) {
	if loader.PerCPU(m.Type()) || m.Type() == ebpf.LPMTrie {
		return dumpContents(m)
	}
	ks, vs := int(m.KeySize()), int(m.ValueSize())
	keys, kb := byteArrays(readBatch, ks)
	vals, vb := byteArrays(readBatch, vs)
	c := make(Contents)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			v := vb[i*vs : (i+1)*vs]
			if m.Type() == ebpf.Array && isZero(v) {
				continue
			}
			c[string(kb[i*ks:(i+1)*ks])] = string(v)
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return c, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read map contents: %w", err)
		}
	}
}

// dumpContents reads m as the daemon reads it, for the maps whose values or
// keys cilium/ebpf's batch lookup does not return as udpmapsync sends them.
func dumpContents(em *ebpf.Map) (Contents, error) {
	info, err := em.Info()
	if err != nil {
		return nil, fmt.Errorf("read map contents: %w", err)
	}
	id, _ := info.ID()
	maps, err := loader.OpenMaps([]string{fmt.Sprintf("id:%d", id)})
	if err != nil {
		return nil, fmt.Errorf("read map contents: %w", err)
	}
	m := maps[0]
	defer m.Close()
	ks, vs := int(m.KeySize), int(m.ValueLen)
	c := make(Contents)
	err = m.Dump(make([]byte, readBatch*ks), make([]byte, readBatch*vs), func(keys, values []byte) error {
		for i := range len(keys) / ks {
			v := values[i*vs : (i+1)*vs]
			if loader.ArrayType(m.Type) && isZero(v) {
				continue
			}
			c[string(keys[i*ks:(i+1)*ks])] = string(v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read map contents: %w", err)
	}
	return c, nil
}

// byteArrays makes a []([size]byte) of n elements for a batch lookup, which
// wants keys and values as slices of equal length whose element is a key
// or a value; the sizes are only known at run time. It also returns the
// slice's backing memory as bytes.
func byteArrays(n, size int) (any, []byte) {
	s := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(size, reflect.TypeFor[byte]())), n, n)
	return s.Interface(), unsafe.Slice((*byte)(s.UnsafePointer()), n*size)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Diff says how a map's contents differ from the contents wanted.
type Diff struct {
	// Want and Have count the entries wanted and held.
	Want, Have int
	// Missing keys are wanted but not held, Extra keys held but not
	// wanted, Wrong keys held with another value.
	Missing, Extra, Wrong int
	// First describes the first few differing keys, in key order.
	First []string
}

// maxDiffExamples bounds [Diff.First].
const maxDiffExamples = 3

// Compare compares have with want byte for byte.
func Compare(want, have Contents) Diff {
	d := Diff{Want: len(want), Have: len(have)}
	var keys []string // every differing key, described later for the first few only
	for k, w := range want {
		if h, ok := have[k]; !ok {
			d.Missing++
			keys = append(keys, k)
		} else if h != w {
			d.Wrong++
			keys = append(keys, k)
		}
	}
	for k := range have {
		if _, ok := want[k]; !ok {
			d.Extra++
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys[:min(len(keys), maxDiffExamples)] {
		w, wanted := want[k]
		h, held := have[k]
		var what string
		switch {
		case !held:
			what = "missing, want " + shown(w)
		case !wanted:
			what = "extra, holds " + shown(h)
		default:
			what = "holds " + shown(h) + ", want " + shown(w)
		}
		d.First = append(d.First, "key "+shown(k)+" "+what)
	}
	return d
}

// maxShown is how many bytes of a key or value a diff spells out.
const maxShown = 32

// shown spells out b in hex, its first maxShown bytes and its length if
// longer: a diff of 4 KiB values stays one readable line.
func shown(b string) string {
	if len(b) <= maxShown {
		return hex.EncodeToString([]byte(b))
	}
	return fmt.Sprintf("%x… (%d B)", b[:maxShown], len(b))
}

// Equal reports whether the contents were identical.
func (d Diff) Equal() bool {
	return d.Missing == 0 && d.Extra == 0 && d.Wrong == 0
}

// Matching counts the wanted entries held with the wanted value.
func (d Diff) Matching() int {
	return d.Want - d.Missing - d.Wrong
}

// String summarises the diff on one line, with the first differing keys.
func (d Diff) String() string {
	if d.Equal() {
		return fmt.Sprintf("identical (%d entries)", d.Want)
	}
	s := fmt.Sprintf("want %d entries, have %d: %d missing, %d extra, %d wrong", d.Want, d.Have, d.Missing, d.Extra, d.Wrong)
	if len(d.First) > 0 {
		s += "; " + strings.Join(d.First, "; ")
	}
	return s
}
