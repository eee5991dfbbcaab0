// Package metrics exposes a udpmapsync node to Prometheus. Its collector
// reads, at every scrape, the same state the daemon's stats line and
// status command show: the node's counters ([replication.StatsSnapshot],
// exported as the table [replication.Counters] says),
// what it knows of its peers and of the resync under way
// ([replication.Status]), the apply-time histogram and the maps' entry
// counts. Nothing is counted twice: there are no metrics of its own to
// keep in step. docs/OPERATIONS.md, "Metrics", explains every metric.
package metrics

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/udpmapsync/udpmapsync/replication"
)

// Namespace prefixes every metric name.
const Namespace = "udpmapsync"

// Source is what the collector reads at each scrape.
type Source interface {
	// Stats is a snapshot of the node's counters (Node.Stats().Snapshot()).
	Stats() replication.StatsSnapshot
	// Status is the node's view of itself and its peers (Node.Status()).
	Status() replication.Status
	// ApplySeconds is the apply-time histogram: non-cumulative counts per
	// bucket of [replication.HistogramBounds], then +Inf, and the sum.
	ApplySeconds() (counts [len(replication.HistogramBounds) + 1]uint64, sum float64)
	// MapEntries are the replicated maps' entry counts.
	MapEntries() []MapEntries
}

// BuildInfo labels udpmapsync_build_info.
type BuildInfo struct {
	Version string
	Backend string // the capture backend attached
}

func newDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)
}

// family is a metric whose series are counters of the table
// ([replication.Counters]) with a label: its help, and its label's name,
// are the family's.
type family struct {
	desc  *prometheus.Desc
	label string
}

// families are the metrics whose series the table's labelled counters
// are, each exported from start-up.
var families = map[string]family{
	"datagrams_dropped_total": {newDesc("datagrams_dropped_total",
		"Datagrams dropped, by reason. unknown_map counts records (for a map this node lacks with that schema), not datagrams.", "reason"), "reason"},
	"resyncs_total": {newDesc("resyncs_total",
		"Full resyncs completed: snapshots of the local maps streamed to a peer (sent) or received from one and applied (received).", "direction"), "direction"},
	"fragments_dropped_total": {newDesc("fragments_dropped_total",
		"Fragments of records larger than a datagram dropped, by reason: malformed (datagrams, also in datagrams_dropped_total), duplicate, inconsistent, refused.", "reason"), "reason"},
	"records_incomplete_dropped_total": {newDesc("records_incomplete_dropped_total",
		"Records whose fragments never all arrived, dropped: abandoned (the sender moved on, restarted or began a new snapshot) or expired (30 s).", "reason"), "reason"},
}

// series is one counter of the table as Prometheus exports it.
type series struct {
	desc   *prometheus.Desc
	kind   prometheus.ValueType
	labels []string // the value of its family's label, if it is in one
	c      *replication.Counter
}

// tableSeries are the table's counters that have a metric.
var tableSeries = fromTable()

func fromTable() []series {
	var out []series
	for i := range replication.Counters {
		c := &replication.Counters[i]
		if c.Metric == "" {
			continue
		}
		s := series{kind: prometheus.CounterValue, c: c}
		if c.Gauge {
			s.kind = prometheus.GaugeValue
		}
		if c.LabelName == "" {
			s.desc = newDesc(c.Metric, c.Help)
		} else {
			f, ok := families[c.Metric]
			if !ok || f.label != c.LabelName {
				panic(fmt.Sprintf("metrics: counter %s: no family %s with label %s", c.Name, c.Metric, c.LabelName))
			}
			s.desc, s.labels = f.desc, []string{c.LabelValue}
		}
		out = append(out, s)
	}
	return out
}

