package wire

import (
	"encoding/binary"
	"io"
	"math/bits"

	"github.com/udpmapsync/udpmapsync/ops"
)

// Section header field offsets, see FORMAT.md.
const (
	offsetSectionMap   = 0
	offsetSectionCount = 4
	offsetSectionLen   = 6
)

// Record layout: the op byte, then the stamp part, then the key, then
// (updates only) the value. The stamp part is a uvarint offset from the
// body's base stamp or, with [RecordRelayed] in the op byte, the stamp
// and the origin in full.
const (
	offsetRecordOp    = 0
	offsetRecordStamp = 1
)

// Stamps, see FORMAT.md "Stamps".
const (
	// StampBaseSize is the length of the base stamp that starts every
	// changes and snapshot body: a big-endian u64, the stamp from which
	// the records in the offset form count.
	StampBaseSize = 8
	// RecordRelayed is the op byte bit of a record in the relayed form:
	// its stamp part is the stamp and the origin in full, not an offset
	// from the base. It lets a node send versions that are not its own,
	// and stamps older than the base, and the unstamped entries of a
	// snapshot.
	RecordRelayed = 0x80
	// RelayedStampSize is the stamp part of a relayed record: stamp u64,
	// origin u32. No stamp part is longer (an offset takes at most 10
	// bytes), so a datagram that holds a map's largest update in the
	// relayed form holds any record of the map.
	RelayedStampSize = 12
)

// Fragments, see FORMAT.md "Fragments": an update too large for one
// datagram travels as fragment records, each one chunk of the value.
const (
	// RecordFragment is the op byte bit of a fragment record: an update
	// whose key is followed by the fragment's index and count
	// ([FragmentHeaderSize]) and one chunk of the value instead of the
	// whole value.
	RecordFragment = 0x40
	// FragmentHeaderSize is the index (u8) and count (u8) of a fragment
	// record, after its key.
	FragmentHeaderSize = 2
	// MaxFragments is the most fragments one value is split into.
	MaxFragments = 255
)

// Limits of the 16-bit count and length fields. A record is at least its
// op byte, so a section within maxSectionLen also holds at most 0xffff
// records: its 16-bit count needs no limit of its own.
const (
	maxCount      = 0xffff // records in a datagram (Header.Count)
	maxSectionLen = 0xffff // record bytes in a section
)

// relayed reports whether a record of origin with stamp goes in the
// relayed form in a datagram of node with base: unless it is node's own
// and at or after the base, its stamp has no offset from the base.
// Unstamped records (stamp 0) are always relayed.
func relayed(node, origin uint32, base, stamp uint64) bool {
	return origin != node || stamp < base || stamp == 0
}

