package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/udpmapsync/udpmapsync/discovery"
)

// Discovering is a [Source] that may look its peers up (--peers dns:NAME
// or file:PATH): the collector then exports the lookups' counters.
type Discovering interface {
	// Discovery is the watcher's counters; nil without discovery.
	Discovery() *discovery.Stats
}

// discoveryCounters are the watcher's counters exported one to one.
var discoveryCounters = []struct {
	desc  *prometheus.Desc
	value func(*discovery.Stats) uint64
}{
	{newDesc("peer_lookups_total", "Lookups of --peers dns:NAME or file:PATH."),
		func(s *discovery.Stats) uint64 { return s.Lookups.Load() }},
	{newDesc("peer_lookup_failures_total", "Lookups of the peers that failed (a resolver timeout, a peer file unreadable); the previous peers were kept."),
		func(s *discovery.Stats) uint64 { return s.Failures.Load() }},
	{newDesc("peer_bad_lines_total", "Lines of the peer file that are not an address of the family, skipped; counted once per version of the file."),
		func(s *discovery.Stats) uint64 { return s.BadLines.Load() }},
	{newDesc("peer_over_limit_total", "Lookups that found more than 64 peers; the lowest 64 addresses were used."),
		func(s *discovery.Stats) uint64 { return s.OverLimit.Load() }},
	{newDesc("peer_changes_total", "New sets of peers applied: peers greeted or retired."),
		func(s *discovery.Stats) uint64 { return s.Changes.Load() }},
}

// noDiscovery is the counters of a daemon that does not look its peers
// up: all zero.
var noDiscovery discovery.Stats

// collectDiscovery sends the watcher's counters, at zero where src does
// not discover its peers: like every drop reason they exist from the
// start, so that the alerts on them can tell "none" from "not exported".
func collectDiscovery(src Source, ch chan<- prometheus.Metric) {
	s := &noDiscovery
	if d, ok := src.(Discovering); ok && d.Discovery() != nil {
		s = d.Discovery()
	}
	for _, m := range discoveryCounters {
		ch <- prometheus.MustNewConstMetric(m.desc, prometheus.CounterValue, float64(m.value(s)))
	}
}
