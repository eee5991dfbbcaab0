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
	"time"
)

// Suites of Debian's archive a kernel can come from.
const (
	// SuiteStable is bookworm itself, which the host's own apt sources
	// carry: Debian 12's 6.1 kernel.
	SuiteStable = "bookworm"
	// SuiteBackports is bookworm-backports: Debian's current LTS kernel
	// (6.12) built for bookworm. The host's apt sources do not name it,
	// and the harness does not add it there: it keeps an apt
	// configuration of its own for it in the cache (see [aptOptions]), so
	// nothing on the host is ever installed or upgraded from it.
	SuiteBackports = "bookworm-backports"
)

// debianArchive and debianSecurity are where the harness's own apt
// configurations find their suites: the Debian archive the host's sources
// use.
const (
	debianArchive  = "http://deb.debian.org/debian"
	debianSecurity = "http://deb.debian.org/debian-security"
)

// aptListsMaxAge is how old the harness's own package lists may get before
// they are fetched again: a newer kernel may have replaced the one they
// name.
const aptListsMaxAge = 24 * time.Hour

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

// aptLists is where the host's apt keeps the package lists; its
// modification time changes when apt-get update brings new lists.
const aptLists = "/var/lib/apt/lists"

// aptOptions returns the options that make apt-get and apt-cache see
// suite for arch, and the directory of the package lists they then read.
// For [SuiteStable] of the host's architecture, none: the host's sources
// carry it. Otherwise a configuration of the harness's own in
// cacheDir/apt-SUITE[-ARCH]: a sources list naming that suite alone
// (bookworm with its updates and security fixes, as the host's sources
// have it), the architecture, and package lists and an archive cache of its
// own. Only the harness's own apt-cache and apt-get download calls pass
// these options, so the host's apt never consults the suite nor the
// architecture. The lists are fetched when missing or older than
// [aptListsMaxAge].
func aptOptions(cacheDir, suite string, arch *Arch) (opts []string, lists string, err error) {
	if suite == SuiteStable && !arch.foreign() {
		return nil, aptLists, nil
	}
	name := "apt-" + suite
	if arch.foreign() {
		name += "-" + arch.Name
	}
	dir := filepath.Join(cacheDir, name)
	lists = filepath.Join(dir, "lists")
	for _, d := range []string{filepath.Join(lists, "partial"), filepath.Join(dir, "cache", "archives", "partial")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, "", fmt.Errorf("apt configuration for %s: %w", suite, err)
		}
	}
	sources := filepath.Join(dir, "sources.list")
	const signed = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
	lines := signed + debianArchive + " " + suite + " main\n"
	if suite == SuiteStable {
		lines = signed + debianArchive + " " + suite + " " + suite + "-updates main\n" +
			signed + debianSecurity + " " + suite + "-security main\n"
	}
	if err := os.WriteFile(sources, []byte(lines), 0o644); err != nil {
		return nil, "", fmt.Errorf("apt configuration for %s: %w", suite, err)
	}
	opts = []string{
		"-o", "Dir::Etc::SourceList=" + sources,
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(dir, "sources.list.d"), // none: only the line above
		"-o", "Dir::State::Lists=" + lists,
		"-o", "Dir::Cache=" + filepath.Join(dir, "cache"),
		"-o", "APT::Architecture=" + arch.Name,
		"-o", "APT::Architectures::=" + arch.Name,
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, "", err
	}
	defer unlock()
	if st, err := os.Stat(filepath.Join(lists, "lock")); err == nil && time.Since(st.ModTime()) < aptListsMaxAge {
		if fetched, _ := filepath.Glob(filepath.Join(lists, "*_Packages")); len(fetched) > 0 {
			return opts, lists, nil
		}
	}
	if _, err := runQuiet("", "apt-get", append(sandboxOptions(), append(opts, "update")...)...); err != nil {
		return nil, "", fmt.Errorf("fetch the package lists of %s: %w; check the network", suite, err)
	}
	// apt-get update touches lists/lock; its time says when they were fetched.
	now := time.Now()
	os.Chtimes(filepath.Join(lists, "lock"), now, now)
	return opts, lists, nil
}

