package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/udpmapsync/udpmapsync/discovery"
	"github.com/udpmapsync/udpmapsync/replication"
)

// fakeSource is a [Source] whose answers the test sets.
type fakeSource struct {
	stats   replication.StatsSnapshot
	status  replication.Status
	counts  [len(replication.HistogramBounds) + 1]uint64
	sum     float64
	entries []MapEntries
	reads   int
}

func (f *fakeSource) Stats() replication.StatsSnapshot { f.reads++; return f.stats }
func (f *fakeSource) Status() replication.Status       { return f.status }
func (f *fakeSource) ApplySeconds() ([len(replication.HistogramBounds) + 1]uint64, float64) {
	return f.counts, f.sum
}
func (f *fakeSource) MapEntries() []MapEntries { return f.entries }

// discoveringSource is a fakeSource whose peers are discovered.
type discoveringSource struct {
	fakeSource
	discovery *discovery.Stats
}

func (f *discoveringSource) Discovery() *discovery.Stats { return f.discovery }

// The lookups' counters are exported when the daemon discovers its peers,
// and at zero when it does not, so that the alert on them always finds
// them (TestObservability checks every metric the alerts use).
func TestCollectorDiscovery(t *testing.T) {
	got, _ := gather(t, NewCollector(&fakeSource{}, BuildInfo{}))
	if g, ok := got["udpmapsync_peer_lookup_failures_total"]; !ok || g != 0 {
		t.Errorf("peer lookup failures without discovery = %v (present %v), want 0", g, ok)
	}
	var s discovery.Stats
	s.Lookups.Store(5)
	s.Failures.Store(1)
	s.BadLines.Store(2)
	s.OverLimit.Store(3)
	s.Changes.Store(4)
	c := NewCollector(&discoveringSource{discovery: &s}, BuildInfo{})
	got, _ = gather(t, c)
	for k, v := range map[string]float64{"udpmapsync_peer_lookups_total": 5, "udpmapsync_peer_lookup_failures_total": 1,
		"udpmapsync_peer_bad_lines_total": 2, "udpmapsync_peer_over_limit_total": 3, "udpmapsync_peer_changes_total": 4} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}

// gather scrapes a registry holding only the collector over src, and
// indexes the samples by name and label pairs ("name{k=v,k=v}").
func gather(t *testing.T, c prometheus.Collector) (map[string]float64, map[string]*dto.MetricFamily) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]float64{}
	families := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		families[mf.GetName()] = mf
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := mf.GetName()
			if len(labels) > 0 {
				key += "{" + strings.Join(labels, ",") + "}"
			}
			switch {
			case m.Counter != nil:
				values[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				values[key] = m.Gauge.GetValue()
			}
		}
	}
	return values, families
}

