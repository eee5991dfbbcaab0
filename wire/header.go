package wire

import "encoding/binary"

// Header field offsets, see FORMAT.md.
const (
	offsetMagic   = 0
	offsetVersion = 2
	offsetKind    = 3
	offsetFlags   = 4
	offsetSeal    = 5
	offsetCount   = 6
	offsetNode    = 8
	offsetEpoch   = 12
	offsetSeq     = 20
)

// AppendTo appends the [HeaderSize] bytes of h to b and returns the
// extended slice. It writes the seal length as [SealSize] when h is
// Sealed, else 0; sealing the datagram is package seal's. It returns [ErrBadKind] for a kind that
// [Header.Unmarshal] would refuse and [ErrBadFlags] for flags that kind
// may not carry, appending nothing. Count, node, epoch and seq are
// written as they are; see [Header.CheckSeq] for the sequence number.
//
// To write the header in place at the start of a datagram d that already
// has room for it (len(d) >= HeaderSize), as a sender does once the body
// behind it is complete, call
//
//	_, err := h.AppendTo(d[:0])
//
// which overwrites d[:HeaderSize] without allocating and leaves the rest
// of d alone.
func (h *Header) AppendTo(b []byte) ([]byte, error) {
	if err := checkKindFlags(h.Kind, h.Flags); err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint16(b, Magic)
	var sealLen uint8
	if h.Sealed {
		sealLen = SealSize
	}
	b = append(b, Version, uint8(h.Kind), h.Flags, sealLen)
	b = binary.BigEndian.AppendUint16(b, h.Count)
	b = binary.BigEndian.AppendUint32(b, h.Node)
	b = binary.BigEndian.AppendUint64(b, h.Epoch)
	return binary.BigEndian.AppendUint64(b, h.Seq), nil
}

// Unmarshal reads the header at the start of b, which must be a whole
// datagram: the body starts at b[HeaderSize:]. It rejects anything a
// version 5 receiver cannot interpret with [ErrShortBuffer], [ErrBadMagic],
// [ErrBadVersion], [ErrBadKind], [ErrBadFlags] or [ErrBadSeal], leaving h
// unchanged. The count is not checked against the body here: the body
// decoders ([Sections], [Descriptors], [Nack.Unmarshal]) do that. Nor is
// the sequence number, whose meaning depends on the kind: see
// [Header.CheckSeq].
func (h *Header) Unmarshal(b []byte) error {
	switch {
	case len(b) < HeaderSize:
		return ErrShortBuffer
	case binary.BigEndian.Uint16(b[offsetMagic:]) != Magic:
		return ErrBadMagic
	case b[offsetVersion] != Version:
		return ErrBadVersion
	}
	if err := checkKindFlags(Kind(b[offsetKind]), b[offsetFlags]); err != nil {
		return err
	}
	if s := b[offsetSeal]; s != 0 && s != SealSize {
		return ErrBadSeal
	}
	*h = Header{
		Sealed: b[offsetSeal] == SealSize,
		Kind:   Kind(b[offsetKind]),
		Flags:  b[offsetFlags],
		Count:  binary.BigEndian.Uint16(b[offsetCount:]),
		Node:   binary.BigEndian.Uint32(b[offsetNode:]),
		Epoch:  binary.BigEndian.Uint64(b[offsetEpoch:]),
		Seq:    binary.BigEndian.Uint64(b[offsetSeq:]),
	}
	return nil
}

// MarkedSealed reports whether the header at the start of d says that
// its datagram is sealed, without reading the rest: a sealing layer
// checks it before it seals a datagram whose header the protocol wrote
// with [Header.Sealed] set. It returns false for d shorter than a header.
func MarkedSealed(d []byte) bool { return len(d) >= HeaderSize && d[offsetSeal] == SealSize }

// CheckSeq returns [ErrBadSeq] for a [KindChanges] header whose Seq is 0
// or above [MaxSeq], and for a [KindAnnounce] header whose Seq is above
// MaxSeq (an announce carries 0 while its sender has sent no change
// datagram yet). It returns nil for every other header: the sync kinds
// pack other numbers into Seq (see [SyncSeq]), and the repair kinds carry
// 0. A receiver calls it after [Header.Unmarshal], before it uses Seq.
func (h *Header) CheckSeq() error {
	switch h.Kind {
	case KindChanges:
		if h.Seq == 0 || h.Seq > MaxSeq {
			return ErrBadSeq
		}
	case KindAnnounce:
		if h.Seq > MaxSeq {
			return ErrBadSeq
		}
	}
	return nil
}

// checkKindFlags returns [ErrBadKind] for a kind this version does not
// define and [ErrBadFlags] for flags that kind may not carry.
func checkKindFlags(k Kind, flags uint8) error {
	switch {
	case k < KindChanges || k > maxKind:
		return ErrBadKind
	case flags&^allowedFlags(k) != 0:
		return ErrBadFlags
	}
	return nil
}

// allowedFlags is the set of flags a datagram of kind k may carry.
func allowedFlags(k Kind) uint8 {
	switch k {
	case KindChanges:
		return FlagRetransmit
	case KindAnnounce:
		return FlagReady
	}
	return 0
}
