package wire_test

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"reflect"
	"strings"
	"testing"

	"github.com/udpmapsync/udpmapsync/wire"
)

var (
	flows = wire.Descriptor{Name: "flows", Type: 1, KeySize: 4, ValueSize: 8, MaxEntries: 1024, Flags: 1}
	ports = wire.Descriptor{Name: "ports", Type: 2, KeySize: 4, ValueSize: 2, MaxEntries: 64}
	// A name of every printable character class, at the maximum length.
	longest = wire.Descriptor{Name: " ~Az09_.-:!\"#$%&", Type: 9, KeySize: 512, ValueSize: 4096, MaxEntries: 1 << 20}
)

func init() { longest.Name = longest.Name[:wire.MaxNameLen] }

// TestFingerprint checks the definition in FORMAT.md against the standard
// library's FNV-1a, and that every schema field but Flags counts.
func TestFingerprint(t *testing.T) {
	for _, d := range []wire.Descriptor{flows, ports, longest} {
		h := fnv.New32a()
		h.Write([]byte(d.Name))
		h.Write([]byte{0})
		for _, v := range []uint32{d.Type, d.KeySize, d.ValueSize, d.MaxEntries} {
			h.Write(binary.BigEndian.AppendUint32(nil, v))
		}
		if got, want := d.Fingerprint(), h.Sum32(); got != want {
			t.Errorf("%s: Fingerprint() = %#08x, want %#08x", d.Name, got, want)
		}
	}
	base := flows.Fingerprint()
	for name, d := range map[string]wire.Descriptor{
		"name":        {Name: "flowz", Type: 1, KeySize: 4, ValueSize: 8, MaxEntries: 1024},
		"type":        {Name: "flows", Type: 9, KeySize: 4, ValueSize: 8, MaxEntries: 1024},
		"key size":    {Name: "flows", Type: 1, KeySize: 8, ValueSize: 8, MaxEntries: 1024},
		"value size":  {Name: "flows", Type: 1, KeySize: 4, ValueSize: 4, MaxEntries: 1024},
		"max entries": {Name: "flows", Type: 1, KeySize: 4, ValueSize: 8, MaxEntries: 2048},
	} {
		if d.Fingerprint() == base {
			t.Errorf("changing the %s leaves the fingerprint unchanged", name)
		}
	}
	noFlags := flows
	noFlags.Flags = 0
	if noFlags.Fingerprint() != base {
		t.Error("map flags change the fingerprint")
	}
}

func TestDescriptorRoundTrip(t *testing.T) {
	want := []wire.Descriptor{flows, ports, longest}
	var body []byte
	for i := range want {
		var err error
		if body, err = wire.AppendDescriptor(body, &want[i]); err != nil {
			t.Fatalf("AppendDescriptor(%q): %v", want[i].Name, err)
		}
	}
	if n := 3*wire.DescriptorSize + len("flows") + len("ports") + wire.MaxNameLen; len(body) != n {
		t.Fatalf("encoded %d bytes, want %d", len(body), n)
	}
	prefix := []wire.Descriptor{{Name: "kept"}}
	got, err := wire.ParseDescriptors(body, len(want), prefix)
	if err != nil {
		t.Fatalf("ParseDescriptors: %v", err)
	}
	if !reflect.DeepEqual(got, append(prefix, want...)) {
		t.Errorf("ParseDescriptors = %+v, want %+v after the prefix", got, want)
	}
	got, err = wire.ParseDescriptors(nil, 0, nil)
	if err != nil || len(got) != 0 {
		t.Errorf("ParseDescriptors of an empty announce = %v, %v", got, err)
	}
}

func TestAppendDescriptorBadName(t *testing.T) {
	for _, name := range []string{"", strings.Repeat("x", wire.MaxNameLen+1), "a\x00b", "tab\t", "del\x7f", "é"} {
		d := flows
		d.Name = name
		b, err := wire.AppendDescriptor([]byte{1, 2}, &d)
		if !errors.Is(err, wire.ErrBadName) {
			t.Errorf("AppendDescriptor(%q): %v, want ErrBadName", name, err)
		}
		if len(b) != 2 {
			t.Errorf("AppendDescriptor(%q) appended %d bytes despite the error", name, len(b)-2)
		}
	}
}

func TestParseDescriptorsErrors(t *testing.T) {
	var valid []byte
	for _, d := range []wire.Descriptor{flows, ports} {
		valid, _ = wire.AppendDescriptor(valid, &d)
	}
	nameLen := wire.DescriptorSize - 1 // offset of the first descriptor's name length
	with := func(off int, v byte) []byte {
		b := append([]byte(nil), valid...)
		b[off] = v
		return b
	}
	tests := []struct {
		name  string
		body  []byte
		count int
		want  error
	}{
		{"count too high", valid, 3, wire.ErrBadCount},
		{"count too low", valid, 1, wire.ErrBadCount},
		{"negative count", valid, -1, wire.ErrBadCount},
		{"trailing byte", append(valid[:len(valid):len(valid)], 0), 2, wire.ErrBadCount},
		{"fixed part cut", valid[:wire.DescriptorSize-1], 1, wire.ErrShortBuffer},
		{"name cut", valid[:wire.DescriptorSize+4], 1, wire.ErrShortBuffer},
		{"name length 0", with(nameLen, 0), 2, wire.ErrBadName},
		{"name length 16", append(with(nameLen, 16), make([]byte, 11)...), 2, wire.ErrBadName},
		{"name length past the end", with(nameLen, 200), 2, wire.ErrShortBuffer},
		{"control character", with(wire.DescriptorSize+1, '\n'), 2, wire.ErrBadName},
		{"DEL", with(wire.DescriptorSize, 0x7f), 2, wire.ErrBadName},
		{"high bit", with(len(valid)-1, 0xe9), 2, wire.ErrBadName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := make([]wire.Descriptor, 1, 4)
			got, err := wire.ParseDescriptors(tt.body, tt.count, prefix)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ParseDescriptors: %v, want %v", err, tt.want)
			}
			if len(got) != 1 || cap(got) != 4 {
				t.Errorf("on error returned len %d cap %d, want the caller's slice back (1, 4)", len(got), cap(got))
			}
		})
	}
	for n := range len(valid) {
		if _, err := wire.ParseDescriptors(valid[:n], 2, nil); err == nil {
			t.Errorf("ParseDescriptors accepted the first %d of %d bytes", n, len(valid))
		}
	}
}

// TestParseDescriptorsAllocs shows that parsing the same announce into the
// same slice again does not allocate: the receiver parses one every few
// seconds per peer.
func TestParseDescriptorsAllocs(t *testing.T) {
	var body []byte
	for _, d := range []wire.Descriptor{flows, ports, longest} {
		body, _ = wire.AppendDescriptor(body, &d)
	}
	out, err := wire.ParseDescriptors(body, 3, nil)
	if err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if out, err = wire.ParseDescriptors(body, 3, out[:0]); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("parsing a repeated announce: %v allocations, want 0", allocs)
	}
	if !reflect.DeepEqual(out, []wire.Descriptor{flows, ports, longest}) {
		t.Errorf("reparsed descriptors = %+v", out)
	}
}
