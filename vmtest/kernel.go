package vmtest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// MetaPackage is the Debian package whose dependency names the kernel the
// VM boots: the distribution's current 6.1 kernel on bookworm.
const MetaPackage = "linux-image-amd64"

// Kernel is a Debian kernel unpacked in the cache and ready to boot.
type Kernel struct {
	Package string // versioned Debian package, e.g. linux-image-6.1.0-56-amd64
	Release string // uname -r inside the VM, e.g. 6.1.0-56-amd64
	// Image is the file given to qemu -kernel: the uncompressed ELF
	// vmlinux (PVH entry, boots in about half the time under TCG) or, if
	// extraction failed, the bzImage.
	Image string
	// ImageNote says why Image is the bzImage; empty for vmlinux.
	ImageNote  string
	ModulesDir string // lib/modules/<Release> with modules.dep
}

// DefaultCacheDir is where kernels are kept between runs:
// $XDG_CACHE_HOME/udpmapsync-vmtest, else /var/cache/udpmapsync-vmtest for
// root, else the user's cache directory.
func DefaultCacheDir() string {
	const name = "udpmapsync-vmtest"
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, name)
	}
	if os.Geteuid() == 0 {
		return filepath.Join("/var/cache", name)
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, name)
	}
	return filepath.Join(os.TempDir(), name)
}

// aptLists is where apt keeps the package lists; its modification time
// changes when apt-get update brings new lists.
const aptLists = "/var/lib/apt/lists"

// ResolveKernelPackage returns the versioned kernel package that
// [MetaPackage] depends on, as apt currently sees it. apt-cache takes one
// to two seconds here (no binary package cache), so the answer is kept in
// cacheDir until apt's package lists change.
func ResolveKernelPackage(cacheDir string) (string, error) {
	stamp := filepath.Join(cacheDir, MetaPackage+".resolved")
	if st, err := os.Stat(stamp); err == nil {
		if lists, err := os.Stat(aptLists); err == nil && st.ModTime().After(lists.ModTime()) {
			if b, err := os.ReadFile(stamp); err == nil && len(bytes.TrimSpace(b)) > 0 {
				return string(bytes.TrimSpace(b)), nil
			}
		}
	}
	out, err := runQuiet("", "apt-cache", "depends", MetaPackage)
	if err != nil {
		return "", fmt.Errorf("resolve kernel package: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: ")
		if ok && strings.HasPrefix(dep, "linux-image-") {
			// Best effort: without the stamp the next run asks apt again.
			if os.MkdirAll(cacheDir, 0o755) == nil {
				tmp := fmt.Sprintf("%s.%d", stamp, os.Getpid())
				if os.WriteFile(tmp, []byte(dep+"\n"), 0o644) == nil {
					os.Rename(tmp, stamp)
				}
			}
			return dep, nil
		}
	}
	return "", fmt.Errorf("resolve kernel package: apt-cache depends %s names no linux-image-*; run apt-get update", MetaPackage)
}

// PrepareKernel returns the kernel of Debian package pkg from cacheDir,
// downloading and unpacking it first if it is not there: apt-get download,
// dpkg -x, vmlinux extracted from the bzImage, depmod for the modules. A
// lock makes concurrent callers (go test runs packages in parallel) wait for
// one preparation; the result appears in the cache atomically.
func PrepareKernel(cacheDir, pkg string, log io.Writer) (*Kernel, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("create cache dir: %w", err)
	}
	unlock, err := lockDir(cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	dir := filepath.Join(cacheDir, pkg)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(log, "vmtest: preparing %s in %s (once; about 70 MB download)\n", pkg, cacheDir)
		if err := unpackKernel(cacheDir, pkg, log); err != nil {
			return nil, err
		}
	}
	return loadKernel(dir, pkg)
}

// lockDir takes an exclusive flock on dir/.lock and returns its release.
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock cache dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock cache dir %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

