// Package replication is the udpmapsync protocol: a [Node] turns captured
// map changes into sequenced datagrams, and applies the datagrams of its
// peers to the local maps.
//
// It reaches the kernel and the network only through the small interfaces
// [Source], [Target] and [Transport], so the protocol logic runs the same
// against in-memory fakes and against real maps and sockets.
package replication

import (
	"net/netip"
	"time"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/transport"
)

// Source yields the changes the sender replicates. [*loader.Capture]
// implements it.
type Source interface {
	// Read fills ch with the next change. Key and Value alias the source's
	// buffer until the next Read. Once the deadline has passed and nothing
	// is queued it returns an error wrapping os.ErrDeadlineExceeded.
	Read(ch *loader.Change) error
	// SetDeadline bounds the next Reads; the zero time means no deadline.
	SetDeadline(t time.Time)
	// Buffered reports the bytes queued behind the last Read: zero means the
	// source is drained.
	Buffered() int
	// Overflows counts the changes the source lost since it started because
	// they could not be queued: the peers then need a full resync.
	Overflows() (uint64, error)
}

// Target is a local map the receiver applies changes to. [*loader.Map]
// implements it.
type Target interface {
	// UpdateBatch writes len(keys)/keySize pairs packed back to back, in
	// order: a later duplicate key wins.
	UpdateBatch(keys, values []byte) error
	// DeleteBatch deletes the packed keys; absent keys are skipped and
	// counted in missing.
	DeleteBatch(keys []byte) (missing int, err error)
	// Lookup reads key's value into value and reports whether the map
	// holds key: the sender's check of a change that crossed an apply.
	Lookup(key, value []byte) (bool, error)
	// Dump calls fn with every entry of the map, a batch at a time, packed
	// into prefixes of keys and values; it stops at fn's first error. It
	// reads snapshots for peers and the local keys a snapshot may delete.
	Dump(keys, values []byte, fn func(keys, values []byte) error) error
}

// Transport moves datagrams between nodes. [*transport.UDP] implements it.
type Transport interface {
	// Send sends every datagram to the group, or to every configured peer.
	Send(dgrams [][]byte) error
	// SendTo sends every datagram to one address: repairs and repair
	// requests go only to the node that needs them. It may run
	// concurrently with Send and Receive.
	SendTo(addr netip.AddrPort, dgrams [][]byte) error
	// Receive blocks until at least one datagram arrives and returns what
	// arrived, in order; the packets alias the transport's buffers until the
	// next Receive. It returns an error once the transport is closed.
	Receive() ([]transport.Packet, error)
}
