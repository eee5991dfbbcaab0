// Package wire defines the udpmapsync datagram format: a fixed header
// followed by map sections of stamped change records, or by map
// descriptors.
//
// The header, descriptors, repair and sync start bodies encode alike: an
// AppendTo method appends to a caller-owned buffer, allocating nothing
// when it has the capacity, and returns an error, appending nothing, for
// what the decoder would refuse. A change body, built record by record,
// is written in place by a [ChangeWriter]. Decoding validates every
// length before it reads and returns slices into the input; only
// descriptor names are copied, into strings. The header and the bounded
// bodies decode with an Unmarshal method, the repeated parts with an
// iterator ([Sections], [Records], [Descriptors]) whose Next returns
// io.EOF at the end.
// FORMAT.md in this directory is the byte-by-byte specification.
package wire

import "errors"

// Header layout. All multi-byte fields are big-endian.
const (
	Magic   uint16 = 0x756d // "um"
	Version uint8  = 5      // 5 added fragment records; see FORMAT.md "Versioning"

	HeaderSize        = 28 // magic..seq, see FORMAT.md
	SectionHeaderSize = 8  // map fingerprint, record count, byte length
	DescriptorSize    = 21 // fixed part of a descriptor, before the name
	MaxNameLen        = 15 // BPF_OBJ_NAME_LEN - 1
)

// MaxSeq is the largest sequence number a sender uses and a receiver
// accepts in change and announce datagrams (see [Header.CheckSeq]) and in
// the ranges of a [Nack]. A sender starting at 1 never reaches it: at a
// million datagrams a second it takes about 146,000 years. Bounding it
// keeps every receiver's arithmetic on sequence numbers (next+window,
// last+1) far from wrapping.
const MaxSeq uint64 = 1 << 62

// Kind says what follows the header.
type Kind uint8

// Datagram kinds.
const (
	KindChanges  Kind = 1 // map sections of change records
	KindAnnounce Kind = 2 // the sender's map descriptors and latest sequence number
	KindNack     Kind = 3 // a receiver's request to resend ranges of change datagrams, see [Nack]
	KindGone     Kind = 4 // the sender's answer to a [KindNack]: these ranges are no longer held

	// A full resync is a transfer of one node's maps to one requester, by
	// unicast; see [SyncStart] and FORMAT.md.
	KindSyncRequest Kind = 5 // a node asks a peer for a snapshot of its maps
	KindSyncStart   Kind = 6 // the peer's answer: refused, or where the snapshot stands, see [SyncStart]
	KindSnapshot    Kind = 7 // snapshot records: a [KindChanges] body of entries and remembered deletes
	KindSyncEnd     Kind = 8 // the snapshot's last datagram number: nothing follows
	KindSyncAck     Kind = 9 // the requester's progress: a [Nack] body of missing datagram numbers, or none

	// An address proves that it receives what is sent to it before it is
	// answered with more than it sent; see [Cookie] and FORMAT.md.
	KindCookie     Kind = 10 // instead of an answer: a [Cookie] the address must send back
	KindCookieEcho Kind = 11 // the [Cookie] sent back, from the address it was sent to

	// A digest round compares what two nodes hold, bucket by bucket of
	// a tree over the keys' hashes; see [Digest] and FORMAT.md.
	KindDigest     Kind = 12 // a node's digests of the children of one bucket, see [Digest]
	KindDigestDiff Kind = 13 // the peer's answer: which of those children differ, see [DigestDiff]

	maxKind = KindDigestDiff
)

// Header flags.
const (
	// FlagRetransmit marks a change datagram resent in answer to a
	// [KindNack]: otherwise the same bytes as the original. Only change
	// datagrams may carry it.
	FlagRetransmit uint8 = 1 << 0
	// FlagReady marks the announce of a node that has completed its
	// initial sync, and so may serve snapshots. Only announces carry it.
	FlagReady uint8 = 1 << 1
)

// Errors returned by decoding, and by encoding what decoding would
// refuse. Use errors.Is.
var (
	ErrShortBuffer = errors.New("wire: buffer too short")
	ErrBadMagic    = errors.New("wire: bad magic")
	ErrBadVersion  = errors.New("wire: unsupported version")
	ErrBadKind     = errors.New("wire: unknown datagram kind")
	ErrBadFlags    = errors.New("wire: unknown flags")
	ErrBadSeal     = errors.New("wire: seal length neither 0 nor SealSize")
	ErrBadOp       = errors.New("wire: unknown record operation")
	ErrBadLength   = errors.New("wire: length does not match content")
	ErrBadCount    = errors.New("wire: record count does not match content")
	ErrBadName     = errors.New("wire: invalid map name")
	ErrBadRange    = errors.New("wire: invalid sequence range")
	ErrBadStatus   = errors.New("wire: unknown sync status")
	ErrBadSeq      = errors.New("wire: sequence number 0 or above MaxSeq")
	ErrBadStamp    = errors.New("wire: invalid record stamp")
	ErrBadFragment = errors.New("wire: invalid fragment record")
)

// SealSize is the length of the seal that ends a sealed datagram: an
// 8-byte counter and a 16-byte AES-GCM tag (package seal's Overhead).
const SealSize = 24

// Header is the fixed start of every datagram.
type Header struct {
	// Sealed says that the body is encrypted and a seal of [SealSize]
	// bytes ends the datagram, after the body: the sender has a key.
	Sealed bool
	Kind   Kind
	Flags  uint8  // [FlagRetransmit] on a resent change datagram, [FlagReady] on an announce, else zero
	Count  uint16 // records (KindChanges, KindSnapshot), descriptors (KindAnnounce), ranges (KindNack, KindGone, KindSyncAck) or a [Cookie]'s slot
	Node   uint32 // sender node id
	Epoch  uint64 // sender boot epoch: changes whenever the sender restarts
	Seq    uint64 // sender sequence number of this datagram, see [Header.CheckSeq]; for the sync kinds, see [SyncSeq]; a [Cookie]'s tag
}

// SyncSeq packs a resync's request id and a datagram number of its
// snapshot into the Seq of a sync datagram: the id in the high 32 bits.
// A request carries number 0, a [KindSyncAck] the highest number up to
// which every datagram arrived (the last one + 1 once the end arrived
// too), a [KindSyncEnd] the number of the last.
func SyncSeq(id, n uint32) uint64 { return uint64(id)<<32 | uint64(n) }

// SplitSyncSeq is the inverse of [SyncSeq].
func SplitSyncSeq(seq uint64) (id, n uint32) { return uint32(seq >> 32), uint32(seq) }
