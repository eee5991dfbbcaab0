package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"time"

	"github.com/udpmapsync/udpmapsync/discovery"
)

// peersConfig reads --peers: a static list, or a source that discovery
// watches (dns:NAME, file:PATH). A file must be readable and hold only
// addresses at start-up; a name that does not resolve yet is not an
// error: a DaemonSet's Service has no endpoints before its pods are
// ready, so the node starts alone and greets the others as they appear.
func (f *Flags) peersConfig(c *config) error {
	var r discovery.Resolver
	if f.DNSServer != "" {
		server, err := netip.ParseAddrPort(f.DNSServer)
		if err != nil {
			return fmt.Errorf("--dns-server %s: not an address and port (e.g. 10.0.0.1:53)", f.DNSServer)
		}
		r = discovery.ResolverAt(server)
	}
	var err error
	if c.peers, c.discover, err = discovery.Parse(f.Peers, c.group.Is6(), r); err != nil {
		return err
	}
	if c.discover == nil {
		return nil
	}
	// None until found: without a key the node accepts no one before
	// the first lookup that works.
	c.peers = []netip.Addr{}
	if f.PeersRefresh < discovery.MinRefresh {
		return fmt.Errorf("--peers-refresh %s: must be at least %s (default %s)",
			f.PeersRefresh, discovery.MinRefresh, discovery.DefaultRefresh)
	}
	if file, ok := c.discover.(*discovery.File); ok {
		_, err := file.Lookup(context.Background())
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("--peers %s: no such file; create it with one peer address a line, or fix the path", file)
		} else if err != nil {
			return fmt.Errorf("--peers %s: %w", file, err)
		}
	}
	return nil
}

// watchPeers looks the peers up once, before the node runs, and returns
// the watcher that keeps them current; nil with a static --peers or
// multicast.
func (d *daemon) watchPeers(log *slog.Logger) *discovery.Watcher {
	if d.cfg.discover == nil {
		return nil
	}
	w := discovery.NewWatcher(d.cfg.discover, func(ch discovery.Change) {
		if _, err := d.tr.SetPeers(ch.Peers); err != nil {
			log.Error("cannot send to the peers found", "source", d.cfg.discover.String(), "error", err)
		}
		d.node.SetPeers(ch.Peers)
	}, log)
	_ = w.Refresh(context.Background()) // a failure is logged; the node starts alone
	return w
}

// runWatcher refreshes the peers every --peers-refresh until ctx is done.
func (d *daemon) runWatcher(ctx context.Context) {
	if d.watch == nil {
		return
	}
	t := time.NewTicker(d.flags.PeersRefresh)
	defer t.Stop()
	d.watch.Run(ctx, t.C)
}

// peerList is where the node sends: the peers of --peers, found or given;
// nil in multicast mode.
func (d *daemon) peerList() []netip.Addr {
	if d.watch != nil {
		return d.watch.Peers()
	}
	return d.cfg.peers
}
