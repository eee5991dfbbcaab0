package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/udpmapsync/udpmapsync/control"
)

// Exit statuses of `udpmapsync status`, for health checks.
const (
	statusInSync      = 0 // ready, no resync running, no peer lagging, no map differing from a peer's
	statusNotInSync   = 1 // running, but not (yet) in sync: stderr says why
	statusUnreachable = 2 // no daemon answered on the control socket
)

// statusCommand is `udpmapsync status`: it asks the running daemon over
// its control socket and prints what it says, and exits with how in sync
// the node is.
func statusCommand(args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("udpmapsync status", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the daemon's JSON document instead of tables")
	socket := fs.String("control-socket", control.DefaultSocket, "the daemon's --control-socket")
	timeout := fs.Duration("timeout", 5*time.Second, "give up on a daemon that does not answer within this")
	fs.SortFlags = false
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: udpmapsync status [--json] [--control-socket PATH]\n\n"+
			"Shows the running daemon's maps, peers, resync, capture and counters. Exit status:\n"+
			"0 in sync (ready, no resync, no peer lagging, no map differing from a peer's), 1 running but not in sync,\n"+
			"2 no daemon reached.\n\n%s",
			fs.FlagUsages())
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return statusInSync
		}
		fmt.Fprintf(stderr, "udpmapsync status: %v\n", err)
		return statusUnreachable
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "udpmapsync status: unexpected argument %q\n", fs.Arg(0))
		return statusUnreachable
	}
	st, err := control.Query(*socket, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "udpmapsync status: %v\n", err)
		return statusUnreachable
	}
	if *asJSON {
		b, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			fmt.Fprintf(stderr, "udpmapsync status: %v\n", err)
			return statusUnreachable
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else if err := st.WriteTable(stdout); err != nil {
		fmt.Fprintf(stderr, "udpmapsync status: %v\n", err)
		return statusUnreachable
	}
	if why := st.InSync(); why != "" {
		fmt.Fprintf(stderr, "udpmapsync status: not in sync: %s\n", why)
		return statusNotInSync
	}
	return statusInSync
}
