// Package metrics exposes a udpmapsync node to Prometheus. Its collector
// reads, at every scrape, the same state the daemon's stats line and
// status command show: the node's counters ([replication.StatsSnapshot]),
// what it knows of its peers and of the resync under way
// ([replication.Status]), the apply-time histogram and the maps' entry
// counts. Nothing is counted twice: there are no metrics of its own to
// keep in step. docs/OPERATIONS.md, "Metrics", explains every metric.
package metrics

import (
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

// drop is one reason a datagram (or record) is dropped, and its counter.
type drop struct {
	reason string
	value  func(*replication.StatsSnapshot) uint64
}

// DropReasons are the values of udpmapsync_datagrams_dropped_total's
// reason label, every one exported from start-up. unknown_map counts
// records, not datagrams: a datagram may hold records of several maps.
var DropReasons = []drop{
	{"malformed", func(s *replication.StatsSnapshot) uint64 { return s.Malformed }},
	{"forged", func(s *replication.StatsSnapshot) uint64 { return s.Forged }},
	{"unauthenticated", func(s *replication.StatsSnapshot) uint64 { return s.Unauthenticated }},
	{"replayed", func(s *replication.StatsSnapshot) uint64 { return s.Replayed }},
	{"unknown_map", func(s *replication.StatsSnapshot) uint64 { return s.UnknownMap }},
	{"future_stamp", func(s *replication.StatsSnapshot) uint64 { return s.FutureStamps }},
	{"duplicate", func(s *replication.StatsSnapshot) uint64 { return s.Duplicates }},
	{"hold_full", func(s *replication.StatsSnapshot) uint64 { return s.HoldFull }},
	{"own", func(s *replication.StatsSnapshot) uint64 { return s.OwnDropped }},
	{"unsolicited", func(s *replication.StatsSnapshot) uint64 { return s.Unsolicited }},
	{"peer_limit", func(s *replication.StatsSnapshot) uint64 { return s.PeerLimit }},
	{"cookie_forged", func(s *replication.StatsSnapshot) uint64 { return s.CookiesForged }},
	{"cookie_expired", func(s *replication.StatsSnapshot) uint64 { return s.CookiesExpired }},
	{"cookie_wrong_address", func(s *replication.StatsSnapshot) uint64 { return s.CookiesWrongAddr }},
}

// counter is one plain counter of the snapshot.
type counter struct {
	desc  *prometheus.Desc
	value func(*replication.StatsSnapshot) uint64
}

func newDesc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(Namespace+"_"+name, help, labels, nil)
}

