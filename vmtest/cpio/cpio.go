// Package cpio writes cpio archives in the "newc" format, the only format
// the Linux kernel unpacks as an initramfs. archive/tar cannot be used for
// that, and the format is small enough to write by hand.
package cpio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// newc layout: a 110-byte ASCII header (magic and 13 fields of 8 hex
// digits), the NUL-terminated name, padding to 4 bytes, the data, padding
// to 4 bytes. See the kernel's Documentation/driver-api/early-userspace/buffer-format.rst.
const (
	magic      = "070701"
	headerSize = 110
	align      = 4
	trailer    = "TRAILER!!!"
)

// Mode bits of the file types the kernel's initramfs unpacker understands,
// as stored in the header's mode field.
const (
	typeDir     = 0o040000
	typeRegular = 0o100000
	typeSymlink = 0o120000
	typeChar    = 0o020000
	typeMask    = 0o170000
)

// ErrClosed is returned by every write after [Writer.Close].
var ErrClosed = errors.New("cpio: writer closed")

// Writer writes one newc archive. Entries are written in call order; the
// kernel does not create missing parent directories, so callers add a
// directory before anything inside it. All entries are owned by root and
// carry mtime 0, so the same input gives the same bytes.
type Writer struct {
	w      io.Writer
	ino    uint32
	closed bool
}

// NewWriter returns a [Writer] appending an archive to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w}
}

// Dir adds a directory.
func (w *Writer) Dir(name string, perm fs.FileMode) error {
	return w.entry(name, typeDir|uint32(perm.Perm()), 0, 0, 0, nil)
}

// File adds a regular file of size bytes read from r. It fails if r does
// not hold exactly size bytes, because the header is already written.
func (w *Writer) File(name string, perm fs.FileMode, size int64, r io.Reader) error {
	return w.entry(name, typeRegular|uint32(perm.Perm()), size, 0, 0, r)
}

// Symlink adds a symbolic link name pointing to target.
func (w *Writer) Symlink(name, target string) error {
	return w.entry(name, typeSymlink|0o777, int64(len(target)), 0, 0, strings.NewReader(target))
}

// CharDevice adds a character device node, such as /dev/console, which
// the kernel opens for init before any file system is mounted.
func (w *Writer) CharDevice(name string, perm fs.FileMode, major, minor uint32) error {
	return w.entry(name, typeChar|uint32(perm.Perm()), 0, major, minor, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return ErrClosed
	}
	err := w.entry(trailer, 0, 0, 0, 0, nil)
	w.closed = true
	return err
}

func (w *Writer) entry(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32, r io.Reader) error {
	if w.closed {
		return ErrClosed
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("cpio: write %q: bad name", name)
	}
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio: write %s: size %d does not fit the newc format", name, size)
	}
	w.ino++
	nlink := uint32(1)
	if mode&typeMask == typeDir {
		nlink = 2
	}
	fields := [13]uint32{
		w.ino, mode, 0, 0, nlink, 0, uint32(size),
		0, 0, rdevMajor, rdevMinor, uint32(len(name) + 1), 0,
	}
	hdr := make([]byte, 0, headerSize+len(name)+1+align)
	hdr = append(hdr, magic...)
	for _, f := range fields {
		hdr = fmt.Appendf(hdr, "%08x", f)
	}
	hdr = append(hdr, name...)
	hdr = append(hdr, 0)
	hdr = append(hdr, make([]byte, pad(headerSize+len(name)+1))...)
	if err := w.write(hdr); err != nil {
		return fmt.Errorf("cpio: write %s: %w", name, err)
	}
	if size == 0 {
		return nil
	}
	if _, err := io.CopyN(w.w, r, size); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("cpio: write %s: %w", name, err)
	}
	if err := w.write(make([]byte, pad(int(size)))); err != nil {
		return fmt.Errorf("cpio: write %s: %w", name, err)
	}
	return nil
}

func (w *Writer) write(b []byte) error {
	_, err := w.w.Write(b)
	return err
}

// pad is the number of zero bytes that bring n up to a multiple of align.
func pad(n int) int {
	return (align - n%align) % align
}
