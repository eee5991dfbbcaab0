package wire

import (
	"errors"
	"fmt"
	"strconv"
)

// FieldSize is the wire size of a [Field] in a descriptor: kind, offset,
// size.
const FieldSize = 5

// MaxFields is the most fields a descriptor holds: its count is a byte.
const MaxFields = 255

// ErrBadField rejects a descriptor's fields that are not in their
// canonical form (see [CheckFields]).
var ErrBadField = errors.New("wire: invalid value field")

// FieldKind says what the bytes of a [Field] hold on the wire, and so
// what a receiver does with them.
type FieldKind uint8

// Field kinds. A clock field travels as a signed distance from the
// sender's clock of its kind (FORMAT.md, "Changes body"); local and lock
// bytes travel as zeros and the receiver keeps its own.
const (
	FieldLocal  FieldKind = 1 // bytes that mean something only on their node
	FieldLock   FieldKind = 2 // the value's bpf_spin_lock
	FieldMonoNS FieldKind = 3 // CLOCK_MONOTONIC in nanoseconds
	FieldMonoS  FieldKind = 4 // CLOCK_MONOTONIC in seconds
	FieldBootNS FieldKind = 5 // CLOCK_BOOTTIME in nanoseconds
	FieldBootS  FieldKind = 6 // CLOCK_BOOTTIME in seconds

	maxFieldKind = FieldBootS
)

var fieldKindNames = [...]string{
	FieldLocal: "local", FieldLock: "spin lock",
	FieldMonoNS: "mono-ns clock", FieldMonoS: "mono-s clock", FieldBootNS: "boot-ns clock", FieldBootS: "boot-s clock",
}

func (k FieldKind) String() string {
	if k >= 1 && k <= maxFieldKind {
		return fieldKindNames[k]
	}
	return "field(" + strconv.Itoa(int(k)) + ")"
}

// Clock reports whether the kind is a clock field's.
func (k FieldKind) Clock() bool { return k >= FieldMonoNS && k <= maxFieldKind }

// Field is a byte range of a map's value that does not travel as the map
// holds it.
type Field struct {
	Kind   FieldKind
	Offset uint16 // from the start of the value
	Size   uint16 // bytes
}

// End is the offset just past the field.
func (f Field) End() int { return int(f.Offset) + int(f.Size) }

func (f Field) String() string {
	return fmt.Sprintf("%s field at bytes %d..%d", f.Kind, f.Offset, f.End()-1)
}

// CheckFields reports, with an error wrapping [ErrBadField], whether fs
// are not the canonical form of the fields of a value of valueSize
// bytes: at most [MaxFields], each of a known kind, not empty, within the
// value, a clock 4 or 8 bytes; in ascending order of offset without
// overlap; and two local fields, or two lock fields, never adjacent (they
// are one field). So a set of byte ranges has one encoding, and one
// fingerprint.
func CheckFields(fs []Field, valueSize uint32) error {
	if len(fs) > MaxFields {
		return fmt.Errorf("%w: %d fields, at most %d", ErrBadField, len(fs), MaxFields)
	}
	for i, f := range fs {
		switch {
		case f.Kind == 0 || f.Kind > maxFieldKind:
			return fmt.Errorf("%w: unknown kind %d", ErrBadField, f.Kind)
		case f.Size == 0 || uint32(f.End()) > valueSize:
			return fmt.Errorf("%w: %v outside the %d-byte value", ErrBadField, f, valueSize)
		case f.Kind.Clock() && f.Size != 4 && f.Size != 8:
			return fmt.Errorf("%w: %v is neither 4 nor 8 bytes", ErrBadField, f)
		}
		if i == 0 {
			continue
		}
		prev := fs[i-1]
		switch {
		case prev.End() > int(f.Offset):
			return fmt.Errorf("%w: %v overlaps or precedes %v", ErrBadField, f, prev)
		case prev.End() == int(f.Offset) && prev.Kind == f.Kind && !f.Kind.Clock():
			return fmt.Errorf("%w: %v continues %v", ErrBadField, f, prev)
		}
	}
	return nil
}
