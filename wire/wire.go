// Package wire defines the udpmapsync datagram format: a fixed header
// followed by map sections of change records, or by map descriptors.
//
// Encoding appends into caller-owned buffers and never allocates; decoding
// validates every length before it reads and returns slices into the input.
// FORMAT.md in this directory is the byte-by-byte specification.
package wire

import "errors"

// Header layout. All multi-byte fields are big-endian.
const (
	Magic   uint16 = 0x756d // "um"
	Version uint8  = 1

	HeaderSize        = 28 // magic..seq, see FORMAT.md
	SectionHeaderSize = 8  // map fingerprint, record count, byte length
	DescriptorSize    = 21 // fixed part of a descriptor, before the name
	MaxNameLen        = 15 // BPF_OBJ_NAME_LEN - 1
)

// Kind says what follows the header.
type Kind uint8

// Datagram kinds.
const (
	KindChanges  Kind = 1 // map sections of change records
	KindAnnounce Kind = 2 // the sender's map descriptors and latest sequence number
	KindNack     Kind = 3 // a receiver's request to resend ranges of change datagrams, see [Nack]
	KindGone     Kind = 4 // the sender's answer to a [KindNack]: these ranges are no longer held
)

// Header flags.
const (
	// FlagRetransmit marks a change datagram resent in answer to a
	// [KindNack]: otherwise the same bytes as the original. It is the only
	// flag, and only change datagrams may carry it.
	FlagRetransmit uint8 = 1 << 0
)

// Op is the operation of one change record.
type Op uint8

// Record operations.
const (
	OpUpdate Op = 1 // key and value follow
	OpDelete Op = 2 // only the key follows
)

// Errors returned by decoding. Use errors.Is.
var (
	ErrShortBuffer = errors.New("wire: buffer too short")
	ErrBadMagic    = errors.New("wire: bad magic")
	ErrBadVersion  = errors.New("wire: unsupported version")
	ErrBadKind     = errors.New("wire: unknown datagram kind")
	ErrBadFlags    = errors.New("wire: unknown flags")
	ErrBadSeal     = errors.New("wire: authentication seal not supported")
	ErrBadOp       = errors.New("wire: unknown record operation")
	ErrBadLength   = errors.New("wire: length does not match content")
	ErrBadCount    = errors.New("wire: record count does not match content")
	ErrBadName     = errors.New("wire: invalid map name")
	ErrBadRange    = errors.New("wire: invalid sequence range")
)

// Header is the fixed start of every datagram.
type Header struct {
	Kind  Kind
	Flags uint8  // [FlagRetransmit] on a resent change datagram, else zero
	Count uint16 // change records (KindChanges), descriptors (KindAnnounce) or ranges (KindNack, KindGone)
	Node  uint32 // sender node id
	Epoch uint64 // sender boot epoch: changes whenever the sender restarts
	Seq   uint64 // sender sequence number of this datagram
}
