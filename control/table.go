package control

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/udpmapsync/udpmapsync/replication"
)

// WriteTable writes the status for people: a header, then the sections
// MAPS, PEERS, RESYNC, CAPTURE and TOTALS in aligned columns.
func (s *Status) WriteTable(out io.Writer) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	d := &s.Daemon
	where := "group " + d.Group
	switch {
	case len(d.Peers) > 0:
		where = "peers " + strings.Join(d.Peers, ",")
	case d.Group == "": // unicast, and discovery found no one yet
		where = "no peers found"
	}
	sealed := "unsealed: the link must be trusted"
	if d.Sealed {
		sealed = "sealed"
	}
	fmt.Fprintf(w, "udpmapsync %s, node %d on %s (%s, port %d, %s), epoch %d, up %s\n",
		d.Version, d.Node, d.Iface, where, d.Port, sealed, d.Epoch, Duration(d.Time.Sub(d.Started)))
	if why := s.InSync(); why != "" {
		fmt.Fprintf(w, "state: NOT IN SYNC: %s\n", why)
	} else {
		fmt.Fprintf(w, "state: ready and in sync\n")
	}

	fmt.Fprintf(w, "\nMAPS\nNAME\tTYPE\tKEY\tVALUE\tMAX ENTRIES\tENTRIES\tOPTIONS\n")
	for _, m := range s.Maps {
		entries := "?"
		if m.Entries != nil {
			entries = strconv.FormatUint(*m.Entries, 10)
		}
		if m.EntriesError != "" {
			entries += " (" + m.EntriesError + ")"
		}
		fmt.Fprintf(w, "%s\t%s\t%d B\t%d B\t%d\t%s\t%s\n", m.Name, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, entries, cmp.Or(m.Options, "-"))
	}

	fmt.Fprintf(w, "\nPEERS\n")
	if len(s.Peers) == 0 {
		fmt.Fprintf(w, "none heard\n")
	} else {
		fmt.Fprintf(w, "NODE\tADDRESS\tREADY\tLAST SEQ\tAPPLIED\tLAG\tMISSING FOR\tLAST HEARD\tGAPS\tLOSS\tRESYNCS\tEPOCH\n")
		for _, p := range s.Peers {
			missing := "-"
			if p.LagSeconds > 0 {
				missing = Duration(seconds2d(p.LagSeconds))
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%d\t%d\t%s\t%s ago\t%d\t%.2f%%\t%d\t%d\n", p.Node, p.Addr, yesNo(p.Ready),
				p.LastSeq, p.Applied, p.Lag, missing, Duration(seconds2d(p.SilentSeconds)), p.Gaps, 100*p.Loss,
				p.Resyncs, p.Epoch)
		}
		for _, p := range s.Peers {
			for _, m := range p.Mismatches {
				fmt.Fprintf(w, "MISMATCH: peer %d (%s), map %s; its changes to it are dropped\n", p.Node, p.Addr, m)
			}
		}
	}

	fmt.Fprintf(w, "\nRESYNC\n")
	if r := s.Resync; r == nil {
		fmt.Fprintf(w, "none in progress\n")
	} else {
		fmt.Fprintf(w, "FROM\tSTATE\tFOR\tENTRIES\tRATE\tTOTAL\tTIME LEFT\n")
		fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%.0f entries/s\tunknown\tunknown\n", r.Peer, r.State,
			Duration(seconds2d(r.ElapsedSeconds)), r.Entries, r.Rate)
	}

	c := &s.Capture
	fmt.Fprintf(w, "\nCAPTURE\nbackend\t%s\n", c.Backend)
	sees := "writes from user space (bpf(2) updates and deletes, single and batch)"
	if c.SeesProgramWrites {
		sees += " and from BPF programs"
	}
	fmt.Fprintf(w, "sees\t%s\n", sees)
	fmt.Fprintf(w, "cannot see\t%s\n", strings.Join(c.CannotSee, "; "))
	if c.Fallback != "" {
		fmt.Fprintf(w, "fentry unavailable\t%s\n", c.Fallback)
	}

	fmt.Fprintf(w, "\nTOTALS\n")
	names := totalsOrder(s.Totals)
	const perRow = 3
	for i, name := range names {
		sep := "\t"
		if (i+1)%perRow == 0 || i == len(names)-1 {
			sep = "\n"
		}
		fmt.Fprintf(w, "%s\t%d%s", name, s.Totals[name], sep)
	}
	return w.Flush()
}

// totalsOrder lists the totals in the order of the stats log line, then
// any the daemon has that this command does not know, by name.
func totalsOrder(totals map[string]uint64) []string {
	var names []string
	known := map[string]bool{}
	for _, c := range replication.Counters {
		known[c.Name] = true
		if _, ok := totals[c.Name]; ok {
			names = append(names, c.Name)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(totals)) {
		if !known[k] {
			names = append(names, k)
		}
	}
	return names
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func seconds2d(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// Duration writes d for people: 350ms, 12.3s, 4m12s, 3h04m, 2d03h.
func Duration(d time.Duration) string {
	if d = max(d, 0); d >= time.Second {
		d = d.Round(100 * time.Millisecond) // 59.96s is 1m00s, not 60.0s
	}
	switch {
	case d < time.Second:
		return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
	case d < time.Minute:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}
