package wire

import "encoding/binary"

// SyncStartSize is the length of a [KindSyncStart] body.
const SyncStartSize = 33

// SyncDeltaSize is the length of a [KindSyncRequest] body that asks for a
// delta resync: the sequence number, u64, of the first of the serving
// node's change datagrams the requester has not applied (see
// [AppendSyncDelta]).
const SyncDeltaSize = 8

// AppendSyncDelta appends the body of a delta [KindSyncRequest]: the
// requester applied every change datagram of the serving node before from.
func AppendSyncDelta(b []byte, from uint64) []byte { return binary.BigEndian.AppendUint64(b, from) }

// SyncDelta decodes the body of a delta [KindSyncRequest], exactly
// [SyncDeltaSize] bytes; from 0 asks for no delta and is [ErrBadLength].
func SyncDelta(body []byte) (from uint64, err error) {
	if err := exactly(body, SyncDeltaSize); err != nil {
		return 0, err
	}
	if from = binary.BigEndian.Uint64(body); from == 0 {
		return 0, ErrBadLength
	}
	return from, nil
}

// Answers to a [KindSyncRequest], in [SyncStart].Status.
const (
	SyncOK       uint8 = 0 // the snapshot follows
	SyncNotReady uint8 = 1 // the peer has not completed its own initial sync: ask another
	SyncBusy     uint8 = 2 // the peer serves as many snapshots as it will: ask again later
	// SyncPartial: the snapshot follows, but the peer lacks changes of
	// other nodes that it lost and cannot get before they are ready: the
	// requester resyncs from each other node as well.
	SyncPartial uint8 = 3
)

// SyncStart is the body of a [KindSyncStart] datagram: a node's answer to
// a request for a snapshot of its maps.
type SyncStart struct {
	// Status is [SyncOK], [SyncNotReady], [SyncBusy] or [SyncPartial].
	Status uint8
	// AsOf is the sequence number of the serving node's latest change
	// datagram when it began to read its maps: every change after it is
	// in a later datagram, so the requester continues that node's stream
	// at AsOf+1.
	AsOf uint64
	// Entries is about how many entries and deletes the snapshot holds:
	// what the serving node knows when it answers, for the requester's
	// progress lines. Nothing depends on it being exact.
	Entries uint64
	// Stamp is the serving node's clock when it answered, before it read
	// its maps: a key whose latest write the requester has from that node
	// and that the snapshot does not carry was deleted there by then.
	Stamp uint64
	// Since, unless 0, makes the snapshot a delta: it carries only the
	// entries and deletes whose version is stamped at or after Since, all
	// the requester can lack; 0 is a full snapshot. The requester infers
	// deletes (a key it has from the serving node that the snapshot does
	// not carry) only of versions stamped at or after Since.
	Since uint64
}

// AppendTo appends the encoded body, [SyncStartSize] bytes, to b. It
// returns [ErrBadStatus] for a status [SyncStart.Unmarshal] would refuse,
// appending nothing.
func (s *SyncStart) AppendTo(b []byte) ([]byte, error) {
	if s.Status > SyncPartial {
		return b, ErrBadStatus
	}
	b = append(b, s.Status)
	b = binary.BigEndian.AppendUint64(b, s.AsOf)
	b = binary.BigEndian.AppendUint64(b, s.Entries)
	b = binary.BigEndian.AppendUint64(b, s.Stamp)
	return binary.BigEndian.AppendUint64(b, s.Since), nil
}

// Unmarshal decodes a [KindSyncStart] body. It returns [ErrShortBuffer] or
// [ErrBadLength] unless the body is exactly [SyncStartSize] bytes, and
// [ErrBadStatus] for a status it does not know.
func (s *SyncStart) Unmarshal(body []byte) error {
	switch {
	case len(body) < SyncStartSize:
		return ErrShortBuffer
	case len(body) > SyncStartSize:
		return ErrBadLength
	case body[0] > SyncPartial:
		return ErrBadStatus
	}
	*s = SyncStart{
		Status:  body[0],
		AsOf:    binary.BigEndian.Uint64(body[1:]),
		Entries: binary.BigEndian.Uint64(body[9:]),
		Stamp:   binary.BigEndian.Uint64(body[17:]),
		Since:   binary.BigEndian.Uint64(body[25:]),
	}
	return nil
}
