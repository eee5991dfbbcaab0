// Package control is the daemon's control socket: a unix socket, for
// root only, on which the running daemon answers `udpmapsync status` with
// a JSON document of what it replicates, its peers, the resync in
// progress, the capture backend and its counters. [Listen] and
// [Server.Serve] are the daemon's end, [Query] the command's.
//
// The protocol: the client connects, sends one line naming the request
// ("status"), and the daemon answers with one JSON document ([Status],
// whose Version is [Version]) and closes the connection.
package control

import (
	"fmt"
	"strings"
	"time"
)

// Version is the version of the [Status] schema. It grows when a field
// changes meaning or goes away; fields are only ever added within one
// version.
const Version = 1

// Status is the daemon's answer to a status request.
type Status struct {
	// Version is the schema's version, [Version].
	Version int `json:"version"`
	// Error, when set, is why the daemon could not answer; the other
	// fields are then empty.
	Error string `json:"error,omitempty"`

	Daemon Daemon `json:"daemon"`
	// Ready: the initial sync with the peers is complete.
	Ready   bool    `json:"ready"`
	Maps    []Map   `json:"maps"`
	Peers   []Peer  `json:"peers"`
	Resync  *Resync `json:"resync"` // the full resync being received; null if none
	Capture Capture `json:"capture"`
	// Totals are the node's counters, named as in its stats log line
	// (captured, datagrams_sent, gaps_seen, ...).
	Totals map[string]uint64 `json:"totals"`
}

// Daemon is who answers.
type Daemon struct {
	Version string   `json:"version"`
	Node    uint32   `json:"node"`
	Epoch   uint64   `json:"epoch"`
	Iface   string   `json:"iface"`
	Group   string   `json:"group,omitempty"` // the multicast group, unless Peers is set
	Peers   []string `json:"peers,omitempty"` // --peers, when unicast
	Port    uint16   `json:"port"`
	// Sealed: every datagram is sealed with the --key-file's key.
	Sealed  bool      `json:"sealed"`
	Started time.Time `json:"started"`
	// Time is when this answer was taken.
	Time time.Time `json:"time"`
}

// Map is one replicated map.
type Map struct {
	Name       string `json:"name"`
	Type       string `json:"type"` // hash, lru_hash or array
	KeySize    uint32 `json:"key_size"`
	ValueSize  uint32 `json:"value_size"`
	MaxEntries uint32 `json:"max_entries"`
	// Entries is the number of entries, counted at most a few seconds
	// ago; null if the map could not be read (EntriesError says why).
	Entries      *uint64 `json:"entries"`
	EntriesError string  `json:"entries_error,omitempty"`
	// Options are the map's options in --map's form, each field with its
	// byte range (scan=1s,vanished=keep,clock=lifetime:mono-s[16:20],...);
	// empty when it has none.
	Options string `json:"options,omitempty"`
}

// Peer is one other node, as this node knows it.
type Peer struct {
	Node    uint32 `json:"node"`
	Addr    string `json:"addr"`
	Epoch   uint64 `json:"epoch"`
	Ready   bool   `json:"ready"`
	LastSeq uint64 `json:"last_seq"` // highest sequence number it is known to have sent
	Applied uint64 `json:"applied"`  // highest sequence number applied in order
	// Lag is LastSeq - Applied: its datagrams known sent and not applied.
	Lag uint64 `json:"lag"`
	// LagSeconds is how long the oldest of its datagrams still missing
	// has been missing; 0 when none is.
	LagSeconds float64   `json:"lag_seconds"`
	LastHeard  time.Time `json:"last_heard"`
	// SilentSeconds is the time since LastHeard.
	SilentSeconds float64 `json:"silent_seconds"`
	Datagrams     uint64  `json:"datagrams"` // accepted from it in this epoch
	Gaps          uint64  `json:"gaps"`      // its change datagrams missed in sequence (then repaired or resynced)
	// Loss is Gaps over LastSeq: the share of its change datagrams that
	// did not arrive in order the first time.
	Loss    float64 `json:"loss"`
	Resyncs uint64  `json:"resyncs"` // full resyncs received from it in this epoch
	// ResyncOwed: some of its datagrams were given up here (or a
	// snapshot lacked them) and no full resync from it has brought them
	// yet, whatever Lag says.
	ResyncOwed bool `json:"resync_owed"`
	// Mismatches name its maps that differ from the local map of their
	// name, in schema or in clock, local or lock fields, and how
	// ("flows: the peer treats ..."): their changes are dropped. Omitted
	// when there are none.
	Mismatches []string `json:"mismatches,omitempty"`
}

// Resync is the full resync this node is receiving.
type Resync struct {
	Peer uint32 `json:"peer"`
	// State is "requested" (waiting for the peer's answer) or "streaming".
	State          string    `json:"state"`
	Since          time.Time `json:"since"`
	ElapsedSeconds float64   `json:"elapsed_seconds"`
	Entries        uint64    `json:"entries"` // applied so far
	Datagrams      uint32    `json:"datagrams"`
	// Rate is Entries over ElapsedSeconds.
	Rate float64 `json:"rate"`
	// Total and SecondsLeft are null: a snapshot does not say its size
	// in advance, so neither is known.
	Total       *uint64  `json:"total"`
	SecondsLeft *float64 `json:"seconds_left"`
}

// Capture is how the daemon sees changes to its maps.
type Capture struct {
	Backend string `json:"backend"` // fentry or syscall
	// SeesProgramWrites: writes made by BPF programs are replicated.
	SeesProgramWrites bool `json:"sees_program_writes"`
	// Fallback is why fentry was not used, with --capture auto.
	Fallback string `json:"fallback,omitempty"`
	// CannotSee lists the writes this backend does not replicate.
	CannotSee []string `json:"cannot_see"`
}

// Unseen are the writes no capture backend sees; [BlindSpots] adds the
// program writes the syscall backend misses.
var Unseen = []string{
	"in-place changes through a pointer from bpf_map_lookup_elem",
	"LRU evictions",
}

// BlindSpots lists what a backend cannot see.
func BlindSpots(seesProgramWrites bool) []string {
	if seesProgramWrites {
		return append([]string(nil), Unseen...)
	}
	return append([]string{"writes by BPF programs (bpf_map_update_elem, bpf_map_delete_elem helpers)"}, Unseen...)
}

// InSync says why the node is not in sync: not ready, receiving a resync,
// lagging behind a peer or owing a resync from one, or holding maps that
// differ from a peer's. It returns "" when it is ready, receives no
// resync, and every peer's lag is 0, no resync from it is owed and its
// maps match.
func (s *Status) InSync() string {
	var why []string
	if !s.Ready {
		why = append(why, "the initial sync is not complete")
	}
	if r := s.Resync; r != nil {
		why = append(why, fmt.Sprintf("a full resync from node %d is %s (%d entries so far)", r.Peer, r.State, r.Entries))
	}
	for _, p := range s.Peers {
		if p.Lag > 0 {
			why = append(why, fmt.Sprintf("%d datagrams behind node %d", p.Lag, p.Node))
		}
		if p.ResyncOwed {
			why = append(why, fmt.Sprintf("a full resync from node %d is owed: its changes were lost here", p.Node))
		}
		for _, m := range p.Mismatches {
			name, _, _ := strings.Cut(m, ":")
			why = append(why, fmt.Sprintf("map %s differs from node %d's", name, p.Node))
		}
	}
	return strings.Join(why, "; ")
}
