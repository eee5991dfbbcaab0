// Package discovery finds the peers of a unicast group while the daemon
// runs: the addresses of a DNS name (a Kubernetes headless Service's
// name, say) or the lines of a file. It knows nothing of replication: it
// looks the peers up when its caller's ticker says so, and hands each new
// set, with what arrived and what left, to a function. Time and the
// resolver come from the caller, so that tests and a simulator drive it.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limits and defaults.
const (
	// MaxPeers bounds the peers one lookup yields: as many as a node
	// tracks at once (replication's peer table). Beyond it the lowest
	// addresses are kept and the lookup counts as over the limit.
	MaxPeers = 64
	// DefaultRefresh is how often the daemon looks the peers up again.
	DefaultRefresh = 10 * time.Second
	// MinRefresh is the shortest refresh period accepted.
	MinRefresh = time.Second
	// lookupTimeout bounds one lookup, so that a resolver that does not
	// answer delays the next refresh by no more than this.
	lookupTimeout = 5 * time.Second
)

// Prefixes of the --peers forms that discovery serves.
const (
	PrefixDNS  = "dns:"
	PrefixFile = "file:"
)

// Source yields the current peers. Lookup may return addresses together
// with an error: those it could read (a file's good lines) are the peers,
// and the error says what it skipped.
type Source interface {
	Lookup(ctx context.Context) ([]netip.Addr, error)
	// String names the source as the user gave it (dns:NAME, file:PATH).
	String() string
}

// ErrOverLimit reports a lookup that found more than [MaxPeers] peers.
var ErrOverLimit = fmt.Errorf("more than %d peers; the lowest %d addresses are used", MaxPeers, MaxPeers)

// Change is a new set of peers.
type Change struct {
	Peers   []netip.Addr // every peer now, sorted
	Added   []netip.Addr // in Peers, not in the previous set
	Removed []netip.Addr // in the previous set, not in Peers
}

// Stats counts the watcher's lookups and what went wrong with them.
type Stats struct {
	Lookups   atomic.Uint64 // lookups made
	Failures  atomic.Uint64 // lookups that failed: the previous peers were kept
	BadLines  atomic.Uint64 // lines of a peer file that are not an address, skipped
	OverLimit atomic.Uint64 // lookups that found more than MaxPeers peers
	Changes   atomic.Uint64 // new sets of peers applied
}

// Attrs are the counters as log attributes.
func (s *Stats) Attrs() []slog.Attr {
	return []slog.Attr{
		slog.Uint64("peer_lookups", s.Lookups.Load()),
		slog.Uint64("peer_lookup_failures", s.Failures.Load()),
		slog.Uint64("peer_bad_lines", s.BadLines.Load()),
		slog.Uint64("peer_over_limit", s.OverLimit.Load()),
		slog.Uint64("peer_changes", s.Changes.Load()),
	}
}

// Watcher looks a [Source] up and applies the changes of its peers.
type Watcher struct {
	src   Source
	apply func(Change)
	log   *slog.Logger
	stats Stats

	mu      sync.Mutex     // guards peers, for Peers
	peers   []netip.Addr   // the set last applied, sorted
	lastErr string         // the last lookup's problem, logged once
	lastBad *BadLinesError // the last bad lines counted
}

// NewWatcher returns a watcher of src that calls apply with every new
// set of peers; nothing is looked up before [Watcher.Refresh] or
// [Watcher.Run]. apply runs on the goroutine that refreshes.
func NewWatcher(src Source, apply func(Change), log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{src: src, apply: apply, log: log}
}

// Stats returns the watcher's counters.
func (w *Watcher) Stats() *Stats { return &w.stats }

// Peers returns the set last applied.
func (w *Watcher) Peers() []netip.Addr {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.peers)
}

// Run refreshes at every tick until ctx is done.
func (w *Watcher) Run(ctx context.Context, tick <-chan time.Time) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			_ = w.Refresh(ctx)
		}
	}
}

