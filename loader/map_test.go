package loader

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// testBPFFS mounts a private bpffs instance for one test, so pins never
// touch /sys/fs/bpf and disappear with the test.
func testBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// randomName returns a map name no other map of the machine carries, since
// name: lookups see every map of the kernel.
func randomName(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "ut_" + hex.EncodeToString(b)
}

// kernelMap creates a map closed at the end of the test; pin, when not
// empty, pins it there.
func kernelMap(t *testing.T, spec ebpf.MapSpec, pin string) (*ebpf.Map, ebpf.MapID) {
	t.Helper()
	em, err := ebpf.NewMap(&spec)
	if err != nil {
		t.Fatalf("create map %+v: %v", spec, err)
	}
	t.Cleanup(func() { em.Close() })
	if pin != "" {
		if err := em.Pin(pin); err != nil {
			t.Fatalf("pin %s: %v", pin, err)
		}
	}
	info, err := em.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		t.Fatal("map info without id")
	}
	return em, id
}

// pinnedProgram pins a program, the kind of object a pin directory may hold
// beside maps.
func pinnedProgram(t *testing.T, path string) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SocketFilter,
		License:      "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	if err := prog.Pin(path); err != nil {
		t.Fatal(err)
	}
}

func closeMaps(t *testing.T, maps []*Map) {
	t.Helper()
	for _, m := range maps {
		if err := m.Close(); err != nil {
			t.Errorf("close %s: %v", m, err)
		}
	}
}

func TestOpenMapsSpecForms(t *testing.T) {
	dir := testBPFFS(t)
	name := randomName(t)
	path := filepath.Join(dir, "flows")
	_, id := kernelMap(t, ebpf.MapSpec{Name: name, Type: ebpf.Hash, KeySize: 13, ValueSize: 37,
		MaxEntries: 100, Flags: unix.BPF_F_NO_PREALLOC}, path)
	want := Map{Name: name, Type: ebpf.Hash, KeySize: 13, ValueSize: 37, MaxEntries: 100,
		Flags: unix.BPF_F_NO_PREALLOC, ID: id}

	for _, spec := range []string{path, "name:" + name, fmt.Sprintf("id:%d", id)} {
		t.Run(spec, func(t *testing.T) {
			maps, err := openMaps([]string{spec}, filepath.Join(dir, "unused"))
			if err != nil {
				t.Fatal(err)
			}
			defer closeMaps(t, maps)
			if len(maps) != 1 {
				t.Fatalf("got %d maps, want 1", len(maps))
			}
			checkMap(t, maps[0], &want)
		})
	}
}

func checkMap(t *testing.T, got, want *Map) {
	t.Helper()
	if got.Name != want.Name || got.Type != want.Type || got.KeySize != want.KeySize ||
		got.ValueSize != want.ValueSize || got.MaxEntries != want.MaxEntries ||
		got.Flags != want.Flags || got.ID != want.ID {
		t.Errorf("got %s flags %#x, want %s flags %#x", got, got.Flags, want, want.Flags)
	}
}

