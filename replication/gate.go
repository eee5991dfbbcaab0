package replication

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/udpmapsync/udpmapsync/wire"
)

// Return routability: what this node may send to the address of a peer
// that has not proved it receives there. See "Hostile input" in
// docs/ARCHITECTURE.md.
const (
	// cookieEvery is the least time between two cookies to one peer: the
	// requests of one round trip, and the cookie each side sends the
	// other, get one cookie, and a lost one is sent again soon after the
	// peer's next request.
	cookieEvery = 100 * time.Millisecond
	// maxCredit bounds the bytes an address that has not proved itself
	// can have this node owe it.
	maxCredit = 64 << 10
	// The IP and UDP headers of a datagram, which cost the network as
	// much as its payload.
	ipv4Overhead = 20 + 8
	ipv6Overhead = 40 + 8
)

// answerGate decides what this node may send each peer's address, so that
// a peer announced from a forged source address cannot make it flood
// whoever owns that address. An address proves that it receives what is
// sent to it by echoing a cookie this node sent there; after that it gets
// whatever the protocol sends it. To an address that has not proved
// itself, the node sends in all no more bytes than it received from there
// (its credit), counting a datagram that came to the group as a share,
// since every node of the group received it; and an answer larger than
// the request that asked for it not at all: [answerGate.admit] sends a
// cookie instead. Cookies and echoes are a header alone, no larger than
// any datagram. Used under the receive lock.
type answerGate struct {
	jar   cookieJar
	ctl   controlSender // the cookies and echoes
	peers *peerTable    // how many nodes a datagram to the group reached
	seal  int           // the seal's bytes on every datagram, with a key
	stats *Stats
	log   *slog.Logger
	limit *limiter
}

// proven reports whether p's address proved that it receives what is
// sent to it.
func (g *answerGate) proven(p *peer) bool { return p.addrProven() }

// cost is what a datagram of n bytes to or from addr costs the network.
func (g *answerGate) cost(n int, addr netip.AddrPort) float64 {
	over := ipv6Overhead
	if addr.Addr().Unmap().Is4() {
		over = ipv4Overhead
	}
	return float64(n + g.seal + over)
}

// earn credits p with a datagram of n bytes (its seal removed) from its
// address: all of it if it was sent to this node alone, else this node's
// share of it.
func (g *answerGate) earn(p *peer, n int, unicast bool) {
	if g.proven(p) {
		return
	}
	c := g.cost(n, p.addr)
	if !unicast {
		c /= float64(len(g.peers.byNode) + 1)
	}
	p.credit = min(p.credit+c, maxCredit)
}

// spend reports whether a datagram of n bytes may be sent to p, and takes
// its cost from p's credit if p has not proved its address. What it
// withholds is marked, to be sent once p proves its address.
func (g *answerGate) spend(p *peer, n int) bool {
	if g.proven(p) {
		return true
	}
	c := g.cost(n, p.addr)
	if p.credit < c {
		g.stats.Withheld.Add(1)
		p.withheld = true
		return false
	}
	p.credit -= c
	return true
}

// admit is the gate every answer larger than the request it answers
// passes, whatever its kind: it reports whether p's address proved
// itself. If not, p is sent a cookie instead (within its credit, at most
// one every cookieEvery), to echo before it asks again, and the caller
// sends nothing.
func (g *answerGate) admit(p *peer, now time.Time) bool {
	if g.proven(p) {
		return true
	}
	g.challenge(p, now)
	return false
}

// ask reports whether this node may send p a request of n bytes: always
// once p's address proved itself, else within p's credit, after a cookie
// for p to echo, which proves it.
func (g *answerGate) ask(p *peer, n int, now time.Time) bool {
	if g.proven(p) {
		return true
	}
	g.challenge(p, now)
	return g.spend(p, n)
}

// challenge sends p a cookie to echo, unless one went out within
// cookieEvery or p's credit does not cover it.
func (g *answerGate) challenge(p *peer, now time.Time) {
	if now.Sub(p.cookieAt) < cookieEvery || !g.spend(p, wire.HeaderSize) {
		return
	}
	p.cookieAt = now
	c, err := g.jar.issue(p.addr, now)
	if err != nil {
		g.ctl.failed(err)
		return
	}
	if g.ctl.send(p.addr, wire.KindCookie, c.Slot, c.Tag, nil) == nil {
		g.stats.CookiesSent.Add(1)
	}
}

// cookie echoes c, a cookie p sent: p asks this node to prove its address
// before it answers. p's address is challenged too, so that both prove
// themselves in one round trip.
func (g *answerGate) cookie(p *peer, c wire.Cookie, now time.Time) {
	if g.spend(p, wire.HeaderSize) {
		_ = g.ctl.send(p.addr, wire.KindCookieEcho, c.Slot, c.Tag, nil)
	}
	if !g.proven(p) {
		g.challenge(p, now)
	}
}

// echoed checks c, which p echoed from the address from, and reports
// whether it proved p's address just now and something was withheld from
// p before: the caller sends that now.
func (g *answerGate) echoed(p *peer, from netip.AddrPort, c wire.Cookie, now time.Time) bool {
	err := g.jar.check(c, from, now)
	switch err {
	case nil:
		if from != p.addr || g.proven(p) {
			return false
		}
		withheld := p.withheld
		p.proven, p.credit, p.withheld = from, 0, false
		g.stats.AddressesProven.Add(1)
		return withheld
	case errCookieExpired:
		g.stats.CookiesExpired.Add(1)
	case errCookieForged:
		g.stats.CookiesForged.Add(1)
	case errCookieWrongAddr:
		g.stats.CookiesWrongAddr.Add(1)
	default:
		g.ctl.failed(err)
		return false
	}
	if s, ok := g.limit.allow(reasonCookie); ok {
		g.log.Warn("dropping a cookie echo that proves nothing", "from", from, "node", p.node, "reason", err, "suppressed", s)
	}
	return false
}
