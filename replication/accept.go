package replication

import (
	"net/netip"
	"sync"
)

// acceptList is the source addresses a node without a key accepts: its
// --peers, which discovery may replace while the receive side reads it.
// With a key there is none: the seal, not the address, says whom to trust.
type acceptList struct {
	mu    sync.Mutex
	addrs map[netip.Addr]struct{} // guarded by mu; zones removed; nil: any
}

// set replaces the accepted addresses.
func (l *acceptList) set(addrs []netip.Addr) {
	m := make(map[netip.Addr]struct{}, len(addrs))
	for _, a := range addrs {
		m[a.Unmap().WithZone("")] = struct{}{}
	}
	l.mu.Lock()
	l.addrs = m
	l.mu.Unlock()
}

// accepts reports whether a datagram from a may be handled.
func (l *acceptList) accepts(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.addrs == nil {
		return true
	}
	_, ok := l.addrs[a.Unmap().WithZone("")]
	return ok
}

// SetPeers replaces the peers found by discovery (--peers dns:NAME or
// file:PATH): call it once the transport sends to them. Without a key
// they are also the only source addresses accepted, so a peer that left is
// retired on both sides; with a key they are only where datagrams go. The
// sender greets the peers with an announce at once, so that a peer that
// arrived learns of this node without waiting for the announce interval.
// It is safe to call while [Node.Run] runs.
func (n *Node) SetPeers(peers []netip.Addr) {
	if !n.dispatch.keyed {
		n.dispatch.allow.set(peers)
	}
	n.sender.greet.Store(true)
}
