package loader

import (
	"crypto/rand"
	"encoding/hex"
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
	for _, d := range []string{filepath.Join(dir, "missing"), dir} {
		_, err := openMaps(nil, d)
		if err == nil || !strings.HasPrefix(err.Error(), "no --map given and ") ||
			!strings.Contains(err.Error(), d) ||
			!strings.HasSuffix(err.Error(), "pin the maps to replicate there or pass --map") {
			t.Errorf("openMaps(nil, %s): got %v, want an error saying to pin maps there or pass --map", d, err)
		}
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
	perCPU, _ := pinned(randomName(t), ebpf.PerCPUHash, 4, 8)
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
		specs []string
		want  string
	}{
		{[]string{perCPU}, "--map " + perCPU + ": map type PerCPUHash is not supported; supported: hash, lru_hash, array"},
		{[]string{okPath, bigKey}, "--map " + bigKey + ": key size 513 B is over the 512 B limit"},
		{[]string{bigValue}, "--map " + bigValue + ": value size 4097 B is over the 4096 B limit"},
		{[]string{noName}, "--map " + noName + ": map has no name; give the map a name (nodes match maps by name)"},
		{[]string{"name:" + ambiguous}, fmt.Sprintf("--map name:%s: ambiguous: 2 maps named %s (ids %d, %d); use a pinned path or id:N", ambiguous, ambiguous, id1, id2)},
		{[]string{"name:" + missingName}, "--map name:" + missingName + ": no map named " + missingName + "; list maps with bpftool map show"},
		{[]string{"name:abcdefghijklmnop"}, "--map name:abcdefghijklmnop: map names are at most 15 characters; list maps with bpftool map show"},
		{[]string{"name:"}, "--map name:: empty map name"},
		{[]string{"id:x"}, `--map id:x: bad map id "x": want a decimal number`},
		{[]string{"id:4294967295"}, "--map id:4294967295: no map with id 4294967295; list maps with bpftool map show"},
		{[]string{dir + "/nope"}, "--map " + dir + "/nope: no such pinned map; pin it on bpffs or use name:NAME or id:N"},
		{[]string{prog}, "--map " + prog + ": the pinned object is a bpf-prog, not a map"},
		{[]string{okPath, fmt.Sprintf("id:%d", okID)}, fmt.Sprintf("--map %s and --map id:%d: both are map %s (id %d); give each map once", okPath, okID, okName, okID)},
		{[]string{amb1, "id:" + fmt.Sprint(id2)}, fmt.Sprintf("--map %s and --map id:%d: two maps named %s (ids %d and %d); nodes match maps by name, so rename one", amb1, id2, ambiguous, id1, id2)},
	} {
		fds := openFDs(t)
		maps, err := openMaps(tc.specs, dir)
		if err == nil {
			closeMaps(t, maps)
			t.Errorf("%q: no error, want %q", tc.specs, tc.want)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.specs, err, tc.want)
		}
		if n := openFDs(t); n != fds {
			t.Errorf("%q: %d file descriptors open after the error, %d before", tc.specs, n, fds)
		}
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
// cached feature probes) stay intact. Finding maps by name or id needs the
// capabilities; a pin only needs permission on its file, which root keeps.
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
		if err == nil || !strings.HasPrefix(err.Error(), "--map "+spec+": ") ||
			!strings.HasSuffix(err.Error(), "needs root (CAP_BPF and CAP_SYS_ADMIN)") {
			t.Errorf("without CAP_BPF and CAP_SYS_ADMIN, %s: got %v, want a needs-root error", spec, err)
		}
		t.Log(err)
	}
	maps, err := openMaps([]string{os.Getenv("PINNED")}, "")
	if err != nil {
		t.Errorf("without CAP_BPF and CAP_SYS_ADMIN, open a pinned map: %v", err)
	}
	closeMaps(t, maps)
}
