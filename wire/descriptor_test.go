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
	// A conntrack-like value: flags, a packet count, a lifetime in
	// seconds of CLOCK_MONOTONIC, an ifindex that stays on its node.
	ct = wire.Descriptor{Name: "ct", Type: 1, KeySize: 4, ValueSize: 16, MaxEntries: 1024, Fields: []wire.Field{
		{Kind: wire.FieldMonoS, Offset: 8, Size: 4},
		{Kind: wire.FieldLocal, Offset: 12, Size: 4},
	}}
)

func init() { longest.Name = longest.Name[:wire.MaxNameLen] }

// TestFingerprint checks the definition in FORMAT.md against the standard
// library's FNV-1a, and that every schema field but Flags counts, and
// every field's kind, offset and size.
func TestFingerprint(t *testing.T) {
	for _, d := range []wire.Descriptor{flows, ports, longest, ct} {
		h := fnv.New32a()
		h.Write([]byte(d.Name))
		h.Write([]byte{0})
		for _, v := range []uint32{d.Type, d.KeySize, d.ValueSize, d.MaxEntries} {
			h.Write(binary.BigEndian.AppendUint32(nil, v))
		}
		for _, f := range d.Fields {
			h.Write([]byte{byte(f.Kind)})
			h.Write(binary.BigEndian.AppendUint16(nil, f.Offset))
			h.Write(binary.BigEndian.AppendUint16(nil, f.Size))
		}
		if got, want := d.Fingerprint(), h.Sum32(); got != want {
			t.Errorf("%s: Fingerprint() = %#08x, want %#08x", d.Name, got, want)
		}
	}
	// The examples of FORMAT.md, "Map fingerprint".
	for d, want := range map[*wire.Descriptor]uint32{&flows: 0x73acb739, &ports: 0xe5343951, &ct: 0x74132236} {
		if got := d.Fingerprint(); got != want {
			t.Errorf("%s: Fingerprint() = %#08x, FORMAT.md says %#08x", d.Name, got, want)
		}
	}
	ctBase := ct.Fingerprint()
	noFields := ct
	noFields.Fields = nil
	for name, fs := range map[string][]wire.Field{
		"no fields":      nil,
		"a clock's kind": {{Kind: wire.FieldMonoNS, Offset: 8, Size: 4}, {Kind: wire.FieldLocal, Offset: 12, Size: 4}},
		"an offset":      {{Kind: wire.FieldMonoS, Offset: 4, Size: 4}, {Kind: wire.FieldLocal, Offset: 12, Size: 4}},
		"a size":         {{Kind: wire.FieldMonoS, Offset: 8, Size: 4}, {Kind: wire.FieldLocal, Offset: 12, Size: 2}},
		"a field less":   {{Kind: wire.FieldMonoS, Offset: 8, Size: 4}},
	} {
		d := ct
		d.Fields = fs
		if d.Fingerprint() == ctBase {
			t.Errorf("changing %s leaves the fingerprint unchanged", name)
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
	want := []wire.Descriptor{flows, ports, longest, ct}
	body := appendAll(t, []byte{}, want...)
	if n := 4*(wire.DescriptorSize+1) + len("flows") + len("ports") + wire.MaxNameLen + len("ct") + 2*wire.FieldSize; len(body) != n {
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
	withFields := appendAll(t, nil, ct)
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
		{"second fixed part cut", valid[:wire.DescriptorSize+5+1+1], 2, wire.ErrShortBuffer, 1},
		{"name cut", valid[:wire.DescriptorSize+4], 1, wire.ErrShortBuffer, 0},
		{"field count cut", valid[:wire.DescriptorSize+5], 1, wire.ErrShortBuffer, 0},
		{"fields cut", withFields[:len(withFields)-1], 1, wire.ErrShortBuffer, 0},
		{"field count too high", append(withFields[:len(withFields)-1-2*wire.FieldSize:len(withFields)-1-2*wire.FieldSize], 3), 1, wire.ErrShortBuffer, 0},
		{"name length 0", with(nameLen, 0), 2, wire.ErrBadName, 0},
		{"name length 16", append(with(nameLen, 16), make([]byte, 11)...), 2, wire.ErrBadName, 0},
		{"name length past the end", with(nameLen, 200), 2, wire.ErrShortBuffer, 0},
		{"control character", with(wire.DescriptorSize+1, '\n'), 2, wire.ErrBadName, 0},
		{"DEL", with(wire.DescriptorSize, 0x7f), 2, wire.ErrBadName, 0},
		{"high bit", with(len(valid)-2, 0xe9), 2, wire.ErrBadName, 1},
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
				if d, err := it.Next(); !errors.Is(err, tt.want) || !reflect.DeepEqual(d, wire.Descriptor{}) {
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
	for n := range len(withFields) {
		if _, err := parseAll(withFields[:n], 1); err == nil {
			t.Errorf("Descriptors accepted the first %d of %d bytes of a descriptor with fields", n, len(withFields))
		}
	}
}

// TestDescriptorFields checks that a descriptor's fields are accepted
// only in their canonical form, by the encoder and the decoder alike.
func TestDescriptorFields(t *testing.T) {
	f := func(k wire.FieldKind, off, size uint16) wire.Field {
		return wire.Field{Kind: k, Offset: off, Size: size}
	}
	for name, tt := range map[string]struct {
		fields []wire.Field
		ok     bool
	}{
		"ct":                   {ct.Fields, true},
		"every kind":           {[]wire.Field{f(wire.FieldLock, 0, 4), f(wire.FieldMonoNS, 4, 8), f(wire.FieldBootS, 12, 4)}, true},
		"two clocks adjacent":  {[]wire.Field{f(wire.FieldMonoS, 0, 4), f(wire.FieldMonoS, 4, 4)}, true},
		"up to the end":        {[]wire.Field{f(wire.FieldLocal, 0, 16)}, true},
		"kind 0":               {[]wire.Field{f(0, 0, 4)}, false},
		"kind 7":               {[]wire.Field{f(7, 0, 4)}, false},
		"empty":                {[]wire.Field{f(wire.FieldLocal, 0, 0)}, false},
		"past the end":         {[]wire.Field{f(wire.FieldLocal, 12, 5)}, false},
		"offset past the end":  {[]wire.Field{f(wire.FieldLocal, 0xffff, 1)}, false},
		"clock of 2 bytes":     {[]wire.Field{f(wire.FieldBootNS, 0, 2)}, false},
		"out of order":         {[]wire.Field{f(wire.FieldLocal, 8, 4), f(wire.FieldMonoS, 0, 4)}, false},
		"overlap":              {[]wire.Field{f(wire.FieldMonoS, 0, 8), f(wire.FieldLocal, 4, 4)}, false},
		"two locals adjacent":  {[]wire.Field{f(wire.FieldLocal, 0, 4), f(wire.FieldLocal, 4, 4)}, false},
		"local then lock":      {[]wire.Field{f(wire.FieldLocal, 0, 4), f(wire.FieldLock, 4, 4)}, true},
		"the same field twice": {[]wire.Field{f(wire.FieldMonoS, 0, 4), f(wire.FieldMonoS, 0, 4)}, false},
		"more than 255 fields": {make([]wire.Field, 256), false},
	} {
		d := ct
		d.Fields = tt.fields
		b, err := d.AppendTo([]byte{1})
		if tt.ok != (err == nil) || (err != nil && (!errors.Is(err, wire.ErrBadField) || len(b) != 1)) {
			t.Errorf("%s: AppendTo = %d bytes, %v", name, len(b), err)
		}
		if !tt.ok && len(tt.fields) <= wire.MaxFields {
			// Write them anyway: the decoder must refuse them too.
			b = appendAll(t, nil, ct)
			b = append(b[:len(b)-1-2*wire.FieldSize], byte(len(tt.fields)))
			for _, f := range tt.fields {
				b = append(b, byte(f.Kind), byte(f.Offset>>8), byte(f.Offset), byte(f.Size>>8), byte(f.Size))
			}
		}
		if len(tt.fields) > wire.MaxFields {
			continue // a count byte cannot say so
		}
		got, err := parseAll(b[len(b)-d.EncodedSize():], 1)
		if tt.ok && (err != nil || !reflect.DeepEqual(got[0], d)) {
			t.Errorf("%s: decoded %+v, %v", name, got, err)
		}
		if !tt.ok && !errors.Is(err, wire.ErrBadField) {
			t.Errorf("%s: decoded %+v, %v; want ErrBadField", name, got, err)
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
