package vmtest

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os/exec"
)

// A compressed kernel inside a bzImage, found by its stream magic as the
// kernel's scripts/extract-vmlinux does. Debian's amd64 kernels use xz.
type compression struct {
	name  string
	magic []byte
	// decompress returns what it could decompress; trailing bytes after
	// the stream (the rest of the bzImage) are expected and ignored.
	decompress func(stream []byte) []byte
}

var compressions = []compression{
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, execDecompress("xz", "-dc", "--single-stream")},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, execDecompress("zstd", "-dcq")},
	{"gzip", []byte{0x1f, 0x8b, 0x08}, gunzip},
}

// errNoVmlinux is returned when no candidate stream decompresses to an ELF.
var errNoVmlinux = errors.New("no compressed ELF kernel found")

// extractVmlinux returns the uncompressed ELF kernel inside a bzImage. It
// tries every offset where a known compression magic occurs and keeps the
// first one that decompresses to an ELF file, like the kernel's
// extract-vmlinux, because the magic bytes also occur by chance in the
// setup code.
func extractVmlinux(bzImage []byte) ([]byte, error) {
	for _, c := range compressions {
		for off := 0; ; {
			i := bytes.Index(bzImage[off:], c.magic)
			if i < 0 {
				break
			}
			off += i
			if out := c.decompress(bzImage[off:]); isELF(out) {
				return out, nil
			}
			off++
		}
	}
	return nil, errNoVmlinux
}

// execDecompress runs a Debian decompressor (xz-utils, zstd) on a stream;
// Go's standard library has neither format and the tools are always there
// where apt is.
func execDecompress(tool string, args ...string) func([]byte) []byte {
	return func(stream []byte) []byte {
		path, err := exec.LookPath(tool)
		if err != nil {
			return nil
		}
		var out bytes.Buffer
		cmd := exec.Command(path, args...)
		cmd.Stdin = bytes.NewReader(stream)
		cmd.Stdout = &out
		// The exit status is ignored on purpose: the tool complains about
		// the bytes after the stream, and the ELF check decides.
		_ = cmd.Run()
		return out.Bytes()
	}
}

func gunzip(stream []byte) []byte {
	zr, err := gzip.NewReader(bytes.NewReader(stream))
	if err != nil {
		return nil
	}
	zr.Multistream(false)
	out, _ := io.ReadAll(zr)
	return out
}

func isELF(b []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// xenElfnotePhys32Entry is XEN_ELFNOTE_PHYS32_ENTRY, the note a kernel
// built with CONFIG_PVH carries; qemu boots an ELF kernel only through it.
const xenElfnotePhys32Entry = 18

// checkPVH reports why qemu could not boot this ELF kernel directly, or nil.
func checkPVH(vmlinux []byte) error {
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return fmt.Errorf("read vmlinux: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		notes, err := io.ReadAll(p.Open())
		if err != nil {
			return fmt.Errorf("read vmlinux notes: %w", err)
		}
		if hasNote(notes, f.ByteOrder, "Xen", xenElfnotePhys32Entry) {
			return nil
		}
	}
	return errors.New("vmlinux has no PVH entry note (kernel built without CONFIG_PVH)")
}

// hasNote walks ELF notes: namesz u32, descsz u32, type u32, name and
// descriptor each padded to 4 bytes.
func hasNote(b []byte, order binary.ByteOrder, name string, typ uint32) bool {
	for len(b) >= 12 {
		namesz, descsz, t := order.Uint32(b), order.Uint32(b[4:]), order.Uint32(b[8:])
		b = b[12:]
		n, d := align4(namesz), align4(descsz)
		if n+d > uint64(len(b)) {
			return false
		}
		if t == typ && string(bytes.TrimRight(b[:namesz], "\x00")) == name {
			return true
		}
		b = b[n+d:]
	}
	return false
}

func align4(n uint32) uint64 { return (uint64(n) + 3) &^ 3 }
