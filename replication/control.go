package replication

import (
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/udpmapsync/udpmapsync/wire"
)

// controlSender builds and sends this node's control datagrams (repair
// requests and answers, the resync handshake) by unicast. Each part of
// the protocol that sends them has its own, with its own buffer.
type controlSender struct {
	tr     Transport
	node   uint32
	epoch  uint64
	sealed bool // every header says its datagram is sealed
	stats  *Stats
	log    *slog.Logger
	limit  *limiter
	buf    []byte
	out    [1][]byte
}

// controlSize is the largest control datagram: a header and a full Nack.
const controlSize = wire.HeaderSize + wire.NackFixedSize + wire.MaxNackRanges*wire.NackRangeSize

func newControlSender(tr Transport, node uint32, epoch uint64, sealed bool, stats *Stats, log *slog.Logger, limit *limiter) controlSender {
	return controlSender{tr: tr, node: node, epoch: epoch, sealed: sealed, stats: stats, log: log, limit: limit,
		buf: make([]byte, 0, max(controlSize, wire.HeaderSize+wire.SyncStartSize, wire.HeaderSize+wire.DigestSize))}
}

// send sends a datagram of kind k with sequence field seq to addr, its
// body appended by body (nil for none). A failure is counted, logged at a
// limited rate and returned.
func (c *controlSender) send(addr netip.AddrPort, k wire.Kind, count uint16, seq uint64, body func([]byte) ([]byte, error)) error {
	h := wire.Header{Kind: k, Count: count, Node: c.node, Epoch: c.epoch, Seq: seq, Sealed: c.sealed}
	b, err := h.AppendTo(c.buf[:0])
	if err == nil && body != nil {
		b, err = body(b)
	}
	if err != nil {
		return fmt.Errorf("encode %v datagram: %w", k, err)
	}
	c.out[0] = b
	if err := c.tr.SendTo(addr, c.out[:]); err != nil {
		c.failed(err)
		return err
	}
	return nil
}

// nack sends n, a [wire.KindNack], [wire.KindGone] or [wire.KindSyncAck]
// body, to addr; an empty n sends the header alone.
func (c *controlSender) nack(addr netip.AddrPort, k wire.Kind, seq uint64, n *wire.Nack) error {
	if n.N == 0 {
		return c.send(addr, k, 0, seq, nil)
	}
	return c.send(addr, k, uint16(n.N), seq, n.AppendTo)
}

// nackSize is the length of a datagram carrying n.
func nackSize(n *wire.Nack) int {
	if n.N == 0 {
		return wire.HeaderSize
	}
	return wire.HeaderSize + wire.NackFixedSize + n.N*wire.NackRangeSize
}

func (c *controlSender) failed(err error) {
	c.stats.SendErrors.Add(1)
	if s, ok := c.limit.allow(reasonSend); ok {
		c.log.Error("sending a control datagram failed", "error", err, "suppressed", s)
	}
}
