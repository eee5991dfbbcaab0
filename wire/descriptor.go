package wire

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Descriptor field offsets, see FORMAT.md. The name follows at
// DescriptorSize, then the field count and the fields.
const (
	offsetDescType       = 0
	offsetDescKeySize    = 4
	offsetDescValueSize  = 8
	offsetDescMaxEntries = 12
	offsetDescFlags      = 16
	offsetDescNameLen    = 20
)

// FNV-1a 32-bit parameters.
const (
	fnvOffset32 = 2166136261
	fnvPrime32  = 16777619
)

// Descriptor describes one replicated map in a [KindAnnounce] datagram.
// A map is the same on two nodes when its name, schema and fields match,
// which is what [Descriptor.Fingerprint] condenses for the change
// sections.
type Descriptor struct {
	Name       string // BPF object name, 1..[MaxNameLen] printable ASCII characters
	Type       uint32 // BPF map type
	KeySize    uint32
	ValueSize  uint32
	MaxEntries uint32
	Flags      uint32 // BPF map flags; informational, not part of the fingerprint
	// Fields are the byte ranges of a value that do not travel as the
	// map holds them (clock, local and lock bytes), in their one
	// canonical form: see [CheckFields]. Nil when there are none.
	Fields []Field
}

// Fingerprint identifies the map of a change section: FNV-1a 32 over the
// name bytes, a 0 byte, then type, key size, value size and max entries as
// big-endian uint32, then each field's kind (a byte), offset and size
// (big-endian uint16). The 0 byte keeps a name from running into the
// schema; Flags is left out so that nodes may tune map flags
// independently. A map without fields keeps the fingerprint it had
// before fields existed.
func (d *Descriptor) Fingerprint() uint32 {
	h := uint32(fnvOffset32)
	add := func(v uint32, bytes int) {
		for shift := 8 * (bytes - 1); shift >= 0; shift -= 8 {
			h = (h ^ (v >> shift & 0xff)) * fnvPrime32
		}
	}
	for i := 0; i < len(d.Name); i++ {
		add(uint32(d.Name[i]), 1)
	}
	add(0, 1) // the separator
	for _, v := range [...]uint32{d.Type, d.KeySize, d.ValueSize, d.MaxEntries} {
		add(v, 4)
	}
	for _, f := range d.Fields {
		add(uint32(f.Kind), 1)
		add(uint32(f.Offset), 2)
		add(uint32(f.Size), 2)
	}
	return h
}

// EncodedSize is the length of d's wire form.
func (d *Descriptor) EncodedSize() int {
	return DescriptorSize + len(d.Name) + 1 + len(d.Fields)*FieldSize
}

// AppendTo appends the wire form of d to b. It returns [ErrBadName] if
// the name, or [ErrBadField] if the fields, would not survive
// [Descriptors.Next], appending nothing.
func (d *Descriptor) AppendTo(b []byte) ([]byte, error) {
	if !validName(d.Name) {
		return b, fmt.Errorf("encode descriptor %q: %w: want 1 to %d printable ASCII characters", d.Name, ErrBadName, MaxNameLen)
	}
	if err := CheckFields(d.Fields, d.ValueSize); err != nil {
		return b, fmt.Errorf("encode descriptor %q: %w", d.Name, err)
	}
	b = binary.BigEndian.AppendUint32(b, d.Type)
	b = binary.BigEndian.AppendUint32(b, d.KeySize)
	b = binary.BigEndian.AppendUint32(b, d.ValueSize)
	b = binary.BigEndian.AppendUint32(b, d.MaxEntries)
	b = binary.BigEndian.AppendUint32(b, d.Flags)
	b = append(b, byte(len(d.Name)))
	b = append(b, d.Name...)
	b = append(b, byte(len(d.Fields)))
	for _, f := range d.Fields {
		b = append(b, byte(f.Kind))
		b = binary.BigEndian.AppendUint16(b, f.Offset)
		b = binary.BigEndian.AppendUint16(b, f.Size)
	}
	return b, nil
}

// Descriptors iterates over the descriptors of a [KindAnnounce] body. The
// only allocation is each descriptor's name: announces come once a
// second, not at the rate of change datagrams.
//
// The body must hold exactly the header count of descriptors, which
// [Descriptors.Next] can know only once it reaches the end: a caller that
// must not act on part of a bad announce keeps the descriptors until Next
// returns io.EOF.
type Descriptors struct {
	body []byte
	left int // descriptors the header count still expects
	err  error
}

// Reset starts iterating over body, the datagram after its header, whose
// header count is count.
func (it *Descriptors) Reset(body []byte, count uint16) {
	*it = Descriptors{body: body, left: int(count)}
}

// Next returns the next descriptor, or io.EOF once the header count of
// descriptors has been read and the body used up. It returns
// [ErrShortBuffer] if a descriptor is cut off, [ErrBadCount] if the body
// ends before the count or has bytes left after it, [ErrBadName] for a
// name and [ErrBadField] for fields [Descriptor.AppendTo] would not
// write, and keeps returning the same error after one.
func (it *Descriptors) Next() (Descriptor, error) {
	if it.err != nil {
		return Descriptor{}, it.err
	}
	if it.left == 0 || len(it.body) == 0 {
		if it.left != 0 || len(it.body) != 0 {
			return it.fail(ErrBadCount)
		}
		return it.fail(io.EOF)
	}
	if len(it.body) < DescriptorSize {
		return it.fail(ErrShortBuffer)
	}
	end := DescriptorSize + int(it.body[offsetDescNameLen])
	if len(it.body) < end+1 {
		return it.fail(ErrShortBuffer)
	}
	name := it.body[DescriptorSize:end]
	if !validName(name) {
		return it.fail(ErrBadName)
	}
	n := int(it.body[end])
	fields := it.body[end+1:]
	if len(fields) < n*FieldSize {
		return it.fail(ErrShortBuffer)
	}
	d := Descriptor{
		Name:       string(name),
		Type:       binary.BigEndian.Uint32(it.body[offsetDescType:]),
		KeySize:    binary.BigEndian.Uint32(it.body[offsetDescKeySize:]),
		ValueSize:  binary.BigEndian.Uint32(it.body[offsetDescValueSize:]),
		MaxEntries: binary.BigEndian.Uint32(it.body[offsetDescMaxEntries:]),
		Flags:      binary.BigEndian.Uint32(it.body[offsetDescFlags:]),
	}
	if n > 0 {
		d.Fields = make([]Field, n)
		for i := range d.Fields {
			f := fields[i*FieldSize:]
			d.Fields[i] = Field{Kind: FieldKind(f[0]), Offset: binary.BigEndian.Uint16(f[1:]), Size: binary.BigEndian.Uint16(f[3:])}
		}
		if CheckFields(d.Fields, d.ValueSize) != nil {
			return it.fail(ErrBadField)
		}
	}
	it.body = fields[n*FieldSize:]
	it.left--
	return d, nil
}

func (it *Descriptors) fail(err error) (Descriptor, error) {
	it.err, it.body = err, nil
	return Descriptor{}, err
}

// validName reports whether name is 1..[MaxNameLen] printable ASCII
// characters: what a BPF object name can hold, minus control characters
// that would garble logs.
func validName[T string | []byte](name T) bool {
	if len(name) == 0 || len(name) > MaxNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] < ' ' || name[i] > '~' {
			return false
		}
	}
	return true
}
