package wire

import (
	"encoding/binary"
	"fmt"
)

// Descriptor field offsets, see FORMAT.md. The name follows at
// DescriptorSize.
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
// A map is the same on two nodes when its name and schema match, which is
// what [Descriptor.Fingerprint] condenses for the change sections.
type Descriptor struct {
	Name       string // BPF object name, 1..[MaxNameLen] printable ASCII characters
	Type       uint32 // BPF map type
	KeySize    uint32
	ValueSize  uint32
	MaxEntries uint32
	Flags      uint32 // BPF map flags; informational, not part of the fingerprint
}

// Fingerprint identifies the map of a change section: FNV-1a 32 over the
// name bytes, a 0 byte, then type, key size, value size and max entries as
// big-endian uint32. The 0 byte keeps a name from running into the schema;
// Flags is left out so that nodes may tune map flags independently.
func (d *Descriptor) Fingerprint() uint32 {
	h := uint32(fnvOffset32)
	for i := 0; i < len(d.Name); i++ {
		h = (h ^ uint32(d.Name[i])) * fnvPrime32
	}
	h *= fnvPrime32 // the 0 separator: h ^ 0 == h
	for _, v := range [...]uint32{d.Type, d.KeySize, d.ValueSize, d.MaxEntries} {
		for shift := 24; shift >= 0; shift -= 8 {
			h = (h ^ (v >> shift & 0xff)) * fnvPrime32
		}
	}
	return h
}

// AppendDescriptor appends the wire form of d to b. It fails with
// [ErrBadName] if the name would not survive [ParseDescriptors].
func AppendDescriptor(b []byte, d *Descriptor) ([]byte, error) {
	if !validName(d.Name) {
		return b, fmt.Errorf("encode descriptor %q: %w: want 1 to %d printable ASCII characters", d.Name, ErrBadName, MaxNameLen)
	}
	b = binary.BigEndian.AppendUint32(b, d.Type)
	b = binary.BigEndian.AppendUint32(b, d.KeySize)
	b = binary.BigEndian.AppendUint32(b, d.ValueSize)
	b = binary.BigEndian.AppendUint32(b, d.MaxEntries)
	b = binary.BigEndian.AppendUint32(b, d.Flags)
	b = append(b, byte(len(d.Name)))
	return append(b, d.Name...), nil
}

// ParseDescriptors decodes the count descriptors of a [KindAnnounce] body
// and appends them to out. The body must hold exactly count descriptors:
// [ErrShortBuffer] if one is cut off, [ErrBadCount] if the body ends early
// or has bytes left over, [ErrBadName] for a name [AppendDescriptor] would
// not write. On error it returns out with its original length, so the
// caller keeps the slice's capacity.
//
// Names are strings, so a new name costs an allocation; a name equal to
// the one left in out's spare capacity by the previous call reuses it.
// Announces repeat the same maps every few seconds, so parsing them into
// the same slice settles to no allocation.
func ParseDescriptors(body []byte, count int, out []Descriptor) ([]Descriptor, error) {
	base := len(out)
	if count < 0 {
		return out, ErrBadCount
	}
	for range count {
		if len(body) == 0 {
			return out[:base], ErrBadCount
		}
		if len(body) < DescriptorSize {
			return out[:base], ErrShortBuffer
		}
		n := int(body[offsetDescNameLen])
		if len(body) < DescriptorSize+n {
			return out[:base], ErrShortBuffer
		}
		name := body[DescriptorSize : DescriptorSize+n]
		if !validName(name) {
			return out[:base], ErrBadName
		}
		if len(out) < cap(out) {
			out = out[:len(out)+1] // keeps the stale element to compare below
		} else {
			out = append(out, Descriptor{})
		}
		d := &out[len(out)-1]
		if d.Name != string(name) {
			d.Name = string(name)
		}
		*d = Descriptor{
			Name:       d.Name,
			Type:       binary.BigEndian.Uint32(body[offsetDescType:]),
			KeySize:    binary.BigEndian.Uint32(body[offsetDescKeySize:]),
			ValueSize:  binary.BigEndian.Uint32(body[offsetDescValueSize:]),
			MaxEntries: binary.BigEndian.Uint32(body[offsetDescMaxEntries:]),
			Flags:      binary.BigEndian.Uint32(body[offsetDescFlags:]),
		}
		body = body[DescriptorSize+n:]
	}
	if len(body) != 0 {
		return out[:base], ErrBadCount
	}
	return out, nil
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
