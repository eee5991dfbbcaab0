package vmtest

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/udpmapsync/udpmapsync/vmtest/cpio"
)

// initramfs collects the files of the VM's root file system before writing
// them as one cpio archive. Host files are read only when it is written.
type initramfs struct {
	entries map[string]entry
}

type entry struct {
	kind   entryKind
	perm   fs.FileMode
	src    string // entryHostFile: path on the host
	data   []byte // entryData
	target string // entrySymlink
	major  uint32 // entryCharDevice
	minor  uint32
}

type entryKind int

const (
	entryDir entryKind = iota
	entryHostFile
	entryData
	entrySymlink
	entryCharDevice
)

func newInitramfs() *initramfs {
	return &initramfs{entries: map[string]entry{}}
}

// add records e at the clean absolute path p, replacing what was there.
// The root directory is the archive itself, not an entry.
func (f *initramfs) add(p string, e entry) {
	if p = path.Clean("/" + p); p != "/" {
		f.entries[p] = e
	}
}

func (f *initramfs) has(p string) bool {
	_, ok := f.entries[path.Clean("/"+p)]
	return ok
}

func (f *initramfs) addDir(p string) { f.add(p, entry{kind: entryDir, perm: 0o755}) }

func (f *initramfs) addData(p string, data []byte, perm fs.FileMode) {
	f.add(p, entry{kind: entryData, data: data, perm: perm})
}

func (f *initramfs) addSymlink(p, target string) { f.add(p, entry{kind: entrySymlink, target: target}) }

// addHostFile copies the host file src (symlinks followed) to p.
func (f *initramfs) addHostFile(p, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("add %s: %w", src, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("add %s: not a regular file", src)
	}
	f.add(p, entry{kind: entryHostFile, src: src, perm: fi.Mode().Perm()})
	return nil
}

// addProgram copies the host executable src to p and, if it is dynamically
// linked, its shared libraries and loader at their host paths, as ldd
// resolves them.
func (f *initramfs) addProgram(p, src string) error {
	if err := f.addHostFile(p, src); err != nil {
		return err
	}
	dynamic, err := isDynamic(src)
	if err != nil || !dynamic {
		return err
	}
	out, err := runQuiet("", "ldd", src)
	if err != nil {
		return fmt.Errorf("add %s: %w", src, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no path.
		line := strings.TrimSpace(sc.Text())
		if _, after, ok := strings.Cut(line, "=> "); ok {
			line = after
		}
		lib, _, _ := strings.Cut(line, " ")
		if !strings.HasPrefix(lib, "/") {
			if strings.Contains(line, "not found") {
				return fmt.Errorf("add %s: ldd: %s", src, line)
			}
			continue
		}
		if err := f.addHostFile(lib, lib); err != nil {
			return err
		}
	}
	return nil
}

func isDynamic(file string) (bool, error) {
	e, err := elf.Open(file)
	if err != nil {
		return false, fmt.Errorf("add %s: %w", file, err)
	}
	defer e.Close()
	for _, p := range e.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}

// addTree copies the host directory src recursively to p; symlinks inside
// are kept as links.
func (f *initramfs) addTree(p, src string) error {
	return filepath.WalkDir(src, func(hostPath string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("add %s: %w", src, err)
		}
		rel, err := filepath.Rel(src, hostPath)
		if err != nil {
			return err
		}
		dst := path.Join(p, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			f.addDir(dst)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(hostPath)
			if err != nil {
				return fmt.Errorf("add %s: %w", hostPath, err)
			}
			f.addSymlink(dst, target)
		case d.Type().IsRegular():
			return f.addHostFile(dst, hostPath)
		}
		return nil
	})
}

// writeTo writes the archive. Parent directories are added where missing
// and sorted paths put every directory before its contents, as the kernel
// requires.
func (f *initramfs) writeTo(w io.Writer) error {
	for p := range f.entries {
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if !f.has(d) {
				f.addDir(d)
			}
		}
	}
	paths := make([]string, 0, len(f.entries))
	for p := range f.entries {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	cw := cpio.NewWriter(w)
	for _, p := range paths {
		if err := f.writeEntry(cw, p, f.entries[p]); err != nil {
			return err
		}
	}
	return cw.Close()
}

func (f *initramfs) writeEntry(cw *cpio.Writer, p string, e entry) error {
	switch e.kind {
	case entryDir:
		return cw.Dir(p, e.perm)
	case entryData:
		return cw.File(p, e.perm, int64(len(e.data)), bytes.NewReader(e.data))
	case entrySymlink:
		return cw.Symlink(p, e.target)
	case entryCharDevice:
		return cw.CharDevice(p, e.perm, e.major, e.minor)
	}
	src, err := os.Open(e.src)
	if err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	defer src.Close()
	fi, err := src.Stat()
	if err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	return cw.File(p, e.perm, fi.Size(), src)
}
