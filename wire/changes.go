package wire

import (
	"encoding/binary"
	"io"

	"github.com/udpmapsync/udpmapsync/ops"
)

// Section header field offsets, see FORMAT.md.
const (
	offsetSectionMap   = 0
	offsetSectionCount = 4
	offsetSectionLen   = 6
)

// Record layout: the op byte, then the key, then (updates only) the value.
const (
	offsetRecordOp  = 0
	offsetRecordKey = 1
)

// Limits of the 16-bit count and length fields. A record is at least its
// op byte, so a section within maxSectionLen also holds at most 0xffff
// records: its 16-bit count needs no limit of its own.
const (
	maxCount      = 0xffff // records in a datagram (Header.Count)
	maxSectionLen = 0xffff // record bytes in a section
)

// ChangeWriter builds one [KindChanges] datagram in a caller's buffer
// without allocating. Records of one map appended back to back share a
// section; the writer opens a new section when the map changes or the
// open section's 16-bit length would overflow.
//
// The zero value has no buffer: call [ChangeWriter.Reset] first.
type ChangeWriter struct {
	buf      []byte
	n        int    // bytes written, header included
	count    int    // records written
	section  int    // offset of the open section's header; 0 if none is open
	sectionN int    // records in the open section
	fp       uint32 // map of the open section
}

// Reset starts a new datagram in buf; len(buf) is the maximum datagram
// size. buf must hold at least a [Header].
func (w *ChangeWriter) Reset(buf []byte) {
	if len(buf) < HeaderSize {
		panic("wire: ChangeWriter buffer shorter than HeaderSize")
	}
	*w = ChangeWriter{buf: buf, n: HeaderSize}
}

// Append adds one change record of the map with fingerprint fp. value is
// written for [ops.Update] only. Key and value sizes are not checked: they
// must be the map's, since the receiver knows them only from the map.
//
// Append returns false and writes nothing if the record, plus a section
// header when it opens a section, does not fit in the buffer or the
// datagram already holds the 65535 records [Header.Count] can count.
// It panics if op is neither [ops.Update] nor [ops.Delete]: no receiver could
// decode the datagram.
func (w *ChangeWriter) Append(fp uint32, op ops.Op, key, value []byte) bool {
	size := offsetRecordKey + len(key)
	switch op {
	case ops.Update:
		size += len(value)
	case ops.Delete:
		value = nil
	default:
		panic("wire: ChangeWriter.Append with unknown op")
	}
	if w.count == maxCount || size > maxSectionLen {
		return false
	}
	open := w.section != 0 && w.fp == fp && w.n-w.section-SectionHeaderSize+size <= maxSectionLen
	need := size
	if !open {
		need += SectionHeaderSize
	}
	if need > len(w.buf)-w.n {
		return false
	}
	if !open {
		w.section, w.sectionN, w.fp = w.n, 0, fp
		binary.BigEndian.PutUint32(w.buf[w.n+offsetSectionMap:], fp)
		w.n += SectionHeaderSize
	}
	w.buf[w.n+offsetRecordOp] = byte(op)
	copy(w.buf[w.n+offsetRecordKey:], key)
	copy(w.buf[w.n+offsetRecordKey+len(key):], value)
	w.n += size
	w.count++
	w.sectionN++
	// Keep the section header current, so the buffer is always a complete
	// body and Finish only has the datagram header left to write.
	binary.BigEndian.PutUint16(w.buf[w.section+offsetSectionCount:], uint16(w.sectionN))
	binary.BigEndian.PutUint16(w.buf[w.section+offsetSectionLen:], uint16(w.n-w.section-SectionHeaderSize))
	return true
}

// Count returns the number of records appended since [ChangeWriter.Reset].
func (w *ChangeWriter) Count() int { return w.count }

// Len returns the datagram size so far, header included.
func (w *ChangeWriter) Len() int { return w.n }

// Finish writes h as the datagram header, with Kind set to [KindChanges]
// (unless h is a [KindSnapshot], which has the same body) and Count to
// the records appended, and returns the datagram: the
// buffer's first [ChangeWriter.Len] bytes. A datagram without records is
// valid. Appending after Finish continues the same datagram; Finish again
// to rewrite its header.
//
// It panics if h.Flags holds a flag the kind may not carry (a change
// datagram carries [FlagRetransmit] at most, a snapshot none): no
// receiver could decode the datagram.
func (w *ChangeWriter) Finish(h Header) []byte {
	if h.Kind != KindSnapshot {
		h.Kind = KindChanges
	}
	h.Count = uint16(w.count)
	// In place: Reset checked that the buffer holds a header, and the
	// kind is valid, so only the caller's flags can be refused.
	if _, err := h.AppendTo(w.buf[:0]); err != nil {
		panic("wire: ChangeWriter.Finish with a header it cannot write: " + err.Error())
	}
	return w.buf[:w.n]
}

