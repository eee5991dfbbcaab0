// Command vmrun runs a program inside a qemu VM booted with Debian's 6.1
// kernel (or, with --suite bookworm-backports, its 6.12 LTS kernel) and exits with the program's exit status. It is made to be go
// test's -exec program, for tests that need a kernel feature this host
// refuses (fentry/fexit):
//
//	CGO_ENABLED=0 go test -exec "$PWD/bin/vmrun" ./loader
//
// go test runs "vmrun /tmp/go-build.../loader.test -test.v=true ..." in the
// package directory; vmrun copies the binary and the package's testdata into
// the VM and runs it there with the same arguments and working directory.
// Flags for vmrun itself come before the program:
//
//	vmrun [flags] program [args...]
//
// Exit status: the program's, or 124 when the VM timed out, or 125 when the
// harness failed (no kernel, no qemu, the guest crashed).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/udpmapsync/udpmapsync/vmtest"
)

// Exit statuses of the harness itself, as timeout(1) uses them.
const (
	exitTimeout = 124
	exitHarness = 125
)

// timeoutMargin is added to a go test binary's -test.timeout for the VM's
// limit: it covers the boot, so the test binary's own timeout panic (with
// every goroutine's stack) reaches the output before qemu is killed, and it
// is below the minute go test waits before killing vmrun.
const timeoutMargin = 30 * time.Second

// envCacheDir overrides the kernel cache location like --cache-dir, for
// callers that cannot add flags (go test -exec in a Makefile can).
const envCacheDir = "UDPMAPSYNC_VMTEST_CACHE"

func main() {
	var f vmtest.Options
	fs := pflag.NewFlagSet("vmrun", pflag.ContinueOnError)
	// Everything after the program belongs to it (go test passes -test.*).
	fs.SetInterspersed(false)
	fs.StringVar(&f.CacheDir, "cache-dir", os.Getenv(envCacheDir), "kernel cache (env "+envCacheDir+"; default "+vmtest.DefaultCacheDir()+")")
	fs.StringVar(&f.Suite, "suite", vmtest.SuiteStable, "Debian archive suite of the kernel: "+vmtest.SuiteStable+" (6.1) or "+vmtest.SuiteBackports+" (6.12 LTS, through an apt configuration of vmrun's own)")
	fs.StringVar(&f.KernelPackage, "kernel-package", "", "Debian kernel package to boot (default: the one linux-image-ARCH depends on in --suite)")
	fs.StringVar(&f.Accel, "accel", "tcg", "qemu accelerator; kvm does not boot stock kernels on this host's PVM-backed /dev/kvm")
	fs.IntVar(&f.CPUs, "cpus", 0, "virtual CPUs (default 2; 1 for "+vmtest.SuiteBackports+", whose kernel panics now and then under TCG with 2)")
	fs.IntVar(&f.MemoryMB, "memory", 1024, "guest memory in MiB")
	fs.DurationVar(&f.Timeout, "timeout", 10*time.Minute, "limit for boot and run, after which qemu is killed (default for a go test binary: its -test.timeout + 30s)")
	var modules []string
	fs.StringSliceVar(&modules, "modules", nil, "kernel modules to load besides "+strings.Join(vmtest.DefaultModules, ",")+" (dependencies come along)")
	fs.StringArrayVar(&f.Env, "env", nil, "NAME=VALUE for the program (repeatable)")
	fs.StringArrayVar(&f.Files, "file", nil, "absolute path of a host executable the program runs, copied in at the same path with its libraries (repeatable)")
	fs.BoolVarP(&f.Verbose, "verbose", "v", false, "show the boot log, kernel messages and timings on stderr")
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: vmrun [flags] program [args...]\n\n%s", fs.FlagUsages())
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		os.Exit(2)
	}
	f.Modules = append(append([]string(nil), vmtest.DefaultModules...), modules...)
	if !fs.Changed("timeout") {
		if d, ok := goTestTimeout(fs.Args()[1:]); ok {
			f.Timeout = d + timeoutMargin
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmrun: %v\n", err)
		os.Exit(exitHarness)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, f, vmtest.Command{Path: fs.Arg(0), Args: fs.Args()[1:], Dir: wd}))
}

func run(ctx context.Context, f vmtest.Options, cmd vmtest.Command) int {
	res, err := vmtest.Run(ctx, f, cmd)
	switch {
	case errors.Is(err, vmtest.ErrTimeout):
		fmt.Fprintf(os.Stderr, "vmrun: %v\n", err)
		return exitTimeout
	case err != nil:
		fmt.Fprintf(os.Stderr, "vmrun: %v\n", err)
		return exitHarness
	}
	if f.Verbose {
		fmt.Fprintf(os.Stderr, "vmrun: %s %s (%s), boot %.1fs, total %.1fs, exit %d\n",
			res.Kernel.Release, filepath.Base(res.Kernel.Image), f.Accel, res.Boot.Seconds(), res.Total.Seconds(), res.ExitCode)
	}
	return res.ExitCode
}

// goTestTimeout returns the -test.timeout go test passed to the binary.
func goTestTimeout(args []string) (time.Duration, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "-test.timeout="); ok {
			d, err := time.ParseDuration(v)
			return d, err == nil && d > 0
		}
	}
	return 0, false
}
