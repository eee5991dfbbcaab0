package vmtest_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/vmtest"
)

// These tests boot real VMs (TCG, several seconds each); the first run also
// downloads Debian's kernel package into the cache.

// requireTools installs what the VM needs, skipping only when that is
// impossible (not root, no apt).
func requireTools(t *testing.T) {
	t.Helper()
	for _, a := range []*vmtest.Arch{vmtest.ArchAMD64, vmtest.ArchARM64} {
		if err := vmtest.EnsureTools(testLog{t}, a); err != nil {
			t.Skipf("cannot boot the test VM: %v", err)
		}
	}
}

// TestProbeInVM runs ./probe through go test -exec vmrun, exactly as the
// Makefile does for real packages, on each architecture and kernel the
// Makefile uses, and checks
// every probe passed rather than skipped: a skip would mean the binary did
// not run in the VM.
func TestProbeInVM(t *testing.T) {
	requireTools(t)
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not in PATH: %v", err)
	}
	vmrun := filepath.Join(t.TempDir(), "vmrun")
	if out, err := exec.Command(goTool, "build", "-o", vmrun, "./cmd/vmrun").CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/vmrun: %v\n%s", err, out)
	}
	for _, vm := range []struct{ arch, suite string }{
		{"amd64", vmtest.SuiteStable},
		{"amd64", vmtest.SuiteBackports},
		// arm64 on 6.12 only: Debian's arm64 6.1 cannot attach fentry.
		{"arm64", vmtest.SuiteBackports},
	} {
		t.Run(vm.arch+"/"+vm.suite, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			cmd := exec.Command(goTool, "test", "-count=1", "-v", "-exec", vmrun+" --suite "+vm.suite, "./probe")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH="+vm.arch)
			out, err := cmd.CombinedOutput()
			t.Logf("go test -exec vmrun ./probe: %v (build, boot and run)", time.Since(start).Round(100*time.Millisecond))
			if err != nil {
				t.Fatalf("go test -exec vmrun ./probe: %v\n%s", err, out)
			}
			for _, name := range []string{"TestDebianKernel", "TestKernelBTF", "TestFentry", "TestVethBridgeInNetns", "TestMounts", "TestTestdata"} {
				if !regexp.MustCompile(`(?m)^--- PASS: ` + name + ` `).Match(out) {
					t.Errorf("%s did not pass in the VM", name)
				}
			}
			if bytes.Contains(out, []byte("--- SKIP")) {
				t.Errorf("probes skipped: they did not run inside the VM\n%s", out)
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

// TestExitStatusAndOutput checks what go test relies on: a failing
// program's exit status comes back, its output arrives without kernel
// noise, and environment and working directory are as asked. /bin/sh is
// the host's dash, dynamically linked, so its libraries must come along.
func TestExitStatusAndOutput(t *testing.T) {
	requireTools(t)
	t.Parallel()
	var out bytes.Buffer
	dir := t.TempDir()
	res, err := vmtest.Run(context.Background(), vmtest.Options{
		Stdout: &out,
		Log:    testLog{t},
		Env:    []string{"GREETING=it's 'quoted'"},
	}, vmtest.Command{
		Path: "/bin/sh",
		Args: []string{"-c", `echo "$GREETING $UDPMAPSYNC_VM $(pwd)"; exit 7`},
		Dir:  dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s (%s): boot %v, total %v", res.Kernel.Release, filepath.Base(res.Kernel.Image),
		res.Boot.Round(100*time.Millisecond), res.Total.Round(100*time.Millisecond))
	if res.ExitCode != 7 {
		t.Errorf("exit status %d, want 7", res.ExitCode)
	}
	if want := "it's 'quoted' 1 " + dir + "\n"; out.String() != want {
		t.Errorf("output %q, want %q", out.String(), want)
	}
	if !strings.HasPrefix(res.Kernel.Release, "6.1.") {
		t.Errorf("kernel release %s, want 6.1.*", res.Kernel.Release)
	}
}

// TestTimeout: Run returns only after qemu exited, so ErrTimeout also
// shows that qemu was killed rather than left running.
func TestTimeout(t *testing.T) {
	requireTools(t)
	t.Parallel()
	_, err := vmtest.Run(context.Background(), vmtest.Options{
		Timeout: 3 * time.Second,
		Stdout:  testLog{t},
		Log:     testLog{t},
	}, vmtest.Command{Path: "/bin/sleep", Args: []string{"600"}})
	if !errors.Is(err, vmtest.ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
}

// testLog sends harness output to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestArchOf builds a program for each architecture and checks that the
// VM would emulate the machine it is built for.
func TestArchOf(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not in PATH: %v", err)
	}
	for _, want := range []*vmtest.Arch{vmtest.ArchAMD64, vmtest.ArchARM64} {
		bin := filepath.Join(t.TempDir(), "vmrun")
		cmd := exec.Command(goTool, "build", "-o", bin, "./cmd/vmrun")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOARCH="+want.Name)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build for %s: %v\n%s", want.Name, err, out)
		}
		if got, err := vmtest.ArchOf(bin); err != nil || got != want {
			t.Errorf("ArchOf(a %s binary) = %v, %v", want.Name, got, err)
		}
	}
	if _, err := vmtest.ArchOf("vm_test.go"); err == nil {
		t.Error("ArchOf(a Go source file): no error")
	}
}

// TestBackportsStayOutOfHostApt resolves the 6.12 kernel and the arm64
// one, each through the harness's own apt configuration, and checks that
// the host's apt still sees neither bookworm-backports nor arm64: nothing
// on the host can be installed or upgraded from them.
func TestBackportsStayOutOfHostApt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: apt's archive cache")
	}
	cache := t.TempDir()
	for _, a := range []*vmtest.Arch{vmtest.ArchAMD64, vmtest.ArchARM64} {
		pkg, err := vmtest.ResolveKernelPackage(cache, vmtest.SuiteBackports, a)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(pkg, "linux-image-6.12.") || !strings.HasSuffix(pkg, "-"+a.Name) {
			t.Errorf("%s kernel from %s: %s, want linux-image-6.12.*-%s", a.Name, vmtest.SuiteBackports, pkg, a.Name)
		}
	}
	out, err := exec.Command("apt-cache", "policy").CombinedOutput()
	if err != nil {
		t.Fatalf("apt-cache policy: %v\n%s", err, out)
	}
	if bytes.Contains(out, []byte("backports")) || bytes.Contains(out, []byte("arm64")) {
		t.Errorf("the host's apt sees the harness's sources:\n%s", out)
	}
}
