package vmtest

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"testing"
)

// fakeBzImage wraps a compressed ELF the way a bzImage does: setup code
// before it (here with a false gzip magic, as real setup code has) and
// trailing bytes after it.
func fakeBzImage(t *testing.T, compressed []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	b.Write(bytes.Repeat([]byte{0x90}, 1000))
	b.Write([]byte{0x1f, 0x8b, 0x08, 0x00, 0xde, 0xad})
	b.Write(bytes.Repeat([]byte{0xcc}, 333))
	b.Write(compressed)
	b.Write(bytes.Repeat([]byte{0x00, 0xff}, 200))
	return b.Bytes()
}

func testELF(t *testing.T) []byte {
	t.Helper()
	elf, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Skipf("need an ELF file to compress: %v", err)
	}
	return elf
}

func TestExtractVmlinuxGzip(t *testing.T) {
	elf := testELF(t)
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(elf)
	zw.Close()
	got, err := extractVmlinux(fakeBzImage(t, z.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, elf) {
		t.Errorf("extracted %d bytes, not the %d-byte ELF", len(got), len(elf))
	}
}

// Debian's kernels are xz-compressed; xz-utils is one of the harness's
// required packages.
func TestExtractVmlinuxXz(t *testing.T) {
	if lookTool(toolXz) == "" {
		t.Skip("xz not installed (apt-get install xz-utils)")
	}
	elf := testELF(t)
	cmd := exec.Command(lookTool(toolXz), "-c", "--check=crc32")
	cmd.Stdin = bytes.NewReader(elf)
	xz, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	got, err := extractVmlinux(fakeBzImage(t, xz))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, elf) {
		t.Errorf("extracted %d bytes, not the %d-byte ELF", len(got), len(elf))
	}
}

func TestExtractVmlinuxNotELF(t *testing.T) {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write([]byte("not an ELF file"))
	zw.Close()
	if _, err := extractVmlinux(fakeBzImage(t, z.Bytes())); !errors.Is(err, errNoVmlinux) {
		t.Errorf("got %v, want errNoVmlinux", err)
	}
}

func TestHasNote(t *testing.T) {
	note := func(name string, typ uint32, desc []byte) []byte {
		var b []byte
		b = binary.LittleEndian.AppendUint32(b, uint32(len(name)+1))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(desc)))
		b = binary.LittleEndian.AppendUint32(b, typ)
		b = append(b, name...)
		b = append(b, make([]byte, align4(uint32(len(name)+1))-uint64(len(name)))...)
		b = append(b, desc...)
		return append(b, make([]byte, align4(uint32(len(desc)))-uint64(len(desc)))...)
	}
	notes := append(note("GNU", 3, []byte{1, 2, 3, 4, 5}), note("Xen", xenElfnotePhys32Entry, []byte{0, 0, 0, 1})...)
	if !hasNote(notes, binary.LittleEndian, "Xen", xenElfnotePhys32Entry) {
		t.Error("PVH note after a GNU note not found")
	}
	if hasNote(notes, binary.LittleEndian, "Xen", 17) {
		t.Error("found a note type that is not there")
	}
	// A size field pointing past the end must stop the walk, not panic.
	bad := append([]byte(nil), notes...)
	binary.LittleEndian.PutUint32(bad, 0xfffffffe)
	if hasNote(bad, binary.LittleEndian, "Xen", xenElfnotePhys32Entry) {
		t.Error("walked past a corrupt note")
	}
	if err := checkPVH(testELF(t)); err == nil {
		t.Error("checkPVH accepted /bin/true, which has no PVH note")
	}
}
