package wire

import (
	"encoding/binary"
	"fmt"
	"io"
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

// AppendTo appends the wire form of d to b. It returns [ErrBadName],
// appending nothing, if the name would not survive [Descriptors.Next].
func (d *Descriptor) AppendTo(b []byte) ([]byte, error) {
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
// name [Descriptor.AppendTo] would not write, and keeps returning the
// same error after one.
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
	if len(it.body) < end {
		return it.fail(ErrShortBuffer)
	}
	name := it.body[DescriptorSize:end]
	if !validName(name) {
		return it.fail(ErrBadName)
	}
	d := Descriptor{
		Name:       string(name),
		Type:       binary.BigEndian.Uint32(it.body[offsetDescType:]),
		KeySize:    binary.BigEndian.Uint32(it.body[offsetDescKeySize:]),
		ValueSize:  binary.BigEndian.Uint32(it.body[offsetDescValueSize:]),
		MaxEntries: binary.BigEndian.Uint32(it.body[offsetDescMaxEntries:]),
		Flags:      binary.BigEndian.Uint32(it.body[offsetDescFlags:]),
	}
	it.body = it.body[end:]
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