func TestOpenMapsDefaultDir(t *testing.T) {
	dir := testBPFFS(t)
	var want []*Map
	for _, typ := range []ebpf.MapType{ebpf.Array, ebpf.Hash, ebpf.LRUHash} {
		name := randomName(t)
		_, id := kernelMap(t, ebpf.MapSpec{Name: name, Type: typ, KeySize: 4, ValueSize: 8, MaxEntries: 16},
			filepath.Join(dir, typ.String()))
		want = append(want, &Map{Name: name, Type: typ, KeySize: 4, ValueSize: 8, MaxEntries: 16, ID: id})
	}
	// Pins in subdirectories belong to others and are not replicated.
	if err := os.Mkdir(filepath.Join(dir, "other"), 0o700); err != nil {
		t.Fatal(err)
	}
	kernelMap(t, ebpf.MapSpec{Name: randomName(t), Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16},
		filepath.Join(dir, "other", "m"))
	pinnedProgram(t, filepath.Join(dir, "prog"))

	maps, err := openMaps(nil, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer closeMaps(t, maps)
	if len(maps) != len(want) {
		t.Fatalf("got %d maps (%v), want %d", len(maps), maps, len(want))
	}
	for i := range want { // os.ReadDir sorts: Array, Hash, LRUHash
		checkMap(t, maps[i], want[i])
	}
}

func TestOpenMapsDefaultDirMissingOrEmpty(t *testing.T) {
	dir := testBPFFS(t)
	pinnedProgram(t, filepath.Join(dir, "prog")) // not a map: still none pinned
	for d, want := range map[string]string{
		filepath.Join(dir, "missing"): "list maps pinned in " + dir + "/missing: no maps to replicate: the directory does not exist",
		dir:                           "list maps pinned in " + dir + ": no maps to replicate: none is pinned there",
	} {
		_, err := openMaps(nil, d)
		if !errors.Is(err, ErrNoMaps) || err.Error() != want {
			t.Errorf("openMaps(nil, %s):\n got %v\nwant %s (ErrNoMaps)", d, err, want)
		}
		if me := (*MapError)(nil); errors.As(err, &me) {
			t.Errorf("openMaps(nil, %s): %v is about map %s, want it about the directory", d, err, me.Spec)
		}
	}
}

// TestOpenMapsDefaultDirRefusals: the maps found pinned are refused as
// given ones are, in a *MapError with Pinned set that names the pin.
func TestOpenMapsDefaultDirRefusals(t *testing.T) {
	spec := func(name string, typ ebpf.MapType) ebpf.MapSpec {
		return ebpf.MapSpec{Name: name, Type: typ, KeySize: 4, ValueSize: 8, MaxEntries: 4}
	}
	t.Run("unsupported", func(t *testing.T) {
		dir := testBPFFS(t)
		kernelMap(t, spec(randomName(t), ebpf.Hash), filepath.Join(dir, "a"))
		kernelMap(t, spec(randomName(t), ebpf.DevMap), filepath.Join(dir, "b"))
		checkMapError(t, dir, nil, filepath.Join(dir, "b"), true, ErrUnsupportedMap,
			"open pinned map "+dir+"/b: map cannot be replicated: type DevMap is not one of hash, lru_hash, array, percpu_hash, lru_percpu_hash, percpu_array and lpm_trie")
	})
	t.Run("same map twice", func(t *testing.T) {
		dir := testBPFFS(t)
		name := randomName(t)
		_, id := kernelMap(t, spec(name, ebpf.Hash), filepath.Join(dir, "a"))
		em, err := ebpf.NewMapFromID(id) // a second handle, for a second pin (Pin moves a handle's pin)
		if err != nil {
			t.Fatal(err)
		}
		defer em.Close()
		if err := em.Pin(filepath.Join(dir, "b")); err != nil {
			t.Fatal(err)
		}
		checkMapError(t, dir, nil, filepath.Join(dir, "b"), true, ErrDuplicateMap,
			fmt.Sprintf("open pinned map %s/b: duplicate map: %s (id %d) is also pinned at %s/a", dir, name, id, dir))
	})
	t.Run("one name twice", func(t *testing.T) {
		dir := testBPFFS(t)
		name := randomName(t)
		_, id1 := kernelMap(t, spec(name, ebpf.Hash), filepath.Join(dir, "a"))
		_, id2 := kernelMap(t, spec(name, ebpf.Hash), filepath.Join(dir, "b"))
		checkMapError(t, dir, nil, filepath.Join(dir, "b"), true, ErrDuplicateName,
			fmt.Sprintf("open pinned map %s/b: duplicate map name: this map (id %d) and map %d, pinned at %s/a, are both named %s", dir, id2, id1, dir, name))
	})
}

// checkMapError checks that openMaps(specs, dir) fails with a *MapError
// about spec that matches sentinel and reads want, and leaks no file
// descriptor.
func checkMapError(t *testing.T, dir string, specs []string, spec string, pinned bool, sentinel error, want string) {
	t.Helper()
	fds := openFDs(t)
	maps, err := openMaps(specs, dir)
	if err == nil {
		closeMaps(t, maps)
		t.Errorf("%q: no error, want %q", specs, want)
		return
	}
	if err.Error() != want {
		t.Errorf("%q:\n got %q\nwant %q", specs, err, want)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("%q: %v does not match %v", specs, err, sentinel)
	}
	var me *MapError
	if !errors.As(err, &me) || me.Spec != spec || me.Pinned != pinned {
		t.Errorf("%q: %v is not a MapError about %s (pinned %v): %#v", specs, err, spec, pinned, me)
	}
	if n := openFDs(t); n != fds {
		t.Errorf("%q: %d file descriptors open after the error, %d before", specs, n, fds)
	}
}

func TestOpenMapsRefusals(t *testing.T) {
	dir := testBPFFS(t)
	pins := 0
	pinned := func(name string, typ ebpf.MapType, keySize, valueSize uint32) (string, ebpf.MapID) {
		pins++
		p := filepath.Join(dir, fmt.Sprintf("m%d", pins))
		_, id := kernelMap(t, ebpf.MapSpec{Name: name, Type: typ, KeySize: keySize, ValueSize: valueSize, MaxEntries: 4}, p)
		return p, id
	}
	devMap, _ := pinned(randomName(t), ebpf.DevMap, 4, 8)
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	// A value that fits alone but not once per CPU.
	perCPUSize := uint32(MaxValueSize/cpus + 8)
	perCPUSlot := (perCPUSize + 7) &^ 7 // the kernel's round_up(value_size, 8)
	bigPerCPU, _ := pinned(randomName(t), ebpf.PerCPUHash, 4, perCPUSize)
	bigKey, _ := pinned(randomName(t), ebpf.Hash, MaxKeySize+1, 8)
	bigValue, _ := pinned(randomName(t), ebpf.Array, 4, MaxValueSize+1)
	noName, _ := pinned("", ebpf.Hash, 4, 8)
	ambiguous := randomName(t)
	amb1, id1 := pinned(ambiguous, ebpf.Hash, 4, 8)
	_, id2 := pinned(ambiguous, ebpf.LRUHash, 4, 8)
	okName := randomName(t)
	okPath, okID := pinned(okName, ebpf.Hash, 4, 8)
	missingName := randomName(t)
	prog := filepath.Join(dir, "prog")
	pinnedProgram(t, prog)

	for _, tc := range []struct {
		specs    []string
		sentinel error
		want     string // after "open map SPEC: ", SPEC the last of specs
	}{
		{[]string{bigPerCPU}, ErrUnsupportedMap, fmt.Sprintf("map cannot be replicated: a per-CPU value of %d B holds a slot of %d B for each of the %d possible CPUs, %d B in all, over the %d B limit: shrink the value",
			perCPUSize, perCPUSlot, cpus, int(perCPUSlot)*cpus, MaxValueSize)},
		{[]string{devMap}, ErrUnsupportedMap, "map cannot be replicated: type DevMap is not one of hash, lru_hash, array, percpu_hash, lru_percpu_hash, percpu_array and lpm_trie"},
		{[]string{okPath, bigKey}, ErrUnsupportedMap, "map cannot be replicated: key size 513 B is over the 512 B limit"},
		{[]string{bigValue}, ErrUnsupportedMap, "map cannot be replicated: value size 16384 B is over the 16383 B limit"},
		{[]string{noName}, ErrUnsupportedMap, "map cannot be replicated: it has no name, and nodes match maps by name"},
		{[]string{"name:" + ambiguous}, ErrAmbiguousName, fmt.Sprintf("ambiguous map name: 2 maps are named %s (ids %d, %d)", ambiguous, id1, id2)},
		{[]string{"name:" + missingName}, ErrMapNotFound, "no such map: no map is named " + missingName},
		{[]string{"name:abcdefghijklmnop"}, ErrBadSpec, "malformed map spec: name of 16 characters; the kernel keeps at most 15"},
		{[]string{"name:"}, ErrBadSpec, "malformed map spec: empty map name"},
		{[]string{"id:x"}, ErrBadSpec, `malformed map spec: id "x" is not a decimal number`},
		{[]string{"id:4294967295"}, ErrMapNotFound, "no such map: no map has id 4294967295"},
		{[]string{dir + "/nope"}, ErrMapNotFound, "no such map: nothing is pinned at this path"},
		{[]string{prog}, ErrMapNotFound, "no such map: the pinned object is a bpf-prog"},
		{[]string{okPath, fmt.Sprintf("id:%d", okID)}, ErrDuplicateMap, fmt.Sprintf("duplicate map: %s (id %d) is also given as %s", okName, okID, okPath)},
		{[]string{amb1, "id:" + fmt.Sprint(id2)}, ErrDuplicateName, fmt.Sprintf("duplicate map name: this map (id %d) and map %d, given as %s, are both named %s", id2, id1, amb1, ambiguous)},
	} {
		spec := tc.specs[len(tc.specs)-1]
		checkMapError(t, dir, tc.specs, spec, false, tc.sentinel, "open map "+spec+": "+tc.want)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestOpenMapsNeedsRoot runs itself again in a child process that drops
// CAP_BPF and CAP_SYS_ADMIN, so the parent's capabilities (and cilium/ebpf's
// cached feature probes) stay intact. Finding maps by name or id needs
// CAP_SYS_ADMIN, and the error says so ([ErrPermission]); a pin only needs
// permission on its file, which root keeps.
func TestOpenMapsNeedsRoot(t *testing.T) {
	const env = "UDPMAPSYNC_TEST_NO_CAPS"
	if os.Getenv(env) != "" {
		runWithoutCaps(t)
		return
	}
	dir := testBPFFS(t)
	path := filepath.Join(dir, "m")
	name := randomName(t)
	_, id := kernelMap(t, ebpf.MapSpec{Name: name, Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 4}, path)

	cmd := exec.Command(os.Args[0], "-test.run=^TestOpenMapsNeedsRoot$", "-test.v")
	cmd.Env = append(os.Environ(), env+"=1", "PINNED="+path, "SPECS=name:"+name+fmt.Sprint(",id:", id))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestOpenMapsNeedsRoot") {
		t.Fatalf("child did not run the test:\n%s", out)
	}
}

func runWithoutCaps(t *testing.T) {
	// Capabilities are per thread: stay on the one that drops them.
	runtime.LockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	for _, c := range []uint{unix.CAP_BPF, unix.CAP_SYS_ADMIN} {
		data[c/32].Effective &^= 1 << (c % 32)
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	for _, spec := range strings.Split(os.Getenv("SPECS"), ",") {
		_, err := openMaps([]string{spec}, "")
		var me *MapError
		var pe *PermissionError
		if !errors.Is(err, ErrPermission) || !errors.Is(err, unix.EPERM) ||
			!errors.As(err, &me) || me.Spec != spec || me.Pinned ||
			!errors.As(err, &pe) || fmt.Sprint(pe.Caps, pe.Missing) != "[CAP_SYS_ADMIN] [CAP_SYS_ADMIN]" ||
			!strings.HasPrefix(err.Error(), "open map "+spec+": ") ||
			!strings.HasSuffix(err.Error(), "operation not permitted: needs CAP_SYS_ADMIN, which this process lacks") {
			t.Errorf("without CAP_BPF and CAP_SYS_ADMIN, %s: got %v, want a MapError about it wrapping a PermissionError for missing CAP_SYS_ADMIN", spec, err)
		}
		t.Log(err)
	}
	maps, err := openMaps([]string{os.Getenv("PINNED")}, "")
	if err != nil {
		t.Errorf("without CAP_BPF and CAP_SYS_ADMIN, open a pinned map: %v", err)
	}
	closeMaps(t, maps)
}
