package netnstest

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Stats are the counters of one "stats" line of a daemon's log, by the
// names the daemon logs them under (repaired, datagrams_resent,
// ring_overflows, ...). A boolean, such as ready, counts 1 for true.
type Stats map[string]uint64

// ParseStats reads the counters of a "stats" line in the daemon's log
// format (log/slog's text handler: key=value pairs). It reports false for
// any other line.
func ParseStats(line string) (Stats, bool) {
	fields := strings.Fields(line)
	if !slices.Contains(fields, "msg=stats") {
		return nil, false
	}
	s := Stats{}
	for _, f := range fields {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		if n, err := strconv.ParseUint(v, 10, 64); err == nil {
			s[k] = n
		} else if b, err := strconv.ParseBool(v); err == nil && k != "msg" {
			s[k] = 0
			if b {
				s[k] = 1
			}
		}
	}
	return s, true
}

// String lists the counters that are not zero, by name.
func (s Stats) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s)) {
		if s[k] != 0 {
			parts = append(parts, k+"="+strconv.FormatUint(s[k], 10))
		}
	}
	return strings.Join(parts, " ")
}

// Stats returns the counters of the last "stats" line in the daemon's
// log, nil if it has logged none yet.
func (d *Daemon) Stats() (Stats, error) {
	b, err := os.ReadFile(d.LogFile)
	if err != nil {
		return nil, fmt.Errorf("stats of daemon on %s: %w", d.Node.Name, err)
	}
	lines := bytes.Split(b, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		if s, ok := ParseStats(string(lines[i])); ok {
			return s, nil
		}
	}
	return nil, nil
}

// Logged reports whether the daemon has logged a line with the message
// msg.
func (d *Daemon) Logged(msg string) (bool, error) {
	b, err := os.ReadFile(d.LogFile)
	if err != nil {
		return false, fmt.Errorf("log of daemon on %s: %w", d.Node.Name, err)
	}
	// log/slog quotes a message that holds spaces.
	for _, line := range strings.Split(string(b), "\n") {
		line += " "
		if strings.Contains(line, " msg="+msg+" ") || strings.Contains(line, " msg="+strconv.Quote(msg)+" ") {
			return true, nil
		}
	}
	return false, nil
}
