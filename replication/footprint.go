package replication

import "fmt"

// Footprint is the state a node keeps that grows with what it sends and
// receives, each next to the bound it must stay within, for a simulator
// to check (see package sim).
type Footprint struct {
	// ResendBytes is the bytes of the datagrams the resend buffer holds,
	// at most ResendSize, its size ([Config.ResendBytes]).
	ResendBytes, ResendSize int
	// Peers is the peers tracked, at most 64.
	Peers int
	// Held and HeldBytes are the change datagrams held back behind a
	// missing one, and their bytes, for the peer with the most: at most
	// the receive window (4,096 datagrams, 8 MiB).
	Held, HeldBytes int
	// Transfers is the snapshot transfers served at once, at most 4.
	Transfers int
	// PendingBytes is the size of the datagram the sender's unsent
	// changes make, at most the table's payload.
	PendingBytes, Payload int
	// Keys is the keys the knowledge holds, deleted ones included;
	// Tombstones, the deletes it remembers that are still their key's
	// latest write: each at most the keys ever written.
	Keys, Tombstones int
	// Relayed is the entries a merge passed to the sender that it has
	// not taken yet.
	Relayed int
	// ReassemblyBytes is what the node holds of incomplete records, at
	// most ReassemblyLimit ([Config.ReassemblyBytes]).
	ReassemblyBytes, ReassemblyLimit int
	// CounterKeys is the keys the sum maps' targets keep contributions or
	// a reset of, at most CounterKeysBound: twice each map's max_entries
	// (see [CounterTarget.Keys]).
	CounterKeys, CounterKeysBound int
}

// Footprint reports the node's footprint. It reads the sender's state
// unlocked: call it between the steps of a stepped node, never while
// [Node.Run] runs.
func (n *Node) Footprint() Footprint {
	f := Footprint{PendingBytes: n.sender.pend.size, Payload: n.sender.payload, Relayed: int(n.relay.waiting.Load())}
	if n.resend != nil {
		f.ResendSize = len(n.resend.arena)
		n.resend.mu.Lock()
		for seq := n.resend.first; seq < n.resend.first+n.resend.n; seq++ {
			f.ResendBytes += int(n.resend.lens[seq%uint64(len(n.resend.lens))])
		}
		n.resend.mu.Unlock()
	}
	f.ReassemblyBytes, f.ReassemblyLimit = n.apply.reasm.held, n.apply.reasm.limit
	for _, m := range n.sender.table.maps {
		if t, ok := m.Target.(*CounterTarget); ok {
			keys, bound := t.Keys()
			f.CounterKeys += keys
			f.CounterKeysBound += bound
		}
	}
	n.mu.Lock()
	f.Peers, f.Transfers = len(n.peers.byNode), len(n.server.transfers)
	for _, p := range n.peers.byNode {
		f.Held, f.HeldBytes = max(f.Held, p.stream.n), max(f.HeldBytes, p.stream.bytes)
	}
	n.mu.Unlock()
	h := n.know.Lock()
	f.Keys = h.Entries()
	for m := range n.sender.table.maps {
		for range h.Tombstones(m) {
			f.Tombstones++
		}
	}
	h.Unlock()
	return f
}

// Exceeded describes the first bound of its own the footprint exceeds,
// "" if none. The bounds on keys depend on what was written: the
// caller's to check.
func (f Footprint) Exceeded() string {
	switch {
	case f.ResendBytes > f.ResendSize:
		return fmt.Sprintf("the resend buffer holds %d bytes, of %d", f.ResendBytes, f.ResendSize)
	case f.Peers > maxPeers:
		return fmt.Sprintf("%d peers tracked, of %d", f.Peers, maxPeers)
	case f.Held > maxHeld || f.HeldBytes > maxHeldBytes:
		return fmt.Sprintf("%d datagrams (%d bytes) held for one peer, of %d (%d bytes)", f.Held, f.HeldBytes, maxHeld, maxHeldBytes)
	case f.Transfers > maxTransfers:
		return fmt.Sprintf("%d transfers served, of %d", f.Transfers, maxTransfers)
	case f.PendingBytes > f.Payload:
		return fmt.Sprintf("the sender's pending changes make %d bytes, of a %d-byte datagram", f.PendingBytes, f.Payload)
	case f.ReassemblyBytes > f.ReassemblyLimit:
		return fmt.Sprintf("incomplete records hold %d bytes, of %d", f.ReassemblyBytes, f.ReassemblyLimit)
	case f.CounterKeys > f.CounterKeysBound:
		return fmt.Sprintf("the sum maps keep %d keys, of %d", f.CounterKeys, f.CounterKeysBound)
	case f.Tombstones > f.Keys:
		return fmt.Sprintf("%d deletes remembered, of %d keys known", f.Tombstones, f.Keys)
	}
	return ""
}
