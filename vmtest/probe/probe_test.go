package probe

import (
	"bytes"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/vmtest"
)

// requireVM skips on the host: this kernel refuses fentry and is not
// Debian's, so these checks only mean something inside the VM.
func requireVM(t *testing.T) {
	t.Helper()
	if os.Getenv("UDPMAPSYNC_VM") != "1" {
		t.Skip("not inside the vmtest VM (UDPMAPSYNC_VM unset); go test ./vmtest runs these in it")
	}
}

func TestDebianKernel(t *testing.T) {
	requireVM(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	suite := os.Getenv(vmtest.EnvSuite)
	want, ok := map[string]string{vmtest.SuiteStable: "6.1.", vmtest.SuiteBackports: "6.12."}[suite]
	if !ok {
		t.Fatalf("%s=%q names no suite this probe knows", vmtest.EnvSuite, suite)
	}
	if !strings.HasPrefix(release, want) {
		t.Errorf("kernel release %s from %s, want %s*", release, suite, want)
	}
	version, err := os.ReadFile("/proc/version")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(version, []byte("Debian")) {
		t.Errorf("/proc/version does not name Debian: %s", version)
	}
}

func TestKernelBTF(t *testing.T) {
	requireVM(t)
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("load kernel BTF: %v", err)
	}
	var fn *btf.Func
	if err := spec.TypeByName("htab_map_update_elem", &fn); err != nil {
		t.Fatalf("htab_map_update_elem in kernel BTF: %v", err)
	}
}

// TestFentry is the reason the VM exists: the host kernel refuses fentry
// programs with EPERM. The program counts calls of htab_map_update_elem in
// an array map; the test updates a hash map and expects the count to grow.
func TestFentry(t *testing.T) {
	requireVM(t)
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer counter.Close()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.Tracing,
		AttachType: ebpf.AttachTraceFEntry,
		AttachTo:   "htab_map_update_elem",
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, counter.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "exit"),
			asm.Mov.Imm(asm.R1, 1),
			asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, 0),
			asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load fentry/htab_map_update_elem: %v", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		t.Fatalf("attach fentry/htab_map_update_elem: %v", err)
	}
	defer l.Close()

	hash, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer hash.Close()
	const writes = 5
	for i := range uint32(writes) {
		if err := hash.Put(i, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	var calls uint64
	if err := counter.Lookup(uint32(0), &calls); err != nil {
		t.Fatal(err)
	}
	// Other writers in the VM can only add calls.
	if calls < writes {
		t.Errorf("fentry counted %d calls of htab_map_update_elem, want at least %d", calls, writes)
	}
}

// TestVethBridgeInNetns creates a named namespace with a veth pair and a
// bridge through netlink, as the netns tests do, and enters it with
// nsenter (util-linux's, or busybox's in a VM of another architecture).
func TestVethBridgeInNetns(t *testing.T) {
	requireVM(t)
	const ns = "vmtest-probe"
	handle := newNamedNetns(t, ns)
	nl, err := netlink.NewHandleAt(handle)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	if err := nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "veth0"}, PeerName: "veth1"}); err != nil {
		t.Fatalf("add veth pair in %s: %v", ns, err)
	}
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := nl.LinkAdd(bridge); err != nil {
		t.Fatalf("add bridge in %s: %v", ns, err)
	}
	if v, err := nl.LinkByName("veth0"); err != nil {
		t.Fatal(err)
	} else if err := nl.LinkSetMaster(v, bridge); err != nil {
		t.Fatalf("enslave veth0 to br0: %v", err)
	}

	veth, err := nl.LinkByName("veth0")
	if err != nil {
		t.Fatalf("veth0 in %s: %v", ns, err)
	}
	if _, ok := veth.(*netlink.Veth); !ok {
		t.Errorf("veth0 is a %s link, want veth", veth.Type())
	}
	br, err := nl.LinkByName("br0")
	if err != nil {
		t.Fatalf("br0 in %s: %v", ns, err)
	}
	if veth.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("veth0 master index %d, want br0's %d", veth.Attrs().MasterIndex, br.Attrs().Index)
	}

	out, err := exec.Command("nsenter", "--net=/run/netns/"+ns, "ip", "-o", "link", "show", "veth1").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("veth1@veth0")) {
		t.Errorf("nsenter ip link show veth1: %v: %s", err, out)
	}
}

// newNamedNetns creates network namespace name, bound under /run/netns as
// ip netns add does, and removes it when the test ends.
func newNamedNetns(t *testing.T, name string) netns.NsHandle {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	handle, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("back to the first namespace: %v", serr)
	}
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		handle.Close()
		netns.DeleteNamed(name)
	})
	return handle
}

// TestMounts checks the file systems /init mounts, by their magic numbers.
func TestMounts(t *testing.T) {
	requireVM(t)
	for path, magic := range map[string]int64{
		"/sys/fs/bpf":         unix.BPF_FS_MAGIC,
		"/sys/kernel/debug":   unix.DEBUGFS_MAGIC,
		"/sys/kernel/tracing": unix.TRACEFS_MAGIC,
		"/sys/fs/cgroup":      unix.CGROUP2_SUPER_MAGIC,
	} {
		var st unix.Statfs_t
		if err := unix.Statfs(path, &st); err != nil {
			t.Errorf("statfs %s: %v", path, err)
		} else if st.Type != magic {
			t.Errorf("%s: file system magic %#x, want %#x", path, st.Type, magic)
		}
	}
}

// TestTestdata holds wherever the binary runs: go test runs it in the
// package directory, and vmrun recreates that with testdata inside the VM.
func TestTestdata(t *testing.T) {
	b, err := os.ReadFile("testdata/marker.txt")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "reachable from the VM\n" {
		t.Errorf("testdata/marker.txt: got %q", b)
	}
}