var (
	readyDesc   = newDesc("ready", "1 once the initial sync with the peers is complete, else 0.")
	peersDesc   = newDesc("peers", "Peers heard from and not yet forgotten.")
	lagDesc     = newDesc("peer_lag_datagrams", "Change datagrams the peer is known to have sent and this node has not applied.", "peer")
	lagSecDesc  = newDesc("peer_lag_seconds", "How long the oldest of the peer's datagrams still missing has been missing; 0 when none is.", "peer")
	heardDesc   = newDesc("peer_last_heard_seconds", "Seconds since the peer's last valid datagram.", "peer")
	peerRdyDesc = newDesc("peer_ready", "1 if the peer announces that its initial sync is complete, else 0.", "peer")
	peerMisDesc = newDesc("peer_map_mismatches", "Maps of the peer that differ from the local map of their name, in schema or in clock, local or lock fields: "+
		"their changes are dropped; udpmapsync status names each.", "peer")
	entriesDesc = newDesc("map_entries", "Entries in the local map, counted by reading the whole map with batch lookups at most once every "+
		DefaultEntriesTTL.String()+" (scrapes in between reuse the count). An array always holds max_entries.", "map")
	applyDesc  = newDesc("apply_latency_seconds", "Time each batch write of peers' changes into a local map took.")
	resyncDesc = newDesc("resync_entries", "Entries applied so far of the full resync being received; 0 when none is.")
	buildDesc  = newDesc("build_info", "Always 1; its labels are the daemon's version and the capture backend attached.", "version", "backend")
)

// Collector is a [prometheus.Collector] reading a [Source] at each
// scrape.
type Collector struct {
	src   Source
	build BuildInfo
	now   func() time.Time
}

// NewCollector reads src at each scrape.
func NewCollector(src Source, build BuildInfo) *Collector {
	return &Collector{src: src, build: build, now: time.Now}
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range tableSeries {
		ch <- m.desc
	}
	for _, m := range discoveryCounters {
		ch <- m.desc
	}
	for _, d := range []*prometheus.Desc{readyDesc, peersDesc, lagDesc,
		lagSecDesc, heardDesc, peerRdyDesc, peerMisDesc, entriesDesc, applyDesc, resyncDesc, buildDesc} {
		ch <- d
	}
}

// Collect reads the source once and sends every metric.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Stats()
	st := c.src.Status()
	now := c.now()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, m := range tableSeries {
		ch <- prometheus.MustNewConstMetric(m.desc, m.kind, float64(m.c.Of(&s)), m.labels...)
	}
	collectDiscovery(c.src, ch)
	gauge(readyDesc, flag(st.Ready))
	gauge(buildDesc, 1, c.build.Version, c.build.Backend)

	gauge(peersDesc, float64(len(st.Peers)))
	for i := range st.Peers {
		p := &st.Peers[i]
		id := strconv.FormatUint(uint64(p.Node), 10)
		gauge(lagDesc, float64(p.Lag()), id)
		gauge(lagSecDesc, since(now, p.MissingSince), id)
		gauge(heardDesc, since(now, p.LastHeard), id)
		gauge(peerRdyDesc, flag(p.Ready), id)
		gauge(peerMisDesc, float64(len(p.Mismatches)), id)
	}
	var entries float64
	if st.Resync != nil {
		entries = float64(st.Resync.Entries)
	}
	gauge(resyncDesc, entries)

	counts, sum := c.src.ApplySeconds()
	buckets := make(map[float64]uint64, len(replication.HistogramBounds))
	var total uint64
	for i, n := range counts {
		total += n
		if i < len(replication.HistogramBounds) {
			buckets[replication.HistogramBounds[i]] = total
		}
	}
	ch <- prometheus.MustNewConstHistogram(applyDesc, total, sum, buckets)

	for _, m := range c.src.MapEntries() {
		if m.Err == nil { // a map that cannot be read has no count to show
			gauge(entriesDesc, float64(m.Entries), m.Name)
		}
	}
}

func flag(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// since is the seconds from t to now, 0 for a zero t.
func since(now, t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return max(now.Sub(t).Seconds(), 0)
}

// Registry is a registry of its own (not the global one) holding the
// collector and the Go runtime and process collectors.
func Registry(src Source, build BuildInfo) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src, build), collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves /metrics from reg, /healthz (200 while the daemon runs)
// and /readyz (503 until ready is closed, then 200).
func Handler(reg *prometheus.Registry, ready <-chan struct{}) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.InstrumentMetricHandler(reg,
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError})))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		select {
		case <-ready:
			_, _ = w.Write([]byte("ready\n"))
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: the initial sync with the peers is not complete\n"))
		}
	})
	return mux
}