// Section is one map's run of change records in a [KindChanges] body.
type Section struct {
	Map   uint32 // fingerprint of the map, see [Descriptor.Fingerprint]
	Count uint16 // records in Data
	Data  []byte // the records; aliases the datagram
}

// Sections iterates over the sections of a [KindChanges] body without
// allocating. It checks the section headers only: decode the records of
// each section with [Records] once the map, and so its key and value
// sizes, is known. A receiver can thus skip the sections of maps it does
// not know.
type Sections struct {
	body []byte
	left int // records the header count still expects
	err  error
}

// Reset starts iterating over body, the datagram after its header, whose
// header count is count.
func (s *Sections) Reset(body []byte, count uint16) {
	*s = Sections{body: body, left: int(count)}
}

// Next returns the next section, or io.EOF once the sections have
// accounted for the header count and used up the body. It returns
// [ErrShortBuffer] if a section header or its records are cut off,
// [ErrBadCount] unless the body holds exactly the header count of records
// in sections of at least one record, and keeps returning the same error
// after one.
func (s *Sections) Next() (Section, error) {
	if s.err != nil {
		return Section{}, s.err
	}
	if s.left == 0 || len(s.body) == 0 {
		if s.left != 0 || len(s.body) != 0 {
			return s.fail(ErrBadCount)
		}
		return s.fail(io.EOF)
	}
	if len(s.body) < SectionHeaderSize {
		return s.fail(ErrShortBuffer)
	}
	sec := Section{
		Map:   binary.BigEndian.Uint32(s.body[offsetSectionMap:]),
		Count: binary.BigEndian.Uint16(s.body[offsetSectionCount:]),
	}
	n := int(binary.BigEndian.Uint16(s.body[offsetSectionLen:]))
	if len(s.body)-SectionHeaderSize < n {
		return s.fail(ErrShortBuffer)
	}
	// An empty section is never written; accepting one would let a
	// datagram smuggle any number of them past the count.
	if sec.Count == 0 || int(sec.Count) > s.left {
		return s.fail(ErrBadCount)
	}
	end := SectionHeaderSize + n
	sec.Data = s.body[SectionHeaderSize:end:end]
	s.body = s.body[end:]
	s.left -= int(sec.Count)
	return sec, nil
}

func (s *Sections) fail(err error) (Section, error) {
	s.err, s.body = err, nil
	return Section{}, err
}

// Record is one change. Key and Value alias the datagram.
type Record struct {
	Op    ops.Op
	Key   []byte
	Value []byte // nil for [ops.Delete]
}

// Records iterates over the change records of one [Section] without
// allocating.
type Records struct {
	data      []byte
	left      int // records the section count still expects
	keySize   int
	valueSize int
	err       error
}

// Reset starts iterating over the records of s, a section of a map with
// the given key and value sizes.
func (r *Records) Reset(s Section, keySize, valueSize int) {
	*r = Records{data: s.Data, left: int(s.Count), keySize: keySize, valueSize: valueSize}
}

// Next returns the next record, or io.EOF once the section's count of
// records has been read and its data exactly consumed. It returns
// [ErrBadLength] if the data runs out before the count or has bytes left
// after it, [ErrBadOp] for an unknown operation, and keeps returning the
// same error after one.
func (r *Records) Next() (Record, error) {
	if r.err != nil {
		return Record{}, r.err
	}
	if r.left == 0 {
		if len(r.data) != 0 {
			return r.fail(ErrBadLength)
		}
		return r.fail(io.EOF)
	}
	if len(r.data) == 0 {
		return r.fail(ErrBadLength)
	}
	keyEnd := offsetRecordKey + r.keySize
	end := keyEnd
	op := ops.Op(r.data[offsetRecordOp])
	switch op {
	case ops.Update:
		end += r.valueSize
	case ops.Delete:
	default:
		return r.fail(ErrBadOp)
	}
	if len(r.data) < end {
		return r.fail(ErrBadLength)
	}
	rec := Record{Op: op, Key: r.data[offsetRecordKey:keyEnd:keyEnd]}
	if op == ops.Update {
		rec.Value = r.data[keyEnd:end:end]
	}
	r.data = r.data[end:]
	r.left--
	return rec, nil
}

func (r *Records) fail(err error) (Record, error) {
	r.err, r.data = err, nil
	return Record{}, err
}