// uvarintLen is the length of x as a uvarint, as binary.PutUvarint
// writes it: 7 bits a byte.
func uvarintLen(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

// StampSize is the wire size of a record's stamp part: the record of
// origin with stamp, in a datagram that node sends with the base stamp
// base. It is [RelayedStampSize] for a record that [ChangeWriter.Append]
// writes in the relayed form, and otherwise the 1 to 10 bytes of the
// offset stamp-base. A record is 1 + StampSize + key size (+ value size
// for an update) bytes, so a caller can account for a datagram's bytes
// before it writes them.
func StampSize(node, origin uint32, base, stamp uint64) int {
	if relayed(node, origin, base, stamp) {
		return RelayedStampSize
	}
	return uvarintLen(stamp - base)
}

// FragmentRange returns the bytes [lo, hi) of a value of valueSize bytes
// that fragment index of count carries: the value is cut into count
// chunks of ceil(valueSize / count) bytes, the last one shorter. ok is
// false, and the fragment invalid, unless 2 <= count <= [MaxFragments],
// index < count and every chunk, the last included, holds a byte.
func FragmentRange(valueSize, index, count int) (lo, hi int, ok bool) {
	if count < 2 || count > MaxFragments || index < 0 || index >= count || valueSize < count {
		return 0, 0, false
	}
	chunk := (valueSize + count - 1) / count
	if (count-1)*chunk >= valueSize {
		return 0, 0, false // the last chunk would be empty
	}
	return index * chunk, min(valueSize, (index+1)*chunk), true
}

// FragmentCount returns into how many fragments a sender cuts a value of
// valueSize bytes so that no chunk is longer than room bytes: at least
// 2, or 0 if that takes more than [MaxFragments].
func FragmentCount(valueSize, room int) int {
	if room < 1 {
		return 0
	}
	n := max(2, (valueSize+room-1)/room)
	for n <= MaxFragments {
		if _, hi, ok := FragmentRange(valueSize, 0, n); ok && hi <= room {
			return n
		}
		n++
	}
	return 0
}

// FragmentRoom is how many value bytes a fragment record of a map with
// keySize-byte keys carries at most in a datagram of payload bytes that
// holds nothing else: the payload less the header, the base stamp, a
// section header, the op byte, the longest stamp part, the key and the
// fragment's index and count.
func FragmentRoom(payload, keySize int) int {
	return payload - HeaderSize - StampBaseSize - SectionHeaderSize - 1 - RelayedStampSize - keySize - FragmentHeaderSize
}

// ChangeWriter builds one [KindChanges] or [KindSnapshot] datagram in a
// caller's buffer without allocating. Records of one map appended back to
// back share a section; the writer opens a new section when the map
// changes or the open section's 16-bit length would overflow.
//
// The zero value has no buffer: call [ChangeWriter.Reset] first.
type ChangeWriter struct {
	buf      []byte
	n        int    // bytes written, header and base included
	count    int    // records written
	section  int    // offset of the open section's header; 0 if none is open
	sectionN int    // records in the open section
	fp       uint32 // map of the open section
	node     uint32 // the sending node: the origin of records in the offset form
	base     uint64 // the base stamp, from which those records' offsets count
}

// Reset starts a new datagram in buf for node to send, with base as its
// base stamp, which it writes at once; len(buf) is the maximum datagram
// size. buf must hold at least a [Header] and the base ([StampBaseSize]).
// node must be the node id that the header passed to
// [ChangeWriter.Finish] carries: a receiver takes it as the origin of
// the records in the offset form.
//
// Any base is valid; the oldest stamp among node's own records in the
// datagram keeps their offsets shortest, since a record older than the
// base goes in the 12-byte relayed form.
func (w *ChangeWriter) Reset(buf []byte, node uint32, base uint64) {
	if len(buf) < HeaderSize+StampBaseSize {
		panic("wire: ChangeWriter buffer shorter than HeaderSize+StampBaseSize")
	}
	*w = ChangeWriter{buf: buf, n: HeaderSize + StampBaseSize, node: node, base: base}
	binary.BigEndian.PutUint64(buf[HeaderSize:], base)
}

// Append adds one change record of the map with fingerprint fp: op on key,
// at version (stamp, origin). value is written for [ops.Update] only. Key
// and value sizes are not checked: they must be the map's, since the
// receiver knows them only from the map.
//
// A record of the writer's node at or after the base stamp takes the
// offset form, of 1 + [StampSize] bytes of stamp; any other record, and
// an unstamped one (stamp 0 and origin 0), takes the relayed form
// ([RecordRelayed]). Append returns false and writes nothing if the
// record, plus a section header when it opens a section, does not fit in
// the buffer or the datagram already holds the 65535 records
// [Header.Count] can count.
//
// It panics if op is neither [ops.Update] nor [ops.Delete], or if exactly
// one of stamp and origin is 0: no receiver could decode the datagram.
func (w *ChangeWriter) Append(fp uint32, op ops.Op, stamp uint64, origin uint32, key, value []byte) bool {
	switch op {
	case ops.Update:
	case ops.Delete:
		value = nil
	default:
		panic("wire: ChangeWriter.Append with unknown op")
	}
	return w.put(fp, byte(op), stamp, origin, key, nil, value)
}

// AppendFragment adds fragment index of count of an update of the map
// with fingerprint fp at version (stamp, origin): a fragment record that
// carries the bytes of value that [FragmentRange] gives for them. value
// is the whole value, of the map's value size. It returns false and
// writes nothing if the record does not fit, as [ChangeWriter.Append].
//
// It panics if the fragment is invalid for a value of len(value) bytes,
// or if exactly one of stamp and origin is 0.
func (w *ChangeWriter) AppendFragment(fp uint32, stamp uint64, origin uint32, key, value []byte, index, count int) bool {
	lo, hi, ok := FragmentRange(len(value), index, count)
	if !ok {
		panic("wire: ChangeWriter.AppendFragment with an invalid index or count")
	}
	frag := [FragmentHeaderSize]byte{byte(index), byte(count)}
	return w.put(fp, byte(ops.Update)|RecordFragment, stamp, origin, key, frag[:], value[lo:hi])
}

// put writes one record: op (with [RecordFragment] if frag is set), the
// stamp part, the key, frag and value.
func (w *ChangeWriter) put(fp uint32, op byte, stamp uint64, origin uint32, key, frag, value []byte) bool {
	if (stamp == 0) != (origin == 0) {
		panic("wire: ChangeWriter.Append with a stamp but no origin, or an origin but no stamp")
	}
	rel := relayed(w.node, origin, w.base, stamp)
	stampSize := RelayedStampSize
	if !rel {
		stampSize = uvarintLen(stamp - w.base)
	}
	keyAt := offsetRecordStamp + stampSize
	size := keyAt + len(key) + len(frag) + len(value)
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
	rec := w.buf[w.n : w.n+size]
	if rel {
		rec[offsetRecordOp] = op | RecordRelayed
		binary.BigEndian.PutUint64(rec[offsetRecordStamp:], stamp)
		binary.BigEndian.PutUint32(rec[offsetRecordStamp+8:], origin)
	} else {
		rec[offsetRecordOp] = op
		binary.PutUvarint(rec[offsetRecordStamp:], stamp-w.base)
	}
	at := keyAt + copy(rec[keyAt:], key)
	at += copy(rec[at:], frag)
	copy(rec[at:], value)
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

// Len returns the datagram size so far, header and base stamp included.
func (w *ChangeWriter) Len() int { return w.n }

// Finish writes h as the datagram header, with Kind set to [KindChanges]
// (unless h is a [KindSnapshot], which has the same body) and Count to
// the records appended, and returns the datagram: the buffer's first
// [ChangeWriter.Len] bytes. A datagram without records, a header and the
// base stamp, is valid. Appending after Finish continues the same
// datagram; Finish again to rewrite its header.
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

// Section is one map's run of change records in a [KindChanges] or
// [KindSnapshot] body.
type Section struct {
	Map   uint32 // fingerprint of the map, see [Descriptor.Fingerprint]
	Count uint16 // records in Data
	Data  []byte // the records; aliases the datagram
}

// Sections iterates over the sections of a [KindChanges] or
// [KindSnapshot] body without allocating. It checks the base stamp's
// presence and the section headers only: decode the records of each
// section with [Records], given [Sections.Base], once the map, and so its
// key and value sizes, is known. A receiver can thus skip the sections of
// maps it does not know.
type Sections struct {
	body []byte
	base uint64
	left int // records the header count still expects
	err  error
}

// Reset starts iterating over body, the datagram after its header, whose
// header count is count. It reads the base stamp that starts the body; if
// the body is too short to hold one, [Sections.Next] returns
// [ErrShortBuffer].
func (s *Sections) Reset(body []byte, count uint16) {
	if len(body) < StampBaseSize {
		*s = Sections{err: ErrShortBuffer}
		return
	}
	*s = Sections{body: body[StampBaseSize:], base: binary.BigEndian.Uint64(body), left: int(count)}
}

// Base returns the body's base stamp, to pass to [Records.Reset]; 0 if
// the body is too short to hold one.
func (s *Sections) Base() uint64 { return s.base }

// Next returns the next section, or io.EOF once the sections have
// accounted for the header count and used up the body. It returns
// [ErrShortBuffer] if the base stamp, a section header or its records are
// cut off, [ErrBadCount] unless the body holds exactly the header count of
// records in sections of at least one record, and keeps returning the same
// error after one.
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
	Op ops.Op
	// Stamp and Origin are the version of the change: the stamp of the
	// write and the node that made it. Both are 0 for an unstamped entry
	// (which only snapshots carry), and both are non-zero otherwise.
	Stamp  uint64
	Origin uint32
	Key    []byte
	Value  []byte // nil for [ops.Delete]; a fragment's chunk for a fragment
	// Fragment places a fragment record's chunk in the value; its Count
	// is 0 for a whole record.
	Fragment Fragment
}

// Fragment is the place of a fragment record's chunk in its value.
type Fragment struct {
	Index, Count int // the chunk's index, of Count; Count is 0 for a whole record
	Offset       int // the chunk's first byte in the value
	Size         int // the whole value's size: the map's value size
}

// Records iterates over the change records of one [Section] without
// allocating.
type Records struct {
	data      []byte
	left      int // records the section count still expects
	keySize   int
	valueSize int
	base      uint64 // the body's base stamp
	node      uint32 // the header's node: the origin of records in the offset form
	err       error
}

// Reset starts iterating over the records of s, a section of a map with
// the given key and value sizes, in a body with the base stamp base (see
// [Sections.Base]) of a datagram from node (the header's Node).
func (r *Records) Reset(s Section, keySize, valueSize int, base uint64, node uint32) {
	*r = Records{data: s.Data, left: int(s.Count), keySize: keySize, valueSize: valueSize, base: base, node: node}
}

// Next returns the next record, or io.EOF once the section's count of
// records has been read and its data exactly consumed. It returns
// [ErrBadLength] if the data runs out before the count or has bytes left
// after it, [ErrBadOp] for an unknown operation or an op byte bit other
// than [RecordRelayed] and [RecordFragment], [ErrBadStamp] for a stamp
// part that gives no valid version (see FORMAT.md "Stamps"),
// [ErrBadFragment] for a fragment of a delete or one whose index and
// count [FragmentRange] refuses for the map's value size, and keeps
// returning the same error after one. A fragment record's Value is its
// chunk, at [Fragment.Offset] in the value.
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
	b := r.data[offsetRecordOp]
	rec := Record{Op: ops.Op(b &^ (RecordRelayed | RecordFragment))}
	if !rec.Op.Valid() {
		return r.fail(ErrBadOp)
	}
	frag := b&RecordFragment != 0
	if frag && rec.Op != ops.Update {
		return r.fail(ErrBadFragment) // a delete has no value to cut
	}
	keyAt := offsetRecordStamp
	if b&RecordRelayed != 0 {
		keyAt += RelayedStampSize
		if len(r.data) < keyAt {
			return r.fail(ErrBadLength)
		}
		rec.Stamp = binary.BigEndian.Uint64(r.data[offsetRecordStamp:])
		rec.Origin = binary.BigEndian.Uint32(r.data[offsetRecordStamp+8:])
		// Unstamped is (0, 0); a stamp of no node or a node's write
		// without a stamp is no version.
		if (rec.Stamp == 0) != (rec.Origin == 0) {
			return r.fail(ErrBadStamp)
		}
	} else {
		off, n := binary.Uvarint(r.data[offsetRecordStamp:])
		switch {
		case n == 0 && len(r.data)-offsetRecordStamp < binary.MaxVarintLen64:
			return r.fail(ErrBadLength) // the data ends inside the offset
		case n <= 0: // more than 10 bytes or 64 bits
			return r.fail(ErrBadStamp)
		case n > 1 && r.data[offsetRecordStamp+n-1] == 0:
			// Not the shortest form: each offset has one encoding, so
			// a record re-encodes to the bytes it came from.
			return r.fail(ErrBadStamp)
		}
		var carry uint64
		rec.Stamp, carry = bits.Add64(r.base, off, 0)
		// An offset-form record is a stamped write of the header's node,
		// and node 0 is no node.
		if carry != 0 || rec.Stamp == 0 || r.node == 0 {
			return r.fail(ErrBadStamp)
		}
		rec.Origin = r.node
		keyAt += n
	}
	keyEnd := keyAt + r.keySize
	valueAt, end := keyEnd, keyEnd
	if frag {
		valueAt += FragmentHeaderSize
		if len(r.data) < valueAt {
			return r.fail(ErrBadLength)
		}
		index, count := int(r.data[keyEnd]), int(r.data[keyEnd+1])
		lo, hi, ok := FragmentRange(r.valueSize, index, count)
		if !ok {
			return r.fail(ErrBadFragment)
		}
		rec.Fragment = Fragment{Index: index, Count: count, Offset: lo, Size: r.valueSize}
		end = valueAt + hi - lo
	} else if rec.Op == ops.Update {
		end += r.valueSize
	}
	if len(r.data) < end {
		return r.fail(ErrBadLength)
	}
	rec.Key = r.data[keyAt:keyEnd:keyEnd]
	if rec.Op == ops.Update {
		rec.Value = r.data[valueAt:end:end]
	}
	r.data = r.data[end:]
	r.left--
	return rec, nil
}

func (r *Records) fail(err error) (Record, error) {
	r.err, r.data = err, nil
	return Record{}, err
}
