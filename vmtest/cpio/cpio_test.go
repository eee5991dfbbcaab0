package cpio

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The archive is checked by an independent reader: busybox's cpio, the same
// implementation family the initramfs tools use. The kernel's own unpacker is
// exercised by the VM tests in the parent package.
func TestBusyboxExtracts(t *testing.T) {
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed (apt-get install busybox-static)")
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must(t, w.Dir("etc", 0o755))
	must(t, w.File("etc/odd-length", 0o640, 5, strings.NewReader("hello")))
	must(t, w.File("etc/empty", 0o600, 0, nil))
	must(t, w.Dir("/bin", 0o700))
	must(t, w.Symlink("bin/sh", "../etc/odd-length"))
	must(t, w.CharDevice("console", 0o600, 5, 1))
	must(t, w.Close())
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", buf.Len())
	}

	dir := t.TempDir()
	cmd := exec.Command(busybox, "cpio", "-i", "-d", "-m")
	cmd.Dir = dir
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("busybox cpio -i: %v\n%s", err, out)
	}

	checkFile(t, filepath.Join(dir, "etc/odd-length"), "hello", 0o640)
	checkFile(t, filepath.Join(dir, "etc/empty"), "", 0o600)
	if fi, err := os.Stat(filepath.Join(dir, "bin")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("bin: got %v, %v; want a directory with mode 0700", fi, err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || target != "../etc/odd-length" {
		t.Errorf("bin/sh: got link to %q, %v; want ../etc/odd-length", target, err)
	}
	fi, err := os.Lstat(filepath.Join(dir, "console"))
	if err != nil {
		t.Fatalf("console: %v", err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeCharDevice == 0 || st.Rdev>>8 != 5 || st.Rdev&0xff != 1 {
		t.Errorf("console: got mode %v rdev %#x; want character device 5:1", fi.Mode(), st.Rdev)
	}
}

func TestFileShortReader(t *testing.T) {
	w := NewWriter(io.Discard)
	err := w.File("short", 0o644, 10, strings.NewReader("abc"))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("File with 3 of 10 bytes: got %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestClosed(t *testing.T) {
	w := NewWriter(io.Discard)
	must(t, w.Close())
	if err := w.Dir("late", 0o755); !errors.Is(err, ErrClosed) {
		t.Errorf("Dir after Close: got %v, want ErrClosed", err)
	}
}

func checkFile(t *testing.T, path, content string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	if string(b) != content {
		t.Errorf("%s: got %q, want %q", path, b, content)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != perm {
		t.Errorf("%s: got mode %v (%v), want %v", path, fi.Mode().Perm(), err, perm)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
