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

// MarshalTo writes h at the start of b and returns the number of bytes
// written, [HeaderSize]. It writes the seal length as 0: version 1 has no
// authentication seal. Fields are written as they are; [Header.Unmarshal]
// is where they are checked.
func (h *Header) MarshalTo(b []byte) (int, error) {
	if len(b) < HeaderSize {
		return 0, ErrShortBuffer
	}
	binary.BigEndian.PutUint16(b[offsetMagic:], Magic)
	b[offsetVersion] = Version
	b[offsetKind] = uint8(h.Kind)
	b[offsetFlags] = h.Flags
	b[offsetSeal] = 0
	binary.BigEndian.PutUint16(b[offsetCount:], h.Count)
	binary.BigEndian.PutUint32(b[offsetNode:], h.Node)
	binary.BigEndian.PutUint64(b[offsetEpoch:], h.Epoch)
	binary.BigEndian.PutUint64(b[offsetSeq:], h.Seq)
	return HeaderSize, nil
}

// Unmarshal reads the header at the start of b, which must be a whole
// datagram: the body starts at b[HeaderSize:]. It rejects anything a
// version 1 receiver cannot interpret with [ErrShortBuffer], [ErrBadMagic],
// [ErrBadVersion], [ErrBadKind], [ErrBadFlags] or [ErrBadSeal], leaving h
// unchanged. The count is not checked against the body here: the body
// decoders ([Sections], [ParseDescriptors]) do that.
func (h *Header) Unmarshal(b []byte) error {
	switch {
	case len(b) < HeaderSize:
		return ErrShortBuffer
	case binary.BigEndian.Uint16(b[offsetMagic:]) != Magic:
		return ErrBadMagic
	case b[offsetVersion] != Version:
		return ErrBadVersion
	case b[offsetKind] < uint8(KindChanges) || b[offsetKind] > uint8(maxKind):
		return ErrBadKind
	case b[offsetFlags]&^allowedFlags(Kind(b[offsetKind])) != 0:
		return ErrBadFlags
	case b[offsetSeal] != 0:
		// Reserved for datagram authentication, which a later version
		// defines; a version 1 receiver cannot verify a seal, so it must
		// not accept a datagram that carries one.
		return ErrBadSeal
	}
	*h = Header{
		Kind:  Kind(b[offsetKind]),
		Flags: b[offsetFlags],
		Count: binary.BigEndian.Uint16(b[offsetCount:]),
		Node:  binary.BigEndian.Uint32(b[offsetNode:]),
		Epoch: binary.BigEndian.Uint64(b[offsetEpoch:]),
		Seq:   binary.BigEndian.Uint64(b[offsetSeq:]),
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
