package vmtest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// A program vmtest runs on the host or copies into the VM, and the Debian
// package that provides it.
type hostTool struct {
	name string
	pkg  string
}

var (
	toolBusybox = hostTool{"busybox", "busybox-static"}
	toolDepmod  = hostTool{"depmod", "kmod"}
	toolIP      = hostTool{"ip", "iproute2"}
	toolNsenter = hostTool{"nsenter", "util-linux"}
	toolXz      = hostTool{"xz", "xz-utils"}
	toolBpftool = hostTool{"bpftool", "bpftool"}
)

// requiredTools are installed with apt when missing, with the VM's qemu;
// bpftool is copied in only when present.
var requiredTools = []hostTool{toolBusybox, toolDepmod, toolIP, toolNsenter, toolXz}

// toolDirs is where tools are looked for: PATH may lack the sbin
// directories (non-login shells, go test's environment).
var toolDirs = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// ErrMissingTools is wrapped by [EnsureTools] when a required package is
// missing and cannot be installed.
var ErrMissingTools = errors.New("missing host packages")

// lookTool returns the absolute path of a tool, or "" if it is not installed.
func lookTool(t hostTool) string {
	for _, dir := range toolDirs {
		p := filepath.Join(dir, t.name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// EnsureTools installs the Debian packages the harness needs for a VM of
// arch (qemu-system-x86 or qemu-system-arm, busybox-static, kmod,
// iproute2, util-linux, xz-utils) with apt-get when some are missing,
// telling log what it installs. Without root it only names the command to
// run.
func EnsureTools(log io.Writer, arch *Arch) error {
	tools := append([]hostTool{arch.qemu}, requiredTools...)
	var missing []string
	for _, t := range tools {
		if lookTool(t) == "" {
			missing = append(missing, t.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fix := "apt-get install -y " + strings.Join(missing, " ")
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: %s; install them as root: %s", ErrMissingTools, strings.Join(missing, ", "), fix)
	}
	fmt.Fprintf(log, "vmtest: installing missing Debian packages: %s\n", strings.Join(missing, " "))
	install := func() error {
		args := append([]string{"install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300"}, missing...)
		return runLogged(log, "apt-get", args...)
	}
	if err := install(); err != nil {
		// Stale package lists are the usual cause; refresh once.
		if err := runLogged(log, "apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=300"); err != nil {
			return fmt.Errorf("%w: apt-get update: %v; run: %s", ErrMissingTools, err, fix)
		}
		if err := install(); err != nil {
			return fmt.Errorf("%w: %v; run: %s", ErrMissingTools, err, fix)
		}
	}
	for _, t := range tools {
		if lookTool(t) == "" {
			return fmt.Errorf("%w: %s still not found after installing %s", ErrMissingTools, t.name, t.pkg)
		}
	}
	return nil
}

// runLogged runs a host command with its output sent to log, for the slow
// steps a user should see progress of.
func runLogged(log io.Writer, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

// runQuiet runs a host command in dir and returns its standard output; its
// error output is kept for the error only, so apt's chatter stays out of
// test logs.
func runQuiet(dir, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
