package discovery

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"
)

// maxFileSize bounds a peer file: MaxPeers lines with comments fit many
// times over, and a file that is not a peer list is not read whole.
const maxFileSize = 1 << 20

// File is the peers of --peers file:PATH: one address a line, blank lines
// and what follows a # ignored. It is read again only when its size,
// modification time or inode changed, so a refresh of an unchanged file
// costs a stat. Write it whole and rename it into place, so that no
// refresh reads half of it.
type File struct {
	path string
	v6   bool

	stamp fileStamp    // of the file last read
	addrs []netip.Addr // what it held
	err   error        // what was wrong with it
}

// fileStamp tells one version of a file from another.
type fileStamp struct {
	size, ino uint64
	mtime     time.Time
}

// NewFile returns the source of the peers listed in path; with v6 the
// addresses must be IPv6, else IPv4.
func NewFile(path string, v6 bool) *File { return &File{path: path, v6: v6} }

func (f *File) String() string { return PrefixFile + f.path }

// Lookup reads the file if it changed. A file that cannot be read is an
// error and yields no peers; lines that are not an address of the family
// are skipped and reported as a [*BadLinesError] beside the others.
func (f *File) Lookup(context.Context) ([]netip.Addr, error) {
	fi, err := os.Stat(f.path)
	if err != nil {
		return nil, err
	}
	stamp := fileStamp{size: uint64(fi.Size()), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		stamp.ino = st.Ino
	}
	if stamp == f.stamp && f.addrs != nil {
		return f.addrs, f.err
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("%s: %d bytes; a peer list is one address a line, at most %d bytes", f.path, fi.Size(), maxFileSize)
	}
	b, err := os.ReadFile(f.path)
	if err != nil {
		return nil, err
	}
	f.addrs, f.err = parseList(f.path, b, f.v6)
	f.stamp = stamp
	return f.addrs, f.err
}

// BadLinesError lists the lines of a peer file that are not an address.
type BadLinesError struct {
	Path  string
	Count int    // lines skipped
	Lines []int  // their numbers, from 1, the first 16
	First string // what is wrong with the first
}

func (e *BadLinesError) Error() string {
	return fmt.Sprintf("%s: %d lines skipped (lines %v): line %d: %s; write one IP address a line, # for comments",
		e.Path, e.Count, e.Lines, e.Lines[0], e.First)
}

// maxBadLines bounds the line numbers a [BadLinesError] keeps.
const maxBadLines = 16

// parseList reads one address a line.
func parseList(path string, b []byte, v6 bool) ([]netip.Addr, error) {
	addrs := []netip.Addr{}
	var bad *BadLinesError
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, maxFileSize)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		why := ""
		a, err := netip.ParseAddr(line)
		switch {
		case err != nil:
			why = fmt.Sprintf("%q is not an IP address", line)
		case a.Unmap().Is6() != v6:
			why = fmt.Sprintf("%s is not %s, the family of --group", line, family(v6))
		default:
			addrs = append(addrs, a.Unmap())
			continue
		}
		if bad == nil {
			bad = &BadLinesError{Path: path, First: why}
		}
		bad.Count++
		if len(bad.Lines) < maxBadLines {
			bad.Lines = append(bad.Lines, n)
		}
	}
	if bad != nil {
		return addrs, bad
	}
	return addrs, nil
}

// family names an address family as the errors say it.
func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}