func TestCollectorAtStartUp(t *testing.T) {
	src := &fakeSource{}
	c := NewCollector(src, BuildInfo{Version: "v1", Backend: "syscall"})
	got, fams := gather(t, c)
	// Every drop reason, both resync directions and every counter exist
	// at 0 before anything happened, so rate() and increase() work from
	// the first scrape.
	want := []string{
		"udpmapsync_ready", "udpmapsync_changes_captured_total", "udpmapsync_changes_applied_total",
		"udpmapsync_datagrams_sent_total", "udpmapsync_datagrams_received_total", "udpmapsync_datagrams_resent_total",
		"udpmapsync_gaps_total", "udpmapsync_resyncs_total{direction=sent}", "udpmapsync_resyncs_total{direction=received}",
		"udpmapsync_resyncs_needed_total", "udpmapsync_ringbuf_overflows_total", "udpmapsync_send_errors_total",
		"udpmapsync_apply_errors_total", "udpmapsync_peers", "udpmapsync_resync_entries",
	}
	for _, r := range []string{"malformed", "forged", "unknown_map", "duplicate", "hold_full", "own", "unsolicited",
		"peer_limit", "unauthenticated", "replayed"} {
		want = append(want, "udpmapsync_datagrams_dropped_total{reason="+r+"}")
	}
	for _, k := range want {
		v, ok := got[k]
		if !ok {
			t.Errorf("%s missing at start-up", k)
		} else if v != 0 {
			t.Errorf("%s = %v at start-up, want 0", k, v)
		}
	}
	if got["udpmapsync_build_info{backend=syscall,version=v1}"] != 1 {
		t.Errorf("build_info: %v", got)
	}
	if h := fams["udpmapsync_apply_latency_seconds"]; h == nil || h.GetType() != dto.MetricType_HISTOGRAM {
		t.Errorf("apply_latency_seconds is not a histogram: %v", h)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}

func TestCollectorValues(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	src := &fakeSource{
		stats: replication.StatsSnapshot{Captured: 100, Coalesced: 3, ChangesApplied: 90, DeletesMissing: 2,
			DatagramsSent: 7, DatagramsReceived: 8, DatagramsResent: 1, GapsSeen: 4, ResyncsSent: 2,
			ResyncsReceived: 5, ResyncNeeded: 6, RingOverflows: 9, SendErrors: 10, ApplyErrors: 11,
			Malformed: 12, Forged: 13, UnknownMap: 14, Duplicates: 15, HoldFull: 16, OwnDropped: 17,
			Unsolicited: 18, PeerLimit: 19, Unauthenticated: 20, Replayed: 21, Held: 22, MapMismatches: 23},
		status: replication.Status{Ready: true, Peers: []replication.PeerStatus{
			{Node: 7, Addr: netip.MustParseAddrPort("10.0.0.7:3870"), Ready: true, Seq: 50, Applied: 45,
				LastHeard: now.Add(-1500 * time.Millisecond), MissingSince: now.Add(-3 * time.Second),
				Mismatches: []string{"flows: the peer treats bytes at offset 8, 4 bytes as a mono-s clock field, this node does not"}},
			{Node: 9, Seq: 10, Applied: 10, LastHeard: now.Add(-time.Second)},
		}, Resync: &replication.ResyncStatus{Peer: 7, Entries: 1234}},
		sum:     0.5,
		entries: []MapEntries{{Name: "flows", Entries: 42, At: now}, {Name: "broken", At: now, Err: errors.New("EPERM")}},
	}
	src.counts[0], src.counts[3], src.counts[len(src.counts)-1] = 2, 5, 1
	c := NewCollector(src, BuildInfo{Version: "v1", Backend: "fentry"})
	c.now = func() time.Time { return now }
	got, fams := gather(t, c)
	if src.reads != 1 {
		t.Errorf("a scrape read the stats %d times, want once", src.reads)
	}
	for k, v := range map[string]float64{
		"udpmapsync_ready":                                           1,
		"udpmapsync_changes_captured_total":                          100,
		"udpmapsync_changes_coalesced_total":                         3,
		"udpmapsync_changes_applied_total":                           90,
		"udpmapsync_deletes_missing_total":                           2,
		"udpmapsync_datagrams_sent_total":                            7,
		"udpmapsync_datagrams_received_total":                        8,
		"udpmapsync_datagrams_resent_total":                          1,
		"udpmapsync_gaps_total":                                      4,
		"udpmapsync_resyncs_total{direction=sent}":                   2,
		"udpmapsync_resyncs_total{direction=received}":               5,
		"udpmapsync_resyncs_needed_total":                            6,
		"udpmapsync_ringbuf_overflows_total":                         9,
		"udpmapsync_send_errors_total":                               10,
		"udpmapsync_apply_errors_total":                              11,
		"udpmapsync_datagrams_dropped_total{reason=malformed}":       12,
		"udpmapsync_datagrams_dropped_total{reason=forged}":          13,
		"udpmapsync_datagrams_dropped_total{reason=unknown_map}":     14,
		"udpmapsync_datagrams_dropped_total{reason=duplicate}":       15,
		"udpmapsync_datagrams_dropped_total{reason=hold_full}":       16,
		"udpmapsync_datagrams_dropped_total{reason=own}":             17,
		"udpmapsync_datagrams_dropped_total{reason=unsolicited}":     18,
		"udpmapsync_datagrams_dropped_total{reason=peer_limit}":      19,
		"udpmapsync_datagrams_dropped_total{reason=unauthenticated}": 20,
		"udpmapsync_datagrams_dropped_total{reason=replayed}":        21,
		"udpmapsync_datagrams_held":                                  22,
		"udpmapsync_peers":                                           2,
		"udpmapsync_peer_lag_datagrams{peer=7}":                      5,
		"udpmapsync_peer_lag_datagrams{peer=9}":                      0,
		"udpmapsync_peer_lag_seconds{peer=7}":                        3,
		"udpmapsync_peer_lag_seconds{peer=9}":                        0,
		"udpmapsync_peer_last_heard_seconds{peer=7}":                 1.5,
		"udpmapsync_peer_last_heard_seconds{peer=9}":                 1,
		"udpmapsync_peer_ready{peer=7}":                              1,
		"udpmapsync_peer_ready{peer=9}":                              0,
		"udpmapsync_map_mismatches_total":                            23,
		"udpmapsync_peer_map_mismatches{peer=7}":                     1,
		"udpmapsync_peer_map_mismatches{peer=9}":                     0,
		"udpmapsync_resync_entries":                                  1234,
		"udpmapsync_map_entries{map=flows}":                          42,
	} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
	if _, ok := got["udpmapsync_map_entries{map=broken}"]; ok {
		t.Error("a map that could not be counted has a count")
	}

	// The histogram is cumulative, with the +Inf bucket in the count.
	h := fams["udpmapsync_apply_latency_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != 8 || h.GetSampleSum() != 0.5 {
		t.Errorf("histogram count %d sum %v, want 8 and 0.5", h.GetSampleCount(), h.GetSampleSum())
	}
	if len(h.GetBucket()) != len(replication.HistogramBounds) {
		t.Fatalf("%d buckets, want %d", len(h.GetBucket()), len(replication.HistogramBounds))
	}
	for i, b := range h.GetBucket() {
		want := uint64(2)
		if i >= 3 {
			want = 7
		}
		if b.GetUpperBound() != replication.HistogramBounds[i] || b.GetCumulativeCount() != want {
			t.Errorf("bucket %d: le %v count %d, want le %v count %d", i, b.GetUpperBound(), b.GetCumulativeCount(),
				replication.HistogramBounds[i], want)
		}
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", err, problems)
	}
}

func TestHandler(t *testing.T) {
	ready := make(chan struct{})
	srv := httptest.NewServer(Handler(Registry(&fakeSource{}, BuildInfo{Version: "v1", Backend: "syscall"}), ready))
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz %d before ready", code)
	}
	if code, body := get("/readyz"); code != 503 {
		t.Errorf("/readyz %d %q before ready, want 503", code, body)
	}
	close(ready)
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz %d once ready, want 200", code)
	}
	code, body := get("/metrics")
	for _, want := range []string{"udpmapsync_ready 0", "go_goroutines", "process_open_fds", "udpmapsync_apply_latency_seconds_bucket{le=\"+Inf\"} 0"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %q", code, want)
		}
	}
	if code, _ := get("/nothing"); code != 404 {
		t.Errorf("/nothing: %d", code)
	}
}

