package replication

import (
	"fmt"
	"log/slog"
	"reflect"
	"strings"
	"sync/atomic"
	"time"
)

// Counts holds one T for each counter of the node: [Stats] an
// [atomic.Uint64] each, [StatsSnapshot] their values at one moment. The
// fields are the one table of the counters: each field's tags say how
// the stats log line and `udpmapsync status` name it (name), what it
// counts (help), and how Prometheus exports it (metric, with a label to
// make it one series of a family, kind "gauge" for a level rather than a
// total; no metric: not exported). [Counters] reads them. Adding a
// counter is adding a field.
type Counts[T any] struct {
	// Sender.
	Captured        T `name:"captured" metric:"changes_captured_total" help:"Changes to the local maps read from the capture ring buffer."`
	Coalesced       T `name:"coalesced" metric:"changes_coalesced_total" help:"Captured changes merged into a pending change of the same key before sending: captured = sent + coalesced."`
	DatagramsSent   T `name:"datagrams_sent" metric:"datagrams_sent_total" help:"Change datagrams sent to the group (or the --peers)."`
	BytesSent       T `name:"bytes_sent" metric:"bytes_sent_total" help:"Bytes of the change datagrams sent."`
	ChangesSent     T `name:"changes_sent" metric:"changes_sent_total" help:"Change records sent to the peers."`
	BadChanges      T `name:"bad_changes" help:"Captured changes of an unknown map, op or size, dropped."`
	SendErrors      T `name:"send_errors" metric:"send_errors_total" help:"Sends that failed; their datagrams are lost until a repair or resync."`
	DatagramsResent T `name:"datagrams_resent" metric:"datagrams_resent_total" help:"Change datagrams resent to peers that asked for them again: to the group once for all that asked there, or to one peer."`
	HeldBack        T `name:"held_back" metric:"held_back_total" help:"Times the sender waited for a peer still asking for a datagram about to leave the resend buffer (flow control); the capture ring held the changes meanwhile."`
	HoldsRefused    T `name:"holds_refused" metric:"holds_refused_total" help:"Times the sender went on although a peer asked for a datagram about to leave the resend buffer, because that peer's requests had held it back their share of the time already (2 s at once, then half the time)."`
	RingOverflows   T `name:"ring_overflows" metric:"ringbuf_overflows_total" help:"Changes the kernel could not queue in the capture ring buffer; the peers resync from this node."`
	Superseded      T `name:"superseded" metric:"changes_superseded_total" help:"Local changes a later write had overwritten by the time the capture delivered them, dropped: a local write and a peer's write of one key crossed, and the peer's came last."`
	RaceChecks      T `name:"race_checks" metric:"race_checks_total" help:"Local changes of a key a peer's change was applied to meanwhile, read back from the map to order them."`
	Relayed         T `name:"relayed" metric:"changes_relayed_total" help:"Entries sent on with the version they had: what a resync found the peer lacking, or what a restart found written while no daemon ran."`
	Restamped       T `name:"restamped" metric:"entries_restamped_total" help:"Entries read after a capture overflow (by a snapshot or at a stop) and stamped anew, since a lost write may hold them."`
	Scans           T `name:"scans" metric:"scans_total" help:"Scans of a map for in-place changes (the map's scan option) completed."`
	ScanFound       T `name:"scan_found" metric:"scan_found_total" help:"Entries a scan found changed in place, or written where the capture cannot see, and sent as writes of this node."`
	ScanVanished    T `name:"scan_vanished" metric:"scan_vanished_total" help:"Keys a scan found gone without a delete the capture saw (LRU evictions); deleted on the peers only with vanished=delete."`
	ScanPrints      T `name:"scan_prints" metric:"scan_prints" kind:"gauge" help:"Keys whose value fingerprint the scans keep (about 39 bytes each)."`

	// Receiver.
	DatagramsReceived T `name:"datagrams_received" metric:"datagrams_received_total" help:"Change datagrams and announces accepted from peers."`
	ChangesApplied    T `name:"changes_applied" metric:"changes_applied_total" help:"Peers' change records written to or deleted from the local maps, full resyncs included; deletes of absent keys are in udpmapsync_deletes_missing_total instead."`
	DeletesMissing    T `name:"deletes_missing" metric:"deletes_missing_total" help:"Peers' deletes of keys the local map did not hold (normal after a restart)."`
	Stale             T `name:"stale" metric:"changes_stale_total" help:"Peers' change records no newer than the version this node knows of their key, skipped: normal for records that arrive twice or after a newer write."`
	FutureStamps      T `name:"future_stamps" metric:"datagrams_dropped_total" label:"reason=future_stamp" help:"Records stamped more than hlc.MaxSkew ahead of this node's clock, dropped."`
	ApplyErrors       T `name:"apply_errors" metric:"apply_errors_total" help:"Batches of peers' changes the kernel refused to write into a local map."`
	UnknownMap        T `name:"unknown_map" metric:"datagrams_dropped_total" label:"reason=unknown_map" help:"Records for a map fingerprint with no local map."`
	MapMismatches     T `name:"map_mismatches" metric:"map_mismatches_total" help:"Peers' maps found to differ from the local map of their name, in schema or in clock, local or lock fields (each peer, map and difference counted once): their changes to that map are dropped, as unknown_map."`
	Malformed         T `name:"malformed" metric:"datagrams_dropped_total" label:"reason=malformed" help:"Datagrams that failed to decode."`
	Forged            T `name:"forged" metric:"datagrams_dropped_total" label:"reason=forged" help:"Datagrams from an unexpected address for their node id."`
	OwnDropped        T `name:"own_dropped" metric:"datagrams_dropped_total" label:"reason=own" help:"Datagrams carrying this node's id."`
	GapsSeen          T `name:"gaps_seen" metric:"gaps_total" help:"Change datagrams of peers missed in sequence; each is asked for again."`
	NacksSent         T `name:"nacks_sent" help:"Repair requests sent to peers."`
	NacksSuppressed   T `name:"nacks_suppressed" help:"Repair requests not sent: another receiver was heard asking the group for the same datagrams."`
	RangesRequested   T `name:"ranges_requested" help:"Sequence ranges in those requests."`
	Repaired          T `name:"repaired" metric:"datagrams_repaired_total" help:"Missing peer datagrams filled by a peer's resend."`
	Duplicates        T `name:"duplicates" metric:"datagrams_dropped_total" label:"reason=duplicate" help:"Datagrams already applied (or held), or from a peer's previous epoch, dropped."`
	Held              T `name:"held" metric:"datagrams_held" kind:"gauge" help:"Peer datagrams held back behind a missing one."`
	HoldFull          T `name:"hold_full" metric:"datagrams_dropped_total" label:"reason=hold_full" help:"Change datagrams beyond the receive window, dropped to be asked for again."`
	ResyncNeeded      T `name:"resync_needed" metric:"resyncs_needed_total" help:"Gaps that could not be repaired by a resend: a resync from that peer follows, a delta of what it sent since if it can."`
	Unsolicited       T `name:"unsolicited" metric:"datagrams_dropped_total" label:"reason=unsolicited" help:"Requests and answers from a node not known as a peer, dropped."`
	PeerLimit         T `name:"peer_limit" metric:"datagrams_dropped_total" label:"reason=peer_limit" help:"Datagrams from a new node beyond the peer limit, dropped."`
	PeersExpired      T `name:"peers_expired" help:"Peers forgotten after a silence."`
	AnswersLimited    T `name:"answers_limited" help:"Answers to a peer held back by its answer budget."`
	Unauthenticated   T `name:"unauthenticated" metric:"datagrams_dropped_total" label:"reason=unauthenticated" help:"Datagrams that did not open with this node's keys, or were sealed or not when they should not be."`
	Replayed          T `name:"replayed" metric:"datagrams_dropped_total" label:"reason=replayed" help:"Sealed datagrams whose counter was seen before, or is older than the replay window."`

	// Return routability.
	CookiesSent      T `name:"cookies_sent" metric:"cookies_sent_total" help:"Cookies sent to peers' addresses that had not yet proved they receive there, instead of an answer or before a request."`
	AddressesProven  T `name:"addresses_proven" metric:"addresses_proven_total" help:"Peers' addresses proved by the echo of a cookie: from then on they are answered."`
	Withheld         T `name:"withheld" metric:"withheld_total" help:"Datagrams not sent to an address that had not proved itself, because it had not sent this node as much (its share, for what came to the group)."`
	CookiesExpired   T `name:"cookies_expired" metric:"datagrams_dropped_total" label:"reason=cookie_expired" help:"Echoes of a cookie older than the previous slot, dropped."`
	CookiesForged    T `name:"cookies_forged" metric:"datagrams_dropped_total" label:"reason=cookie_forged" help:"Echoes of a cookie this node did not make, dropped."`
	CookiesWrongAddr T `name:"cookies_wrong_address" metric:"datagrams_dropped_total" label:"reason=cookie_wrong_address" help:"Echoes of a cookie made for another address, dropped."`

	// Full resync.
	ResyncsSent       T `name:"resyncs_sent" metric:"resyncs_total" label:"direction=sent" help:"Snapshots of the local maps streamed to a peer to the end."`
	ResyncsReceived   T `name:"resyncs_received" metric:"resyncs_total" label:"direction=received" help:"Snapshots received from a peer to the end and applied."`
	ResyncsDelta      T `name:"resyncs_delta" metric:"resyncs_delta_total" help:"Of the resyncs received, deltas: only what the peer wrote or passed on since the first of its changes lost here."`
	SyncEntries       T `name:"sync_entries" metric:"resync_entries_total" help:"Entries and deletes received in resyncs, full or delta."`
	SyncDeleted       T `name:"sync_deleted" metric:"resync_deleted_total" help:"Local entries a full resync deleted: a newer delete the peer remembered, or a key the peer wrote last and no longer holds."`
	SyncPushed        T `name:"sync_pushed" metric:"resync_sent_back_total" help:"Entries and deletes a full resync found the serving peer lacking, or holding older, and sent back to the group."`
	TombstonesDropped T `name:"tombstones_dropped" metric:"tombstones_dropped_total" help:"Deletes forgotten before --tombstone-horizon because a map had more than a million remembered."`
	KnownKeys         T `name:"known_keys" metric:"known_keys" kind:"gauge" help:"Keys whose latest version this node knows, remembered deletes included (20 bytes each, in a table at most 80% full)."`

	// Digest rounds.
	DigestRounds  T `name:"digest_rounds" metric:"digest_rounds_total" help:"Digest rounds this node started: a comparison of its maps with one peer's, bucket by bucket."`
	DigestFound   T `name:"digest_found" metric:"digest_buckets_differing_total" help:"Leaf buckets a digest round found to differ from the peer's while neither side had written there lately: divergences found."`
	DigestBusy    T `name:"digest_busy" metric:"digest_buckets_busy_total" help:"Buckets that differed but were written lately on either side, so may have had changes in flight: compared again next round."`
	DigestRepairs T `name:"digest_repairs" metric:"digest_repairs_total" help:"Filtered resyncs that repaired the buckets a digest round found differing."`
	DigestHealed  T `name:"digest_healed" metric:"digest_healed_total" help:"Entries digest repairs changed: applied here, sent back to the peer, or stamped anew where two nodes held the same version with different contents."`
	DigestBytes   T `name:"digest_bytes" metric:"digest_bytes_total" help:"Bytes of digest datagrams sent and received (the repairs travel as snapshot datagrams)."`

	// Fragments: updates too large for one datagram, see wire/FORMAT.md
	// "Fragments".
	FragmentsSent         T `name:"fragments_sent" metric:"fragments_sent_total" help:"Fragment records sent in change datagrams and snapshots: chunks of updates too large for one datagram."`
	FragmentsReceived     T `name:"fragments_received" metric:"fragments_received_total" help:"Fragment records taken from peers' checked datagrams."`
	RecordsReassembled    T `name:"records_reassembled" metric:"records_reassembled_total" help:"Records put together from all their fragments, then merged as any record."`
	FragmentsMalformed    T `name:"fragments_malformed" metric:"fragments_dropped_total" label:"reason=malformed" help:"Datagrams dropped for a fragment of a delete or with an index or count that cannot be (also counted as malformed)."`
	FragmentsDuplicate    T `name:"fragments_duplicate" metric:"fragments_dropped_total" label:"reason=duplicate" help:"Fragments whose chunk was held already, dropped."`
	FragmentsInconsistent T `name:"fragments_inconsistent" metric:"fragments_dropped_total" label:"reason=inconsistent" help:"Fragments whose count differs from their record's other fragments, dropped."`
	FragmentsRefused      T `name:"fragments_refused" metric:"fragments_dropped_total" label:"reason=refused" help:"Fragments that would have passed --reassembly-memory, dropped (a snapshot's are sent again)."`
	RecordsRefused        T `name:"records_refused" metric:"records_refused_total" help:"Records of a peer's change stream whose fragments were refused for lack of --reassembly-memory: each is given up like a gap, and a resync from the peer (a delta when it can) brings it."`
	FragmentsAbandoned    T `name:"fragments_abandoned" metric:"records_incomplete_dropped_total" label:"reason=abandoned" help:"Incomplete records dropped because their sender moved on, restarted or began a new snapshot."`
	FragmentsExpired      T `name:"fragments_expired" metric:"records_incomplete_dropped_total" label:"reason=expired" help:"Incomplete records dropped because their missing fragments did not arrive within 30 s."`
	ReassemblyBytes       T `name:"reassembly_bytes" metric:"reassembly_bytes" kind:"gauge" help:"Bytes held for incomplete records (at most --reassembly-memory)."`
}

