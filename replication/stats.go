package replication

import (
	"log/slog"
	"sync/atomic"
	"time"
)

// Stats counts what the sender and receiver did and everything they
// dropped. The fields are updated concurrently; read them with
// [Stats.Snapshot].
type Stats struct {
	// Sender.
	Captured        atomic.Uint64 // changes read from the source
	Coalesced       atomic.Uint64 // changes merged into a pending change of the same key
	DatagramsSent   atomic.Uint64 // change datagrams handed to the transport
	BytesSent       atomic.Uint64 // bytes of those datagrams
	ChangesSent     atomic.Uint64 // change records in those datagrams
	BadChanges      atomic.Uint64 // captured changes of an unknown map, op or size, dropped
	SendErrors      atomic.Uint64 // transport sends that failed (their datagrams are lost)
	DatagramsResent atomic.Uint64 // change datagrams resent in answer to peers' repair requests
	RingOverflows   atomic.Uint64 // changes the kernel could not queue; set by the owner of the capture
	Superseded      atomic.Uint64 // captured changes a later write had overwritten by the time they were read, dropped
	RaceChecks      atomic.Uint64 // captured changes that crossed an apply of their key, checked against the map
	Relayed         atomic.Uint64 // entries sent on with the version they had: what a merge found a peer lacking
	Restamped       atomic.Uint64 // entries read after a capture overflow and stamped anew, since a lost write may hold them
	Scans           atomic.Uint64 // scans of a map for in-place changes completed
	ScanFound       atomic.Uint64 // entries a scan found changed and sent as writes of this node
	ScanVanished    atomic.Uint64 // keys a scan found gone without a delete the capture saw (evictions)
	ScanPrints      atomic.Uint64 // keys whose value fingerprint the scans keep (a gauge)

	// Receiver.
	DatagramsReceived atomic.Uint64 // change datagrams and announces accepted from peers; not requests, answers, cookies or snapshot datagrams
	ChangesApplied    atomic.Uint64 // records written to or deleted from local maps
	DeletesMissing    atomic.Uint64 // deletes of keys that were not in the local map
	Stale             atomic.Uint64 // records no newer than what this node knows of their key, skipped
	FutureStamps      atomic.Uint64 // records stamped more than hlc.MaxSkew ahead of this node's clock, dropped
	ApplyErrors       atomic.Uint64 // batches the kernel refused
	UnknownMap        atomic.Uint64 // records for a map fingerprint with no local map
	MapMismatches     atomic.Uint64 // peers' maps that differ from the local map of their name, in schema or in clock, local or lock fields: each peer, map and difference once
	Malformed         atomic.Uint64 // datagrams that failed to decode
	Forged            atomic.Uint64 // datagrams from an unexpected address for their node id
	OwnDropped        atomic.Uint64 // datagrams carrying this node's id
	GapsSeen          atomic.Uint64 // change datagrams missing from a peer's sequence
	NacksSent         atomic.Uint64 // repair requests sent to peers
	NacksSuppressed   atomic.Uint64 // repair requests not sent: another receiver's request to the group for the same datagrams was heard
	RangesRequested   atomic.Uint64 // sequence ranges in those requests
	Repaired          atomic.Uint64 // missing change datagrams filled by a peer's resend
	Duplicates        atomic.Uint64 // datagrams already applied (or held), or from a peer's previous epoch, dropped
	Held              atomic.Uint64 // change datagrams held back waiting for a missing one (a gauge)
	HoldFull          atomic.Uint64 // change datagrams beyond the receive window, dropped to be asked for again
	ResyncNeeded      atomic.Uint64 // gaps that could not be repaired: a full resync from the peer follows
	Unsolicited       atomic.Uint64 // requests and answers from a node not known as a peer, dropped
	PeerLimit         atomic.Uint64 // datagrams from a new node beyond the peer limit, dropped
	PeersExpired      atomic.Uint64 // peers forgotten after a silence
	AnswersLimited    atomic.Uint64 // answers to a peer held back by its answer budget
	Unauthenticated   atomic.Uint64 // datagrams that did not open with this node's keys, or were sealed or not when they should not be
	Replayed          atomic.Uint64 // sealed datagrams whose counter was seen before, or is older than the replay window

	// Return routability.
	CookiesSent      atomic.Uint64 // cookies sent to peers' addresses not yet proved, instead of an answer or before a request
	AddressesProven  atomic.Uint64 // peers' addresses proved by the echo of a cookie
	Withheld         atomic.Uint64 // datagrams not sent to an address not yet proved: it had not sent as much
	CookiesExpired   atomic.Uint64 // echoes of a cookie older than the previous slot, dropped
	CookiesForged    atomic.Uint64 // echoes of a cookie this node did not make, dropped
	CookiesWrongAddr atomic.Uint64 // echoes of a cookie made for another address, dropped

	// Full resync.
	ResyncsSent       atomic.Uint64 // snapshots of the local maps streamed to a peer to the end
	ResyncsReceived   atomic.Uint64 // snapshots received from a peer to the end and applied
	SyncDeleted       atomic.Uint64 // local entries a snapshot showed deleted, removed
	SyncPushed        atomic.Uint64 // entries a merge found the serving peer lacking or holding older, sent back
	TombstonesDropped atomic.Uint64 // deletes forgotten before the horizon because too many were remembered
	KnownKeys         atomic.Uint64 // keys whose latest version this node knows, deleted ones included (a gauge)
	Ready             atomic.Bool   // the initial sync is complete

	// Digest rounds.
	DigestRounds  atomic.Uint64 // rounds this node started with a peer
	DigestFound   atomic.Uint64 // leaf buckets a round found to differ from the peer's, unwritten lately on both sides
	DigestBusy    atomic.Uint64 // buckets that differed but were written lately, so may have changes in flight: left to the next round
	DigestRepairs atomic.Uint64 // filtered resyncs that repaired differing buckets to the end
	DigestHealed  atomic.Uint64 // entries those repairs changed: applied here, sent back, or stamped anew
	DigestBytes   atomic.Uint64 // bytes of digest datagrams sent and received

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

// StatsSnapshot is a copy of [Stats] at one moment.
type StatsSnapshot struct {
	Captured, Coalesced, DatagramsSent, BytesSent, ChangesSent, BadChanges, SendErrors,
	DatagramsResent, RingOverflows, Superseded, RaceChecks, Relayed, Restamped,
	Scans, ScanFound, ScanVanished, ScanPrints uint64

	DatagramsReceived, ChangesApplied, DeletesMissing, Stale, FutureStamps, ApplyErrors, UnknownMap, MapMismatches,
	Malformed, Forged, OwnDropped, GapsSeen, NacksSent, NacksSuppressed, RangesRequested, Repaired,
	Duplicates, Held, HoldFull, ResyncNeeded, Unsolicited, PeerLimit, PeersExpired, AnswersLimited,
	Unauthenticated, Replayed uint64

	CookiesSent, AddressesProven, Withheld, CookiesExpired, CookiesForged, CookiesWrongAddr uint64

	ResyncsSent, ResyncsReceived, SyncDeleted, SyncPushed, TombstonesDropped, KnownKeys uint64

	DigestRounds, DigestFound, DigestBusy, DigestRepairs, DigestHealed, DigestBytes uint64

	Ready bool
}

// Snapshot copies the counters.
func (s *Stats) Snapshot() StatsSnapshot {
	return StatsSnapshot{
		Captured:          s.Captured.Load(),
		Coalesced:         s.Coalesced.Load(),
		DatagramsSent:     s.DatagramsSent.Load(),
		BytesSent:         s.BytesSent.Load(),
		ChangesSent:       s.ChangesSent.Load(),
		BadChanges:        s.BadChanges.Load(),
		SendErrors:        s.SendErrors.Load(),
		DatagramsResent:   s.DatagramsResent.Load(),
		RingOverflows:     s.RingOverflows.Load(),
		Superseded:        s.Superseded.Load(),
		RaceChecks:        s.RaceChecks.Load(),
		Relayed:           s.Relayed.Load(),
		Restamped:         s.Restamped.Load(),
		Scans:             s.Scans.Load(),
		ScanFound:         s.ScanFound.Load(),
		ScanVanished:      s.ScanVanished.Load(),
		ScanPrints:        s.ScanPrints.Load(),
		DatagramsReceived: s.DatagramsReceived.Load(),
		ChangesApplied:    s.ChangesApplied.Load(),
		DeletesMissing:    s.DeletesMissing.Load(),
		Stale:             s.Stale.Load(),
		FutureStamps:      s.FutureStamps.Load(),
		ApplyErrors:       s.ApplyErrors.Load(),
		UnknownMap:        s.UnknownMap.Load(),
		MapMismatches:     s.MapMismatches.Load(),
		Malformed:         s.Malformed.Load(),
		Forged:            s.Forged.Load(),
		OwnDropped:        s.OwnDropped.Load(),
		GapsSeen:          s.GapsSeen.Load(),
		NacksSent:         s.NacksSent.Load(),
		NacksSuppressed:   s.NacksSuppressed.Load(),
		RangesRequested:   s.RangesRequested.Load(),
		Repaired:          s.Repaired.Load(),
		Duplicates:        s.Duplicates.Load(),
		Held:              s.Held.Load(),
		HoldFull:          s.HoldFull.Load(),
		ResyncNeeded:      s.ResyncNeeded.Load(),
		Unsolicited:       s.Unsolicited.Load(),
		PeerLimit:         s.PeerLimit.Load(),
		PeersExpired:      s.PeersExpired.Load(),
		AnswersLimited:    s.AnswersLimited.Load(),
		Unauthenticated:   s.Unauthenticated.Load(),
		Replayed:          s.Replayed.Load(),
		CookiesSent:       s.CookiesSent.Load(),
		AddressesProven:   s.AddressesProven.Load(),
		Withheld:          s.Withheld.Load(),
		CookiesExpired:    s.CookiesExpired.Load(),
		CookiesForged:     s.CookiesForged.Load(),
		CookiesWrongAddr:  s.CookiesWrongAddr.Load(),
		ResyncsSent:       s.ResyncsSent.Load(),
		ResyncsReceived:   s.ResyncsReceived.Load(),
		SyncDeleted:       s.SyncDeleted.Load(),
		SyncPushed:        s.SyncPushed.Load(),
		TombstonesDropped: s.TombstonesDropped.Load(),
		KnownKeys:         s.KnownKeys.Load(),
		DigestRounds:      s.DigestRounds.Load(),
		DigestFound:       s.DigestFound.Load(),
		DigestBusy:        s.DigestBusy.Load(),
		DigestRepairs:     s.DigestRepairs.Load(),
		DigestHealed:      s.DigestHealed.Load(),
		DigestBytes:       s.DigestBytes.Load(),
		Ready:             s.Ready.Load(),
	}
}

// Attrs returns the counters as log attributes named like the metrics
// (captured, datagrams_sent, ...), for a one-line summary.
func (s StatsSnapshot) Attrs() []slog.Attr {
	return []slog.Attr{
		slog.Uint64("captured", s.Captured),
		slog.Uint64("coalesced", s.Coalesced),
		slog.Uint64("datagrams_sent", s.DatagramsSent),
		slog.Uint64("bytes_sent", s.BytesSent),
		slog.Uint64("changes_sent", s.ChangesSent),
		slog.Uint64("bad_changes", s.BadChanges),
		slog.Uint64("send_errors", s.SendErrors),
		slog.Uint64("datagrams_resent", s.DatagramsResent),
		slog.Uint64("ring_overflows", s.RingOverflows),
		slog.Uint64("superseded", s.Superseded),
		slog.Uint64("race_checks", s.RaceChecks),
		slog.Uint64("relayed", s.Relayed),
		slog.Uint64("restamped", s.Restamped),
		slog.Uint64("scans", s.Scans),
		slog.Uint64("scan_found", s.ScanFound),
		slog.Uint64("scan_vanished", s.ScanVanished),
		slog.Uint64("scan_prints", s.ScanPrints),
		slog.Uint64("datagrams_received", s.DatagramsReceived),
		slog.Uint64("changes_applied", s.ChangesApplied),
		slog.Uint64("deletes_missing", s.DeletesMissing),
		slog.Uint64("stale", s.Stale),
		slog.Uint64("future_stamps", s.FutureStamps),
		slog.Uint64("apply_errors", s.ApplyErrors),
		slog.Uint64("unknown_map", s.UnknownMap),
		slog.Uint64("map_mismatches", s.MapMismatches),
		slog.Uint64("malformed", s.Malformed),
		slog.Uint64("forged", s.Forged),
		slog.Uint64("own_dropped", s.OwnDropped),
		slog.Uint64("gaps_seen", s.GapsSeen),
		slog.Uint64("nacks_sent", s.NacksSent),
		slog.Uint64("nacks_suppressed", s.NacksSuppressed),
		slog.Uint64("ranges_requested", s.RangesRequested),
		slog.Uint64("repaired", s.Repaired),
		slog.Uint64("duplicates", s.Duplicates),
		slog.Uint64("held", s.Held),
		slog.Uint64("hold_full", s.HoldFull),
		slog.Uint64("resync_needed", s.ResyncNeeded),
		slog.Uint64("unsolicited", s.Unsolicited),
		slog.Uint64("peer_limit", s.PeerLimit),
		slog.Uint64("peers_expired", s.PeersExpired),
		slog.Uint64("answers_limited", s.AnswersLimited),
		slog.Uint64("unauthenticated", s.Unauthenticated),
		slog.Uint64("replayed", s.Replayed),
		slog.Uint64("cookies_sent", s.CookiesSent),
		slog.Uint64("addresses_proven", s.AddressesProven),
		slog.Uint64("withheld", s.Withheld),
		slog.Uint64("cookies_expired", s.CookiesExpired),
		slog.Uint64("cookies_forged", s.CookiesForged),
		slog.Uint64("cookies_wrong_address", s.CookiesWrongAddr),
		slog.Uint64("resyncs_sent", s.ResyncsSent),
		slog.Uint64("resyncs_received", s.ResyncsReceived),
		slog.Uint64("sync_deleted", s.SyncDeleted),
		slog.Uint64("sync_pushed", s.SyncPushed),
		slog.Uint64("tombstones_dropped", s.TombstonesDropped),
		slog.Uint64("known_keys", s.KnownKeys),
		slog.Uint64("digest_rounds", s.DigestRounds),
		slog.Uint64("digest_found", s.DigestFound),
		slog.Uint64("digest_busy", s.DigestBusy),
		slog.Uint64("digest_repairs", s.DigestRepairs),
		slog.Uint64("digest_healed", s.DigestHealed),
		slog.Uint64("digest_bytes", s.DigestBytes),
		slog.Bool("ready", s.Ready),
	}
}