// fakeMap is a [Dumper] of n entries that counts its walks.
type fakeMap struct {
	n, keySize int
	walks      int
	err        error
}

func (m *fakeMap) Dump(keys, values []byte, fn func(keys, values []byte) error) error {
	m.walks++
	if m.err != nil {
		return m.err
	}
	per := len(keys) / m.keySize
	for left := m.n; left > 0; left -= per {
		if err := fn(keys[:min(left, per)*m.keySize], values); err != nil {
			return err
		}
	}
	return nil
}

func TestEntryCounter(t *testing.T) {
	big := &fakeMap{n: 1_000_003, keySize: 16}
	small := &fakeMap{n: 3, keySize: 4}
	c := NewEntryCounter([]CountedMap{
		{Name: "big", KeySize: 16, ValueSize: 64, MaxEntries: 2 << 20, Map: big},
		{Name: "small", KeySize: 4, ValueSize: 8, MaxEntries: 3, Map: small},
	}, 5*time.Second)
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }

	check := func(wantBig, wantWalks int) {
		t.Helper()
		got := c.Counts()
		if len(got) != 2 || got[0].Name != "big" || got[0].Entries != uint64(wantBig) || got[1].Entries != 3 ||
			got[0].Err != nil || got[1].Err != nil {
			t.Errorf("counts %+v, want big %d and small 3", got, wantBig)
		}
		if big.walks != wantWalks || small.walks != wantWalks {
			t.Errorf("%d and %d walks, want %d", big.walks, small.walks, wantWalks)
		}
	}
	check(1_000_003, 1)
	// Within the TTL the count is reused, even if the map changed.
	big.n = 10
	now = now.Add(4 * time.Second)
	check(1_000_003, 1)
	now = now.Add(time.Second)
	check(10, 2)

	// A failed walk says why and keeps the last count.
	big.err = errors.New("operation not permitted")
	now = now.Add(time.Minute)
	got := c.Counts()
	if got[0].Err == nil || !strings.Contains(got[0].Err.Error(), "count entries of map big: operation not permitted") ||
		got[0].Entries != 10 || got[0].At != now {
		t.Errorf("after a failed walk: %+v", got[0])
	}
}