// Stats counts what the sender and receiver did and everything they
// dropped. The counters are updated concurrently; read them with
// [Stats.Snapshot].
type Stats struct {
	Counts[atomic.Uint64]

	// ApplySeconds is how long each batch write to a local map took.
	ApplySeconds Histogram
}

// HistogramBounds are the upper bounds, in seconds, of the buckets of a
// [Histogram]: from 10 µs, a small batch into a hash map, to a second.
var HistogramBounds = [...]float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1}

// Histogram counts durations into the buckets of [HistogramBounds]
// without locks, for Prometheus to read as a histogram.
type Histogram struct {
	counts [len(HistogramBounds) + 1]atomic.Uint64 // the last one is +Inf
	sumNs  atomic.Uint64
}

// Observe counts one duration.
func (h *Histogram) Observe(d time.Duration) {
	s := d.Seconds()
	i := 0
	for i < len(HistogramBounds) && s > HistogramBounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(max(d, 0)))
}

// Snapshot returns the count of each bucket (not cumulative; the last is
// above every bound), and the sum of the durations in seconds.
func (h *Histogram) Snapshot() (counts [len(HistogramBounds) + 1]uint64, sum float64) {
	for i := range h.counts {
		counts[i] = h.counts[i].Load()
	}
	return counts, time.Duration(h.sumNs.Load()).Seconds()
}