// counters are the snapshot's counters exported one to one.
var counters = []counter{
	{newDesc("changes_captured_total", "Changes to the local maps read from the capture ring buffer."),
		func(s *replication.StatsSnapshot) uint64 { return s.Captured }},
	{newDesc("changes_coalesced_total", "Captured changes merged into a pending change of the same key before sending: captured = sent + coalesced."),
		func(s *replication.StatsSnapshot) uint64 { return s.Coalesced }},
	{newDesc("changes_sent_total", "Change records sent to the peers."),
		func(s *replication.StatsSnapshot) uint64 { return s.ChangesSent }},
	{newDesc("changes_applied_total", "Peers' change records written to or deleted from the local maps, full resyncs included; deletes of absent keys are in udpmapsync_deletes_missing_total instead."),
		func(s *replication.StatsSnapshot) uint64 { return s.ChangesApplied }},
	{newDesc("deletes_missing_total", "Peers' deletes of keys the local map did not hold (normal after a restart)."),
		func(s *replication.StatsSnapshot) uint64 { return s.DeletesMissing }},
	{newDesc("datagrams_sent_total", "Change datagrams sent to the group (or the --peers)."),
		func(s *replication.StatsSnapshot) uint64 { return s.DatagramsSent }},
	{newDesc("bytes_sent_total", "Bytes of the change datagrams sent."),
		func(s *replication.StatsSnapshot) uint64 { return s.BytesSent }},
	{newDesc("datagrams_received_total", "Change datagrams and announces accepted from peers."),
		func(s *replication.StatsSnapshot) uint64 { return s.DatagramsReceived }},
	{newDesc("datagrams_resent_total", "Change datagrams resent to peers that asked for them again: to the group once for all that asked there, or to one peer."),
		func(s *replication.StatsSnapshot) uint64 { return s.DatagramsResent }},
	{newDesc("datagrams_repaired_total", "Missing peer datagrams filled by a peer's resend."),
		func(s *replication.StatsSnapshot) uint64 { return s.Repaired }},
	{newDesc("gaps_total", "Change datagrams of peers missed in sequence; each is asked for again."),
		func(s *replication.StatsSnapshot) uint64 { return s.GapsSeen }},
	{newDesc("resyncs_needed_total", "Gaps that could not be repaired by a resend: a full resync from that peer follows."),
		func(s *replication.StatsSnapshot) uint64 { return s.ResyncNeeded }},
	{newDesc("ringbuf_overflows_total", "Changes the kernel could not queue in the capture ring buffer; the peers resync from this node."),
		func(s *replication.StatsSnapshot) uint64 { return s.RingOverflows }},
	{newDesc("send_errors_total", "Sends that failed; their datagrams are lost until a repair or resync."),
		func(s *replication.StatsSnapshot) uint64 { return s.SendErrors }},
	{newDesc("apply_errors_total", "Batches of peers' changes the kernel refused to write into a local map."),
		func(s *replication.StatsSnapshot) uint64 { return s.ApplyErrors }},
	{newDesc("changes_stale_total", "Peers' change records no newer than the version this node knows of their key, skipped: "+
		"normal for records that arrive twice or after a newer write."),
		func(s *replication.StatsSnapshot) uint64 { return s.Stale }},
	{newDesc("changes_superseded_total", "Local changes a later write had overwritten by the time the capture delivered them, "+
		"dropped: a local write and a peer's write of one key crossed, and the peer's came last."),
		func(s *replication.StatsSnapshot) uint64 { return s.Superseded }},
	{newDesc("race_checks_total", "Local changes of a key a peer's change was applied to meanwhile, read back from the map to order them."),
		func(s *replication.StatsSnapshot) uint64 { return s.RaceChecks }},
	{newDesc("entries_restamped_total", "Entries read after a capture overflow (by a snapshot or at a stop) and stamped anew, since a lost write may hold them."),
		func(s *replication.StatsSnapshot) uint64 { return s.Restamped }},
	{newDesc("changes_relayed_total", "Entries sent on with the version they had: what a resync found the peer lacking, or what a restart found written while no daemon ran."),
		func(s *replication.StatsSnapshot) uint64 { return s.Relayed }},
	{newDesc("resync_sent_back_total", "Entries and deletes a full resync found the serving peer lacking, or holding older, and sent back to the group."),
		func(s *replication.StatsSnapshot) uint64 { return s.SyncPushed }},
	{newDesc("resync_deleted_total", "Local entries a full resync deleted: a newer delete the peer remembered, or a key the peer wrote last and no longer holds."),
		func(s *replication.StatsSnapshot) uint64 { return s.SyncDeleted }},
	{newDesc("cookies_sent_total", "Cookies sent to peers' addresses that had not yet proved they receive there, instead of an answer or before a request."),
		func(s *replication.StatsSnapshot) uint64 { return s.CookiesSent }},
	{newDesc("addresses_proven_total", "Peers' addresses proved by the echo of a cookie: from then on they are answered."),
		func(s *replication.StatsSnapshot) uint64 { return s.AddressesProven }},
	{newDesc("withheld_total", "Datagrams not sent to an address that had not proved itself, because it had not sent this node as much (its share, for what came to the group)."),
		func(s *replication.StatsSnapshot) uint64 { return s.Withheld }},
	{newDesc("scans_total", "Scans of a map for in-place changes (the map's scan option) completed."),
		func(s *replication.StatsSnapshot) uint64 { return s.Scans }},
	{newDesc("scan_found_total", "Entries a scan found changed in place, or written where the capture cannot see, and sent as writes of this node."),
		func(s *replication.StatsSnapshot) uint64 { return s.ScanFound }},
	{newDesc("scan_vanished_total", "Keys a scan found gone without a delete the capture saw (LRU evictions); deleted on the peers only with vanished=delete."),
		func(s *replication.StatsSnapshot) uint64 { return s.ScanVanished }},
	{newDesc("tombstones_dropped_total", "Deletes forgotten before --tombstone-horizon because a map had more than a million remembered."),
		func(s *replication.StatsSnapshot) uint64 { return s.TombstonesDropped }},
	{newDesc("digest_rounds_total", "Digest rounds this node started: a comparison of its maps with one peer's, bucket by bucket."),
		func(s *replication.StatsSnapshot) uint64 { return s.DigestRounds }},
	{newDesc("digest_buckets_differing_total", "Leaf buckets a digest round found to differ from the peer's while neither side had written there lately: divergences found."),
		func(s *replication.StatsSnapshot) uint64 { return s.DigestFound }},
	{newDesc("digest_buckets_busy_total", "Buckets that differed but were written lately on either side, so may have had changes in flight: compared again next round."),
		func(s *replication.StatsSnapshot) uint64 { return s.DigestBusy }},
	{newDesc("digest_repairs_total", "Filtered resyncs that repaired the buckets a digest round found differing."),
		func(s *replication.StatsSnapshot) uint64 { return s.DigestRepairs }},
	{newDesc("digest_healed_total", "Entries digest repairs changed: applied here, sent back to the peer, or stamped anew where two nodes held the same version with different contents."),
		func(s *replication.StatsSnapshot) uint64 { return s.DigestHealed }},
	{newDesc("map_mismatches_total", "Peers' maps found to differ from the local map of their name, in schema or in clock, local or lock fields "+
		"(each peer, map and difference counted once): their changes to that map are dropped, as unknown_map."),
		func(s *replication.StatsSnapshot) uint64 { return s.MapMismatches }},
	{newDesc("digest_bytes_total", "Bytes of digest datagrams sent and received (the repairs travel as snapshot datagrams)."),
		func(s *replication.StatsSnapshot) uint64 { return s.DigestBytes }},
}

