package main

import (
	"log/slog"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/control"
	"github.com/udpmapsync/udpmapsync/discovery"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/metrics"
	"github.com/udpmapsync/udpmapsync/replication"
	"github.com/udpmapsync/udpmapsync/transport"
)

// daemon is what run opens: the maps, the socket, the capture and the
// node replicating them. It is the one source of what the stats line,
// the metrics ([metrics.Source]) and the status command
// ([control.Source]) report.
type daemon struct {
	cfg     *config
	flags   *Flags
	started time.Time

	maps     []*loader.Map
	options  []mapopt.Options // of maps[i]
	counters []*counterMap    // the sum maps'
	log      *slog.Logger
	tr       *transport.UDP
	capture  *loader.Capture
	sealed   bool // --key-file: every datagram is sealed
	epoch    uint64
	node     *replication.Node
	watch    *discovery.Watcher // of --peers dns:NAME or file:PATH; nil if none
	entries  *metrics.EntryCounter
}

// close releases what open opened, in reverse. The node closes the
// capture and the socket itself when it stops; closing them again is
// harmless.
func (d *daemon) close() {
	if d.capture != nil {
		d.capture.Close()
	}
	for _, cm := range d.counters {
		cm.close(d.log)
	}
	if d.tr != nil {
		d.tr.Close()
	}
	for _, m := range d.maps {
		m.Close()
	}
}

// Stats is the node's counters, as the stats line prints them.
func (d *daemon) Stats() replication.StatsSnapshot { return d.node.Stats().Snapshot() }

// Status is the node's view of itself, its peers and its resync.
func (d *daemon) Status() replication.Status { return d.node.Status() }

// ApplySeconds is the apply-time histogram.
func (d *daemon) ApplySeconds() ([len(replication.HistogramBounds) + 1]uint64, float64) {
	return d.node.Stats().ApplySeconds.Snapshot()
}

// The metrics export the peer lookups' counters through this.
var _ metrics.Discovering = (*daemon)(nil)

// Discovery is the peer watcher's counters; nil without dns: or file:.
func (d *daemon) Discovery() *discovery.Stats {
	if d.watch == nil {
		return nil
	}
	return d.watch.Stats()
}

// MapEntries are the maps' entry counts, each at most a few seconds old.
func (d *daemon) MapEntries() []metrics.MapEntries { return d.entries.Counts() }

// Daemon says who answers the status command.
func (d *daemon) Daemon() control.Daemon {
	out := control.Daemon{Version: version, Node: d.cfg.node, Epoch: d.epoch, Iface: d.cfg.iface.Name,
		Port: d.flags.Port, Sealed: d.sealed, Started: d.started}
	if d.cfg.discover != nil || len(d.cfg.peers) > 0 {
		out.Peers = []string{}
		for _, p := range d.peerList() {
			out.Peers = append(out.Peers, p.String())
		}
	} else {
		out.Group = d.cfg.group.String()
	}
	return out
}

// Maps describes the replicated maps with their entry counts.
func (d *daemon) Maps() []control.Map {
	counts := d.entries.Counts()
	out := make([]control.Map, len(d.maps))
	for i, m := range d.maps {
		out[i] = control.Map{Name: m.Name, Type: mapType(m.Type), KeySize: m.KeySize, ValueSize: m.ValueSize,
			MaxEntries: m.MaxEntries}
		if d.options[i].InPlace() {
			out[i].Options = d.options[i].String()
		}
		if c := counts[i]; c.Err != nil {
			out[i].EntriesError = c.Err.Error()
		} else {
			n := c.Entries
			out[i].Entries = &n
		}
	}
	return out
}

// noCapture is the backend a daemon whose maps are all sum maps reports:
// it runs no capture, their scans find every change.
const noCapture = "none (sum maps only: scans find every change)"

// backend is the capture's backend, or noCapture.
func (d *daemon) backend() string {
	if d.capture == nil {
		return noCapture
	}
	return string(d.capture.Backend())
}

// Capture says how changes are captured, and what goes unseen.
func (d *daemon) Capture() control.Capture {
	if d.capture == nil {
		return control.Capture{Backend: noCapture, SeesProgramWrites: true}
	}
	c := control.Capture{Backend: string(d.capture.Backend()), SeesProgramWrites: d.capture.SeesProgramWrites(),
		CannotSee: control.BlindSpots(d.capture.SeesProgramWrites())}
	if why := d.capture.Fallback(); why != nil {
		c.Fallback = why.Error()
	}
	return c
}

// mapType names a map type as bpftool does.
func mapType(t ebpf.MapType) string {
	if name, ok := loader.TypeName(t); ok {
		return name
	}
	return t.String()
}