func unpackKernel(cacheDir, pkg string, log io.Writer) error {
	tmp, err := os.MkdirTemp(cacheDir, "."+pkg+".tmp-")
	if err != nil {
		return fmt.Errorf("prepare %s: %w", pkg, err)
	}
	defer os.RemoveAll(tmp)

	// apt drops privileges to _apt for downloads, which cannot write into a
	// root-owned cache; the download is a signed package either way.
	aptArgs := []string{"download", pkg}
	if os.Geteuid() == 0 {
		aptArgs = append([]string{"-o", "APT::Sandbox::User=root"}, aptArgs...)
	}
	if _, err := runQuiet(tmp, "apt-get", aptArgs...); err != nil {
		return fmt.Errorf("download %s: %w; check the network and apt sources", pkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, pkg+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("download %s: expected one .deb, found %d", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if _, err := runQuiet("", "dpkg", "-x", debs[0], root); err != nil {
		return fmt.Errorf("unpack %s: %w", pkg, err)
	}
	if err := os.Remove(debs[0]); err != nil {
		return fmt.Errorf("unpack %s: %w", pkg, err)
	}
	release, bzImage, err := findBzImage(root)
	if err != nil {
		return fmt.Errorf("unpack %s: %w", pkg, err)
	}
	if err := writeVmlinux(bzImage, filepath.Join(tmp, "vmlinux")); err != nil {
		// Not fatal: the bzImage boots too, only slower.
		fmt.Fprintf(log, "vmtest: %v; booting the compressed bzImage instead\n", err)
		if err := os.WriteFile(filepath.Join(tmp, "vmlinux.failed"), []byte(err.Error()+"\n"), 0o644); err != nil {
			return fmt.Errorf("unpack %s: %w", pkg, err)
		}
	}
	if _, err := runQuiet("", lookTool(toolDepmod), "-b", root, release); err != nil {
		return fmt.Errorf("index modules of %s: %w", pkg, err)
	}
	if err := os.Rename(tmp, filepath.Join(cacheDir, pkg)); err != nil {
		return fmt.Errorf("prepare %s: %w", pkg, err)
	}
	return nil
}

// findBzImage returns the kernel release and path of boot/vmlinuz-<release>.
func findBzImage(root string) (release, path string, err error) {
	images, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(images) != 1 {
		return "", "", fmt.Errorf("expected one boot/vmlinuz-*, found %d", len(images))
	}
	return strings.TrimPrefix(filepath.Base(images[0]), "vmlinuz-"), images[0], nil
}

func writeVmlinux(bzImage, dst string) error {
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	vmlinux, err := extractVmlinux(b)
	if err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", filepath.Base(bzImage), err)
	}
	if err := checkPVH(vmlinux); err != nil {
		return fmt.Errorf("extract vmlinux from %s: %w", filepath.Base(bzImage), err)
	}
	if err := os.WriteFile(dst, vmlinux, 0o644); err != nil {
		return fmt.Errorf("extract vmlinux: %w", err)
	}
	return nil
}

func loadKernel(dir, pkg string) (*Kernel, error) {
	root := filepath.Join(dir, "root")
	release, bzImage, err := findBzImage(root)
	if err != nil {
		return nil, fmt.Errorf("load kernel %s: %w; delete %s to prepare it again", pkg, err, dir)
	}
	k := &Kernel{Package: pkg, Release: release, Image: filepath.Join(dir, "vmlinux")}
	if why, err := os.ReadFile(filepath.Join(dir, "vmlinux.failed")); err == nil {
		k.Image, k.ImageNote = bzImage, strings.TrimSpace(string(why))
	}
	for _, m := range []string{"lib/modules", "usr/lib/modules"} {
		d := filepath.Join(root, m, release)
		if _, err := os.Stat(filepath.Join(d, "modules.dep")); err == nil {
			k.ModulesDir = d
			return k, nil
		}
	}
	return nil, fmt.Errorf("load kernel %s: no modules.dep; delete %s to prepare it again", pkg, dir)
}