var (
	readyDesc   = newDesc("ready", "1 once the initial sync with the peers is complete, else 0.")
	resyncsDesc = newDesc("resyncs_total", "Full resyncs completed: snapshots of the local maps streamed to a peer (sent) or received from one and applied (received).", "direction")
	droppedDesc = newDesc("datagrams_dropped_total", "Datagrams dropped, by reason. unknown_map counts records (for a map this node lacks with that schema), not datagrams.", "reason")
	heldDesc    = newDesc("datagrams_held", "Peer datagrams held back behind a missing one.")
	peersDesc   = newDesc("peers", "Peers heard from and not yet forgotten.")
	printsDesc  = newDesc("scan_prints", "Keys whose value fingerprint the scans keep (about 39 bytes each).")
	knownDesc   = newDesc("known_keys", "Keys whose latest version this node knows, remembered deletes included (20 bytes each, in a table at most 80% full).")
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
	for _, m := range counters {
		ch <- m.desc
	}
	for _, m := range discoveryCounters {
		ch <- m.desc
	}
	for _, d := range []*prometheus.Desc{readyDesc, resyncsDesc, droppedDesc, heldDesc, knownDesc, printsDesc, peersDesc, lagDesc,
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
	count := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, m := range counters {
		count(m.desc, m.value(&s))
	}
	collectDiscovery(c.src, ch)
	for _, r := range DropReasons {
		count(droppedDesc, r.value(&s), r.reason)
	}
	count(resyncsDesc, s.ResyncsSent, "sent")
	count(resyncsDesc, s.ResyncsReceived, "received")
	gauge(readyDesc, flag(st.Ready))
	gauge(heldDesc, float64(s.Held))
	gauge(knownDesc, float64(s.KnownKeys))
	gauge(printsDesc, float64(s.ScanPrints))
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
