package wire

import "encoding/binary"

// Repair request layout, see FORMAT.md.
const (
	// NackFixedSize is the part of a [KindNack] or [KindGone] body before
	// the ranges: target node, target epoch, range count.
	NackFixedSize = 13
	// NackRangeSize is one range: first and last sequence number.
	NackRangeSize = 16
	// MaxNackRanges bounds the ranges of one request, and so how much one
	// datagram can ask a sender to do.
	MaxNackRanges = 16
)

// Range is an inclusive range of change sequence numbers.
type Range struct {
	First, Last uint64
}

// Nack is the body of a [KindNack] datagram, a receiver's request to
// resend change datagrams, or of a [KindGone] datagram, the sender's
// answer that it no longer holds them. Node and Epoch name the sender
// whose sequence numbers the ranges count; the header names the node
// that sends the Nack. Ranges are ascending, disjoint, start at 1 or
// later and end at [MaxSeq] or earlier. The array keeps decoding
// allocation-free.
type Nack struct {
	Node   uint32
	Epoch  uint64
	N      int // ranges in use
	Ranges [MaxNackRanges]Range
}

// Add appends the range [first, last] unless the Nack is full, merging it
// into the previous range when they touch. It reports whether the range
// is in.
func (n *Nack) Add(first, last uint64) bool {
	if n.N > 0 && n.Ranges[n.N-1].Last+1 >= first {
		n.Ranges[n.N-1].Last = max(n.Ranges[n.N-1].Last, last)
		return true
	}
	if n.N == MaxNackRanges {
		return false
	}
	n.Ranges[n.N] = Range{first, last}
	n.N++
	return true
}

// AppendTo appends the encoded body to b; the header's count is n.N. It
// returns [ErrBadCount] for no ranges and [ErrBadRange] for ranges that
// [Nack.Unmarshal] would refuse, appending nothing.
func (n *Nack) AppendTo(b []byte) ([]byte, error) {
	if err := n.check(); err != nil {
		return b, err
	}
	b = binary.BigEndian.AppendUint32(b, n.Node)
	b = binary.BigEndian.AppendUint64(b, n.Epoch)
	b = append(b, uint8(n.N))
	for _, r := range n.Ranges[:n.N] {
		b = binary.BigEndian.AppendUint64(b, r.First)
		b = binary.BigEndian.AppendUint64(b, r.Last)
	}
	return b, nil
}

// Unmarshal decodes a [KindNack] or [KindGone] body whose header count is
// count. It returns [ErrShortBuffer] or [ErrBadLength] when the body is
// not exactly the ranges it announces, [ErrBadCount] when it has no
// ranges, more than [MaxNackRanges], or not the header's count, and
// [ErrBadRange] for a range that is empty, starts at 0, ends above
// [MaxSeq] or does not follow the previous one.
func (n *Nack) Unmarshal(body []byte, count uint16) error {
	if len(body) < NackFixedSize {
		return ErrShortBuffer
	}
	c := int(body[12])
	switch {
	case c != int(count), c == 0, c > MaxNackRanges:
		return ErrBadCount
	case len(body) < NackFixedSize+c*NackRangeSize:
		return ErrShortBuffer
	case len(body) > NackFixedSize+c*NackRangeSize:
		return ErrBadLength
	}
	var out Nack
	out.Node = binary.BigEndian.Uint32(body)
	out.Epoch = binary.BigEndian.Uint64(body[4:])
	out.N = c
	for i := range c {
		r := body[NackFixedSize+i*NackRangeSize:]
		out.Ranges[i] = Range{binary.BigEndian.Uint64(r), binary.BigEndian.Uint64(r[8:])}
	}
	if err := out.check(); err != nil {
		return err
	}
	*n = out
	return nil
}

func (n *Nack) check() error {
	if n.N <= 0 || n.N > MaxNackRanges {
		return ErrBadCount
	}
	var prev uint64 // last of the previous range; sequence numbers start at 1
	for _, r := range n.Ranges[:n.N] {
		if r.First <= prev || r.Last < r.First || r.Last > MaxSeq {
			return ErrBadRange
		}
		prev = r.Last
	}
	return nil
}
