package vmtest

import (
	_ "embed"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
)

// initScript is /init; it reads what writeInitramfs generates.
//
//go:embed init.sh
var initScript []byte

// Where things go inside the VM.
const (
	vmProgramDir = "/vmtest/bin"
	vmBusybox    = "/bin/busybox"
)

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func writeInitramfs(w io.Writer, k *Kernel, opts *Options, cmd Command, mark string) error {
	f := newInitramfs()
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc"} {
		f.addDir(d)
	}
	f.add("/dev/console", entry{kind: entryCharDevice, perm: 0o600, major: 5, minor: 1})
	f.addSymlink("/var/run", "../run")
	f.addData("/init", initScript, 0o755)
	// Go's net package and ip netns read these; empty files are enough.
	f.addData("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	f.addData("/etc/group", []byte("root:x:0:\n"), 0o644)

	// Real tools first, so busybox applets do not shadow them. A VM of
	// another architecture than the host's takes its busybox and bpftool
	// from Debian's packages for it, and busybox's ip and nsenter.
	if opts.Arch.foreign() {
		root, err := guestRoot(opts.CacheDir, opts.Arch)
		if err != nil {
			return err
		}
		for _, p := range []string{"/usr/sbin/bpftool", vmBusybox} {
			if err := f.addGuestProgram(opts.Arch, root, p); err != nil {
				return err
			}
		}
	} else {
		for _, t := range []hostTool{toolIP, toolNsenter, toolBpftool} {
			if p := lookTool(t); p != "" {
				if err := f.addProgram(p, p); err != nil {
					return err
				}
			}
		}
		if err := f.addProgram(vmBusybox, lookTool(toolBusybox)); err != nil {
			return err
		}
	}
	if err := addBusyboxApplets(f); err != nil {
		return err
	}

	mods, err := moduleLoadOrder(k.ModulesDir, opts.Modules)
	if err != nil {
		return err
	}
	vmModules := path.Join("/lib/modules", k.Release)
	var insmod []string
	for _, m := range mods {
		dst := path.Join(vmModules, m)
		if err := f.addHostFile(dst, filepath.Join(k.ModulesDir, m)); err != nil {
			return err
		}
		insmod = append(insmod, dst)
	}
	// modules.dep too, so a test may modprobe what it loaded already.
	for _, idx := range []string{"modules.dep", "modules.builtin"} {
		if err := f.addHostFile(path.Join(vmModules, idx), filepath.Join(k.ModulesDir, idx)); err != nil {
			return err
		}
	}

	for _, file := range opts.Files {
		if !filepath.IsAbs(file) {
			return fmt.Errorf("file %s: want an absolute path (it is the path in the VM too)", file)
		}
		if err := f.addProgram(file, file); err != nil {
			return err
		}
	}

	prog, err := exec.LookPath(cmd.Path)
	if err != nil {
		return fmt.Errorf("program %s: %w", cmd.Path, err)
	}
	vmProg := path.Join(vmProgramDir, filepath.Base(prog))
	if err := f.addProgram(vmProg, prog); err != nil {
		return err
	}
	run, err := runScript(f, append([]string{EnvSuite + "=" + opts.Suite}, opts.Env...), cmd, vmProg)
	if err != nil {
		return err
	}
	f.addData("/vmtest/run", run, 0o755)
	config := fmt.Sprintf("VMTEST_MARK=%s\nVMTEST_MODULES=%s\nVMTEST_VERBOSE=%t\n",
		shellQuote(mark), shellQuote(strings.Join(insmod, " ")), opts.Verbose)
	f.addData("/vmtest/config", []byte(config), 0o644)
	if err := f.writeTo(w); err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	return nil
}

// addBusyboxApplets adds a link to busybox for each applet that no real
// tool already provides.
func addBusyboxApplets(f *initramfs) error {
	// The host's busybox-static is the same Debian package as the guest's,
	// whatever its architecture: it lists the same applets.
	out, err := runQuiet("", lookTool(toolBusybox), "--list-full")
	if err != nil {
		return fmt.Errorf("list busybox applets: %w", err)
	}
	provided := map[string]bool{}
	for p, e := range f.entries {
		if e.kind == entryHostFile {
			provided[path.Base(p)] = true
		}
	}
	for _, applet := range strings.Fields(string(out)) {
		p := "/" + applet
		if !provided[path.Base(p)] && !f.has(p) {
			f.addSymlink(p, vmBusybox)
		}
	}
	return nil
}

// runScript returns /vmtest/run: environment, working directory (with
// testdata) and the command line, every word single-quoted.
func runScript(f *initramfs, env []string, cmd Command, vmProg string) ([]byte, error) {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	for _, kv := range append([]string{EnvVM + "=1"}, env...) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !envName.MatchString(k) {
			return nil, fmt.Errorf("environment %q: want NAME=VALUE", kv)
		}
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
	}
	dir := cmd.Dir
	if dir == "" {
		dir = "/"
	}
	f.addDir(dir)
	if fi, err := os.Stat(filepath.Join(dir, "testdata")); err == nil && fi.IsDir() {
		if err := f.addTree(path.Join(dir, "testdata"), filepath.Join(dir, "testdata")); err != nil {
			return nil, err
		}
	}
	// go test passes output paths on the host (-test.testlogfile=...,
	// -test.gocoverdir=...); create them so the binary does not fail.
	// What is written there stays in the VM.
	for _, a := range cmd.Args {
		name, val, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ok || !strings.HasPrefix(name, "test.") || !path.IsAbs(val) {
			continue
		}
		if strings.HasSuffix(name, "dir") {
			fmt.Fprintf(&b, "mkdir -p %s\n", shellQuote(val))
		} else {
			fmt.Fprintf(&b, "mkdir -p %s\n", shellQuote(path.Dir(val)))
		}
	}
	fmt.Fprintf(&b, "cd %s || exit 125\nexec %s", shellQuote(dir), shellQuote(vmProg))
	for _, a := range cmd.Args {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return []byte(b.String()), nil
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