// Refresh looks the peers up once and applies them if they changed. A
// lookup that fails leaves the peers as they were; one that returns
// addresses with an error (bad lines, too many peers) applies the
// addresses. The error is returned, and logged when it differs from the
// previous one.
func (w *Watcher) Refresh(ctx context.Context) error {
	w.stats.Lookups.Add(1)
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	found, err := w.src.Lookup(ctx)
	cancel()
	var bad *BadLinesError
	if errors.As(err, &bad) && bad != w.lastBad {
		w.lastBad = bad // a file read again: counted once per version
		w.stats.BadLines.Add(uint64(bad.Count))
	}
	if err != nil && found == nil {
		w.stats.Failures.Add(1)
		w.report(err, "keeping the previous peers")
		return err
	}
	peers := normalize(found)
	if len(peers) > MaxPeers {
		peers = peers[:MaxPeers]
		w.stats.OverLimit.Add(1)
		err = errors.Join(err, ErrOverLimit)
	}
	w.report(err, "using the addresses found")
	w.mu.Lock()
	ch := diff(w.peers, peers)
	first := w.peers == nil // applied even when empty: nobody, rather than anybody
	w.peers = peers
	w.mu.Unlock()
	if first || ch.Added != nil || ch.Removed != nil {
		w.apply(ch)
		w.stats.Changes.Add(1)
		// Logged once applied: a test that reads the log may rely on it.
		w.log.Info("peers changed", "source", w.src.String(), "peers", len(ch.Peers), "added", ch.Added, "removed", ch.Removed)
	}
	return err
}

// report logs a lookup's problem once, and its end.
func (w *Watcher) report(err error, what string) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if msg == w.lastErr {
		return
	}
	w.lastErr = msg
	if err == nil {
		w.log.Info("peer lookup works again", "source", w.src.String())
		return
	}
	w.log.Warn("peer lookup: "+what, "source", w.src.String(), "error", err)
}

// normalize sorts and deduplicates addresses, without zones' duplicates:
// a peer is an address.
func normalize(addrs []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.Unmap())
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

// diff compares two sorted sets.
func diff(old, now []netip.Addr) Change {
	ch := Change{Peers: now}
	for _, a := range now {
		if _, ok := slices.BinarySearchFunc(old, a, netip.Addr.Compare); !ok {
			ch.Added = append(ch.Added, a)
		}
	}
	for _, a := range old {
		if _, ok := slices.BinarySearchFunc(now, a, netip.Addr.Compare); !ok {
			ch.Removed = append(ch.Removed, a)
		}
	}
	return ch
}

// Parse reads --peers: a list of addresses (returned as static), or one
// dns:NAME or file:PATH (returned as a [Source]; with r nil, the system's
// resolver). v6 is the family the peers must be of.
func Parse(values []string, v6 bool, r Resolver) (static []netip.Addr, src Source, err error) {
	for _, v := range values {
		if !strings.HasPrefix(v, PrefixDNS) && !strings.HasPrefix(v, PrefixFile) {
			continue
		}
		if len(values) > 1 {
			return nil, nil, fmt.Errorf("--peers %s: give dns:NAME or file:PATH alone, not with other peers", strings.Join(values, ","))
		}
		if name, ok := strings.CutPrefix(v, PrefixDNS); ok {
			if name == "" || strings.ContainsAny(name, " /") {
				return nil, nil, fmt.Errorf("--peers %s: not a DNS name (e.g. dns:udpmapsync.kube-system.svc.cluster.local)", v)
			}
			return nil, NewDNS(name, v6, r), nil
		}
		path, _ := strings.CutPrefix(v, PrefixFile)
		if path == "" {
			return nil, nil, fmt.Errorf("--peers %s: no path (e.g. file:/etc/udpmapsync/peers)", v)
		}
		return nil, NewFile(path, v6), nil
	}
	for _, v := range values {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, nil, fmt.Errorf("--peers %s: not an IP address, dns:NAME or file:PATH", v)
		}
		if a = a.Unmap(); len(static) > 0 && a.Is6() != static[0].Is6() {
			return nil, nil, fmt.Errorf("--peers %s and %s: mixed IPv4 and IPv6; use one family", static[0], a)
		}
		static = append(static, a)
	}
	if len(static) > MaxPeers {
		return nil, nil, fmt.Errorf("--peers: %d addresses; at most %d", len(static), MaxPeers)
	}
	return static, nil, nil
}
