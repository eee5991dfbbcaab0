package discovery

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// Resolver looks names up; [net.Resolver] is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// DNS is the peers of --peers dns:NAME: every address record of the name
// in the socket's family (A or AAAA). A Kubernetes headless Service's name
// has one per ready pod.
type DNS struct {
	name     string
	network  string // ip4 or ip6
	resolver Resolver
}

// NewDNS returns the source of name's A (or, with v6, AAAA) records; r nil
// means the system's resolver.
func NewDNS(name string, v6 bool, r Resolver) *DNS {
	if r == nil {
		r = net.DefaultResolver
	}
	network := "ip4"
	if v6 {
		network = "ip6"
	}
	return &DNS{name: name, network: network, resolver: r}
}

// Lookup resolves the name. A name that does not exist, or has no record
// of the family, has no peers: a Service without ready pods says so. Any
// other failure (a timeout, a server failure) is an error, and the caller
// keeps the peers it had.
func (d *DNS) Lookup(ctx context.Context) ([]netip.Addr, error) {
	addrs, err := d.resolver.LookupNetIP(ctx, d.network, d.name)
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		return []netip.Addr{}, nil
	}
	if err != nil {
		return nil, err
	}
	return addrs, nil
}

func (d *DNS) String() string { return PrefixDNS + d.name }

// ResolverAt returns a resolver that asks the DNS server at server alone,
// over UDP: the tests' --dns-server, which run a server in a network
// namespace without a resolv.conf of its own.
func ResolverAt(server netip.AddrPort) *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", server.String())
	}}
}