// StatsSnapshot is a copy of the counters of [Stats] at one moment.
type StatsSnapshot Counts[uint64]

// Snapshot copies the counters.
func (s *Stats) Snapshot() StatsSnapshot {
	var out StatsSnapshot
	from, to := reflect.ValueOf(&s.Counts).Elem(), reflect.ValueOf(&out).Elem()
	for i := range to.NumField() {
		to.Field(i).SetUint(from.Field(i).Addr().Interface().(*atomic.Uint64).Load())
	}
	return out
}

// Attrs returns the counters as log attributes named as in [Counters]
// (captured, datagrams_sent, ...), for a one-line summary.
func (s StatsSnapshot) Attrs() []slog.Attr {
	attrs := make([]slog.Attr, len(Counters))
	for i := range Counters {
		attrs[i] = slog.Uint64(Counters[i].Name, Counters[i].Of(&s))
	}
	return attrs
}

// Counter describes one counter: one field of [Counts], from its tags.
type Counter struct {
	// Name names it in the stats log line and in the totals of
	// `udpmapsync status`: captured, datagrams_sent, ...
	Name string
	// Help says what it counts: the metric's help, unless Label makes
	// it one series of a family, whose help the metrics package holds.
	Help string
	// Metric is its Prometheus name without the namespace; "" if it is
	// not exported.
	Metric string
	// LabelName and LabelValue, when set, make it the series of Metric
	// with that label: datagrams_dropped_total{reason="malformed"}.
	LabelName, LabelValue string
	// Gauge: it is a level that goes up and down, not a total.
	Gauge bool

	field int // in Counts
}

// Of reads the counter in s.
func (c *Counter) Of(s *StatsSnapshot) uint64 { return reflect.ValueOf(s).Elem().Field(c.field).Uint() }

// Counters describes every counter, in the order of the fields of
// [Counts], which is the order of the stats log line.
var Counters = counters()

func counters() []Counter {
	t := reflect.TypeFor[Counts[uint64]]()
	out := make([]Counter, t.NumField())
	for i := range out {
		f := t.Field(i)
		c := Counter{Name: f.Tag.Get("name"), Help: f.Tag.Get("help"), Metric: f.Tag.Get("metric"),
			Gauge: f.Tag.Get("kind") == "gauge", field: i}
		if label := f.Tag.Get("label"); label != "" {
			c.LabelName, c.LabelValue, _ = strings.Cut(label, "=")
		}
		if c.Name == "" || c.Help == "" || (c.LabelName != "") != (c.LabelValue != "") {
			panic(fmt.Sprintf("replication: counter %s lacks a name or help, or has a bad label %q", f.Name, f.Tag.Get("label")))
		}
		out[i] = c
	}
	return out
}
