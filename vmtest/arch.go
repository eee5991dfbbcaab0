package vmtest

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// Arch is a machine the VM can emulate: Debian's kernel for it and qemu's
// system emulator of it.
type Arch struct {
	// Name is Debian's and Go's name of the architecture.
	Name string
	// Console is the kernel's serial console on qemu's board.
	Console string
	// machine are qemu's board and CPU options.
	machine []string
	// multiarch is Debian's directory of the architecture's libraries
	// under /lib and /usr/lib.
	multiarch string
	qemu      hostTool
	elf       elf.Machine
}

// The architectures the VM emulates.
var (
	ArchAMD64 = &Arch{Name: "amd64", Console: "ttyS0", machine: []string{"-cpu", "max"},
		multiarch: "x86_64-linux-gnu", qemu: hostTool{"qemu-system-x86_64", "qemu-system-x86"}, elf: elf.EM_X86_64}
	// ArchARM64 is qemu's generic virt board with every feature TCG
	// emulates; pointer authentication with qemu's own cheap algorithm
	// instead of the architected one, which costs TCG much time.
	ArchARM64 = &Arch{Name: "arm64", Console: "ttyAMA0", machine: []string{"-M", "virt", "-cpu", "max,pauth-impdef=on"},
		multiarch: "aarch64-linux-gnu", qemu: hostTool{"qemu-system-aarch64", "qemu-system-arm"}, elf: elf.EM_AARCH64}
)

var arches = []*Arch{ArchAMD64, ArchARM64}

// hostArch is the architecture of this machine, whose own apt sources,
// tools and libraries serve a VM of the same architecture.
var hostArch = runtime.GOARCH

// MetaPackage is the Debian package whose dependency names the kernel the
// VM boots: linux-image-amd64 or linux-image-arm64.
func (a *Arch) MetaPackage() string { return "linux-image-" + a.Name }

// foreign reports whether the VM runs another architecture than the host:
// then its kernel, busybox and tools come from Debian packages for it,
// through an apt configuration of the harness's own.
func (a *Arch) foreign() bool { return a.Name != hostArch }

// ArchOf returns the architecture the executable at path is built for.
func ArchOf(path string) (*Arch, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("architecture of %s: %w", path, err)
	}
	defer f.Close()
	for _, a := range arches {
		if a.elf == f.Machine {
			return a, nil
		}
	}
	return nil, fmt.Errorf("architecture of %s: %s, which the VM does not emulate", path, f.Machine)
}

// guestPackages are the Debian packages a VM of a foreign architecture
// takes its programs from: busybox (the shell, ip, nsenter, insmod) and
// bpftool with the libraries it links.
var guestPackages = []string{"busybox-static", "bpftool", "libc6", "libcap2", "libelf1", "zlib1g"}

// guestRoot returns a directory holding [guestPackages] for a, unpacked,
// downloading them the first time.
func guestRoot(cacheDir string, a *Arch) (string, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("create cache dir: %w", err)
	}
	unlock, err := lockDir(cacheDir)
	if err != nil {
		return "", err
	}
	defer unlock()
	root := filepath.Join(cacheDir, "guest-"+a.Name)
	if _, err := os.Stat(root); err == nil {
		return root, nil
	}
	opts, _, err := aptOptions(cacheDir, SuiteStable, a)
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(cacheDir, ".guest-"+a.Name+".tmp-")
	if err != nil {
		return "", fmt.Errorf("prepare %s programs: %w", a.Name, err)
	}
	defer os.RemoveAll(tmp)
	if _, err := runQuiet(tmp, "apt-get", append(append(sandboxOptions(), opts...), append([]string{"download"}, guestPackages...)...)...); err != nil {
		return "", fmt.Errorf("download %s programs: %w", a.Name, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != len(guestPackages) {
		return "", fmt.Errorf("download %s programs: expected %d packages, found %d", a.Name, len(guestPackages), len(debs))
	}
	for _, deb := range debs {
		if _, err := runQuiet("", "dpkg", "-x", deb, filepath.Join(tmp, "root")); err != nil {
			return "", fmt.Errorf("unpack %s: %w", filepath.Base(deb), err)
		}
	}
	if err := os.Rename(filepath.Join(tmp, "root"), root); err != nil {
		return "", fmt.Errorf("prepare %s programs: %w", a.Name, err)
	}
	return root, nil
}

// addGuestProgram copies the executable at vmPath in root (a [guestRoot])
// to the same path in the VM and, if it is dynamically linked, its loader
// and the libraries it needs, found in root's library directories.
func (f *initramfs) addGuestProgram(a *Arch, root, vmPath string) error {
	if f.has(vmPath) {
		return nil
	}
	if err := f.addHostFile(vmPath, filepath.Join(root, vmPath)); err != nil {
		return err
	}
	e, err := elf.Open(filepath.Join(root, vmPath))
	if err != nil {
		return fmt.Errorf("add %s: %w", vmPath, err)
	}
	defer e.Close()
	for _, p := range e.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return fmt.Errorf("add %s: interpreter: %w", vmPath, err)
			}
			interp := strings.TrimRight(string(b), "\x00")
			if err := f.addHostFile(interp, filepath.Join(root, interp)); err != nil {
				return err
			}
		}
	}
	libs, err := e.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("add %s: %w", vmPath, err)
	}
	for _, lib := range libs {
		found := false
		for _, dir := range []string{"/lib/" + a.multiarch, "/usr/lib/" + a.multiarch} {
			vmLib := filepath.Join(dir, lib)
			if _, err := os.Stat(filepath.Join(root, vmLib)); err == nil {
				if err := f.addGuestProgram(a, root, vmLib); err != nil {
					return err
				}
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("add %s: library %s not in %s", vmPath, lib, root)
		}
	}
	return nil
}
