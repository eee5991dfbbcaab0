package wire_test

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"io"
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

// parseAll decodes the descriptors of an announce body with a header
// count of count, the way a receiver does: all of them or an error.
func parseAll(body []byte, count uint16) ([]wire.Descriptor, error) {
	var (
		it    wire.Descriptors
		descs []wire.Descriptor
	)
	it.Reset(body, count)
	for {
		d, err := it.Next()
		if err == io.EOF {
			return descs, nil
		}
		if err != nil {
			return nil, err
		}
		descs = append(descs, d)
	}
}

// appendAll encodes descs after b.
func appendAll(t testing.TB, b []byte, descs ...wire.Descriptor) []byte {
	t.Helper()
	for i := range descs {
		var err error
		if b, err = descs[i].AppendTo(b); err != nil {
			t.Fatalf("AppendTo(%q): %v", descs[i].Name, err)
		}
	}
	return b
}

func TestDescriptorRoundTrip(t *testing.T) {
	want := []wire.Descriptor{flows, ports, longest}
	body := appendAll(t, []byte{}, want...)
	if n := 3*wire.DescriptorSize + len("flows") + len("ports") + wire.MaxNameLen; len(body) != n {
		t.Fatalf("encoded %d bytes, want %d", len(body), n)
	}
	got, err := parseAll(body, uint16(len(want)))
	if err != nil {
		t.Fatalf("Descriptors: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Descriptors = %+v, want %+v", got, want)
	}
	got, err = parseAll(nil, 0)
	if err != nil || len(got) != 0 {
		t.Errorf("Descriptors of an empty announce = %v, %v", got, err)
	}
}

// TestDescriptorNameCopied checks that a decoded name does not alias the
// datagram, which the receiver reuses for the next one.
func TestDescriptorNameCopied(t *testing.T) {
	body := appendAll(t, nil, flows)
	var it wire.Descriptors
	it.Reset(body, 1)
	d, err := it.Next()
	if err != nil {
		t.Fatal(err)
	}
	clear(body)
	if d.Name != "flows" {
		t.Errorf("name %q changed with the datagram", d.Name)
	}
}

func TestDescriptorAppendToBadName(t *testing.T) {
	for _, name := range []string{"", strings.Repeat("x", wire.MaxNameLen+1), "a\x00b", "tab\t", "del\x7f", "é"} {
		d := flows
		d.Name = name
		b, err := d.AppendTo([]byte{1, 2})
		if !errors.Is(err, wire.ErrBadName) {
			t.Errorf("AppendTo(%q): %v, want ErrBadName", name, err)
		}
		if len(b) != 2 {
			t.Errorf("AppendTo(%q) appended %d bytes despite the error", name, len(b)-2)
		}
	}
}

func TestDescriptorsErrors(t *testing.T) {
	valid := appendAll(t, nil, flows, ports)
	nameLen := wire.DescriptorSize - 1 // offset of the first descriptor's name length
	with := func(off int, v byte) []byte {
		b := append([]byte(nil), valid...)
		b[off] = v
		return b
	}
	tests := []struct {
		name  string
		body  []byte
		count uint16
		want  error
		good  int // descriptors Next returns before the error
	}{
		{"count too high", valid, 3, wire.ErrBadCount, 2},
		{"count too low", valid, 1, wire.ErrBadCount, 1},
		{"count 0 with a body", valid, 0, wire.ErrBadCount, 0},
		{"count with no body", nil, 1, wire.ErrBadCount, 0},
		{"trailing byte", append(valid[:len(valid):len(valid)], 0), 2, wire.ErrBadCount, 2},
		{"fixed part cut", valid[:wire.DescriptorSize-1], 1, wire.ErrShortBuffer, 0},
		{"second fixed part cut", valid[:wire.DescriptorSize+5+1], 2, wire.ErrShortBuffer, 1},
		{"name cut", valid[:wire.DescriptorSize+4], 1, wire.ErrShortBuffer, 0},
		{"name length 0", with(nameLen, 0), 2, wire.ErrBadName, 0},
		{"name length 16", append(with(nameLen, 16), make([]byte, 11)...), 2, wire.ErrBadName, 0},
		{"name length past the end", with(nameLen, 200), 2, wire.ErrShortBuffer, 0},
		{"control character", with(wire.DescriptorSize+1, '\n'), 2, wire.ErrBadName, 0},
		{"DEL", with(wire.DescriptorSize, 0x7f), 2, wire.ErrBadName, 0},
		{"high bit", with(len(valid)-1, 0xe9), 2, wire.ErrBadName, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var it wire.Descriptors
			it.Reset(tt.body, tt.count)
			for i := range tt.good {
				if _, err := it.Next(); err != nil {
					t.Fatalf("descriptor %d: %v, want it before the error", i, err)
				}
			}
			// The error sticks.
			for range 3 {
				if d, err := it.Next(); !errors.Is(err, tt.want) || d != (wire.Descriptor{}) {
					t.Fatalf("Next = %+v, %v; want %v", d, err, tt.want)
				}
			}
		})
	}
	for n := range len(valid) {
		if _, err := parseAll(valid[:n], 2); err == nil {
			t.Errorf("Descriptors accepted the first %d of %d bytes", n, len(valid))
		}
	}
}

// TestDescriptorsAllocs shows that the iterator allocates nothing but the
// names, one per descriptor.
func TestDescriptorsAllocs(t *testing.T) {
	want := []wire.Descriptor{flows, ports, longest}
	body := appendAll(t, nil, want...)
	out := make([]wire.Descriptor, 0, len(want))
	var it wire.Descriptors
	allocs := testing.AllocsPerRun(100, func() {
		out = out[:0]
		it.Reset(body, uint16(len(want)))
		for {
			d, err := it.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, d)
		}
	})
	if allocs > float64(len(want)) {
		t.Errorf("decoding %d descriptors: %v allocations, want at most one per name", len(want), allocs)
	}
	if !reflect.DeepEqual(out, want) {
		t.Errorf("decoded descriptors = %+v", out)
	}
	buf := make([]byte, 0, len(body))
	allocs = testing.AllocsPerRun(100, func() {
		b := buf
		for i := range want {
			var err error
			if b, err = want[i].AppendTo(b); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("encoding %d descriptors: %v allocations, want 0", len(want), allocs)
	}
}
