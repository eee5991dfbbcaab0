// Package vmtest runs a program, typically a Go test binary, inside a qemu
// VM booted with Debian's own 6.1 kernel, for the tests this host's kernel
// cannot run (it refuses fentry/fexit programs; Debian's kernel allows them).
//
// The VM is TCG-emulated (this host's /dev/kvm only runs PVM guests), boots
// the uncompressed vmlinux through its PVH entry, and has no disk: its root
// file system is an initramfs holding busybox, iproute2's ip, nsenter,
// bpftool if installed, the kernel modules network-namespace tests need
// (veth, bridge) and the program. The program's output is streamed from the
// serial console and its exit status comes back as [Run]'s result.
//
// Inside the VM the environment variable UDPMAPSYNC_VM is "1", the working
// directory has the host's path with its testdata directory copied in, and
// bpffs, debugfs, tracefs and cgroup2 are mounted. Call iproute2 as
// /usr/sbin/ip: busybox's shell prefers its own, smaller applet.
package vmtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"time"
)

// EnvVM is set to "1" for the program run inside the VM, so tests can tell
// where they are.
const EnvVM = "UDPMAPSYNC_VM"

// EnvSuite is set to the archive suite of the VM's kernel ([SuiteStable]
// or [SuiteBackports]) for the program run inside the VM, so that a test
// knows which kernel it was meant to run on.
const EnvSuite = "UDPMAPSYNC_VM_SUITE"

// ErrTimeout is returned by [Run] when the VM did not finish in time.
var ErrTimeout = errors.New("vm timed out")

// Options configure one VM. The zero value is usable: defaults are filled in
// by [Run].
type Options struct {
	CacheDir      string        // kernel cache; default [DefaultCacheDir]
	Arch          *Arch         // the machine; default: the one the program is built for
	Suite         string        // the archive suite of the kernel: [SuiteStable] (default) or [SuiteBackports]
	KernelPackage string        // e.g. linux-image-6.1.0-56-amd64; default: what [Arch.MetaPackage] depends on in Suite
	Accel         string        // qemu accelerator; default "tcg" (see package doc)
	CPUs          int           // default 2 (1 for [SuiteBackports]: see fillDefaults)
	MemoryMB      int           // default 1024
	Timeout       time.Duration // whole run including boot; default 10 minutes
	Modules       []string      // kernel modules to load; nil means [DefaultModules]
	Env           []string      // KEY=VALUE pairs for the program, besides UDPMAPSYNC_VM=1
	Files         []string      // host executables the program runs, copied in (with their libraries) at the same absolute path
	Verbose       bool          // show the boot log and kernel messages on Log
	Stdout        io.Writer     // the program's output (stdout and stderr merged); default os.Stdout
	Log           io.Writer     // harness progress and diagnostics; default os.Stderr
}

// Command is the program to run in the VM.
type Command struct {
	Path string   // host executable, copied in (with its libraries if dynamic)
	Args []string // arguments after the program name
	// Dir is the working directory, created in the VM at the same path; a
	// testdata directory in it on the host is copied in, as go test runs a
	// test binary in its package directory.
	Dir string
}

// Result describes a finished run.
type Result struct {
	ExitCode int           // the program's exit status; 128+n if signal n killed it
	Kernel   *Kernel       // the kernel the VM booted
	Boot     time.Duration // qemu start to the first line of /init
	Total    time.Duration // qemu start to the exit status
}

// Run boots a VM, runs cmd in it and returns its exit status. The error is
// non-nil only when the harness failed: missing host tools, no kernel,
// [ErrTimeout], or a guest that stopped without reporting a status.
func Run(ctx context.Context, opts Options, cmd Command) (*Result, error) {
	opts.fillDefaults()
	if opts.Arch == nil {
		prog, err := exec.LookPath(cmd.Path)
		if err != nil {
			return nil, fmt.Errorf("program %s: %w", cmd.Path, err)
		}
		if opts.Arch, err = ArchOf(prog); err != nil {
			return nil, err
		}
	}
	if err := EnsureTools(opts.Log, opts.Arch); err != nil {
		return nil, err
	}
	pkg := opts.KernelPackage
	if pkg == "" {
		var err error
		if pkg, err = ResolveKernelPackage(opts.CacheDir, opts.Suite, opts.Arch); err != nil {
			return nil, err
		}
	}
	k, err := PrepareKernel(opts.CacheDir, opts.Suite, opts.Arch, pkg, opts.Log)
	if err != nil {
		return nil, err
	}
	if k.ImageNote != "" && opts.Verbose {
		fmt.Fprintf(opts.Log, "vmtest: booting the bzImage: %s\n", k.ImageNote)
	}
	mark, err := newMark()
	if err != nil {
		return nil, err
	}
	initrd, err := os.CreateTemp("", "udpmapsync-vmtest-*.cpio")
	if err != nil {
		return nil, fmt.Errorf("create initramfs: %w", err)
	}
	defer os.Remove(initrd.Name())
	err = writeInitramfs(initrd, k, &opts, cmd, mark)
	if cerr := initrd.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	res, err := boot(ctx, &opts, k, initrd.Name(), mark)
	if res != nil {
		res.Kernel = k
	}
	return res, err
}

func (o *Options) fillDefaults() {
	if o.CacheDir == "" {
		o.CacheDir = DefaultCacheDir()
	}
	if o.Suite == "" {
		o.Suite = SuiteStable
	}
	if o.Accel == "" {
		o.Accel = "tcg"
	}
	if o.CPUs == 0 {
		o.CPUs = 2
		if o.Suite == SuiteBackports {
			// With two vCPUs, TCG now and then runs a stale int3 that the
			// 6.12 kernel's code patching (text_poke_bp, attaching
			// tp_btf/sys_exit) had already replaced, and the guest panics
			// ("Oops: int3" in syscall_exit_to_user_mode_prepare): 2 of 4
			// runs of the loader's capture tests. One vCPU: 0 of 6.
			o.CPUs = 1
		}
	}
	if o.MemoryMB == 0 {
		o.MemoryMB = 1024
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Minute
	}
	if o.Modules == nil {
		o.Modules = DefaultModules
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
}

// newMark returns the prefix of the lines /init prints around the command.
// It is random so that program output cannot fake an exit status.
func newMark() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("create exit marker: %w", err)
	}
	return "udpmapsync-vmtest-" + hex.EncodeToString(b), nil
}