// sandboxOptions keeps apt from dropping privileges to _apt, which cannot
// write into a root-owned cache; what it fetches is signed either way.
func sandboxOptions() []string {
	if os.Geteuid() == 0 {
		return []string{"-o", "APT::Sandbox::User=root"}
	}
	return nil
}

// ResolveKernelPackage returns the versioned kernel package that arch's
// [Arch.MetaPackage] depends on in suite ([SuiteStable] or [SuiteBackports]), as
// apt currently sees it. apt-cache takes one to two seconds here (no
// binary package cache), so the answer is kept in cacheDir until the
// package lists change.
func ResolveKernelPackage(cacheDir, suite string, arch *Arch) (string, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("create cache dir: %w", err)
	}
	opts, lists, err := aptOptions(cacheDir, suite, arch)
	if err != nil {
		return "", err
	}
	meta := arch.MetaPackage()
	name := meta
	if suite != SuiteStable {
		name += "@" + suite
	}
	stamp := filepath.Join(cacheDir, name+".resolved")
	if st, err := os.Stat(stamp); err == nil {
		if l, err := os.Stat(lists); err == nil && st.ModTime().After(l.ModTime()) {
			if b, err := os.ReadFile(stamp); err == nil && len(bytes.TrimSpace(b)) > 0 {
				return string(bytes.TrimSpace(b)), nil
			}
		}
	}
	out, err := runQuiet("", "apt-cache", append(opts, "depends", meta)...)
	if err != nil {
		return "", fmt.Errorf("resolve kernel package: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: ")
		if ok && strings.HasPrefix(dep, "linux-image-") {
			// Best effort: without the stamp the next run asks apt again.
			tmp := fmt.Sprintf("%s.%d", stamp, os.Getpid())
			if os.WriteFile(tmp, []byte(dep+"\n"), 0o644) == nil {
				os.Rename(tmp, stamp)
			}
			return dep, nil
		}
	}
	return "", fmt.Errorf("resolve kernel package: apt-cache depends %s in %s names no linux-image-*; run apt-get update", meta, suite)
}

// PrepareKernel returns the kernel of Debian package pkg of suite from
// cacheDir, downloading and unpacking it first if it is not there: apt-get download,
// dpkg -x, vmlinux extracted from the bzImage, depmod for the modules. A
// lock makes concurrent callers (go test runs packages in parallel) wait for
// one preparation; the result appears in the cache atomically.
func PrepareKernel(cacheDir, suite string, arch *Arch, pkg string, log io.Writer) (*Kernel, error) {
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
		if err := unpackKernel(cacheDir, suite, arch, pkg, log); err != nil {
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

func unpackKernel(cacheDir, suite string, arch *Arch, pkg string, log io.Writer) error {
	tmp, err := os.MkdirTemp(cacheDir, "."+pkg+".tmp-")
	if err != nil {
		return fmt.Errorf("prepare %s: %w", pkg, err)
	}
	defer os.RemoveAll(tmp)

	opts, _, err := aptOptions(cacheDir, suite, arch)
	if err != nil {
		return err
	}
	aptArgs := append(append(sandboxOptions(), opts...), "download", pkg)
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
	// amd64's vmlinuz is a compressed bzImage with the ELF vmlinux
	// inside; arm64's is an uncompressed Image, which qemu boots as it is.
	if arch == ArchAMD64 {
		if err := writeVmlinux(bzImage, filepath.Join(tmp, "vmlinux")); err != nil {
			// Not fatal: the bzImage boots too, only slower.
			fmt.Fprintf(log, "vmtest: %v; booting the compressed bzImage instead\n", err)
			if err := os.WriteFile(filepath.Join(tmp, "vmlinux.failed"), []byte(err.Error()+"\n"), 0o644); err != nil {
				return fmt.Errorf("unpack %s: %w", pkg, err)
			}
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
	} else if _, err := os.Stat(k.Image); err != nil {
		k.Image = bzImage
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
