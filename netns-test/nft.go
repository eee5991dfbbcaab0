package netnstest

// Loss and partitions, made with nftables inside a node's namespace: the
// kernels here have no netem qdisc.

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
)

// filterSeq numbers the filters' tables, so that a node can have several.
var filterSeq atomic.Uint64

// Filter is an nftables table in a node's namespace that drops some of the
// node's traffic on [NodeIface], until [Filter.Remove] deletes it.
type Filter struct {
	node   *Node
	family string // of the table: inet, or bridge in the switch
	table  string

	removeOnce sync.Once
	removeErr  error
}

// DropDatagrams makes the node drop percent percent of the UDP datagrams
// to [Port] that arrive on [NodeIface], each one chosen at random
// (`numgen random mod 100 < percent`); with 100 it drops them all. Repair
// requests and resends travel on that port too, so they are lost alike.
func (n *Node) DropDatagrams(ctx context.Context, percent int) (*Filter, error) {
	if percent < 1 || percent > 100 {
		return nil, fmt.Errorf("drop datagrams on %s: %d%%, want 1 to 100", n.Name, percent)
	}
	// nft refuses `< 100`: the value must fit the range of `mod 100`.
	random := fmt.Sprintf("numgen random mod 100 < %d ", percent)
	if percent == 100 {
		random = ""
	}
	return n.addFilter(ctx, "inet", fmt.Sprintf(`
	chain input {
		type filter hook input priority 0; policy accept;
		iifname %q udp dport %d %sdrop
	}`, NodeIface, Port, random))
}

// DropSent makes the switch drop percent percent (1 to 99) of the UDP
// datagrams to [Port] that node n sends into the bridge, each one chosen
// at random as it enters: a dropped one is lost to every receiver, as on
// the sender's own link. It turns off segmentation offload on n's
// interface for good (gso_max_segs 1), so that the datagrams a daemon
// sends as one GSO message cross the bridge, and are dropped, one by one,
// as a real NIC would send them.
func (t *Topology) DropSent(ctx context.Context, n *Node, percent int) (*Filter, error) {
	if percent < 1 || percent > 99 {
		return nil, fmt.Errorf("drop datagrams sent by %s: %d%%, want 1 to 99", n.Name, percent)
	}
	cmd := n.Command(ctx, "ip", "link", "set", "dev", NodeIface, "gso_max_segs", "1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("turn off GSO on %s: %w: %s", n.Name, err, strings.TrimSpace(string(out)))
	}
	sw := &Node{Name: "switch", Netns: t.Switch}
	// prerouting sees a frame once as it enters, before the bridge floods
	// it to every port.
	return sw.addFilter(ctx, "bridge", fmt.Sprintf(`
	chain prerouting {
		type filter hook prerouting priority 0; policy accept;
		iifname %q udp dport %d numgen random mod 100 < %d drop
	}`, "sw-"+n.Name, Port, percent))
}

// Isolate cuts the node off the bridge: every packet arriving on or leaving
// through [NodeIface] is dropped, both ways, as in a network partition.
func (n *Node) Isolate(ctx context.Context) (*Filter, error) {
	return n.addFilter(ctx, "inet", fmt.Sprintf(`
	chain input {
		type filter hook input priority 0; policy accept;
		iifname %q drop
	}
	chain output {
		type filter hook output priority 0; policy accept;
		oifname %q drop
	}`, NodeIface, NodeIface))
}

// addFilter creates a table of family holding chains (nft syntax) in the
// node's namespace.
func (n *Node) addFilter(ctx context.Context, family, chains string) (*Filter, error) {
	f := &Filter{node: n, family: family, table: fmt.Sprintf("udpmapsync_test_%d", filterSeq.Add(1))}
	if err := n.nft(ctx, fmt.Sprintf("table %s %s {%s\n}\n", family, f.table, chains)); err != nil {
		return nil, err
	}
	return f, nil
}

// Remove deletes the filter's table: the node's traffic flows again. Later
// calls return the first call's result, so it can be both called to heal
// a partition and registered with t.Cleanup.
func (f *Filter) Remove(ctx context.Context) error {
	f.removeOnce.Do(func() {
		f.removeErr = f.node.nft(ctx, fmt.Sprintf("delete table %s %s\n", f.family, f.table))
	})
	return f.removeErr
}

// nft runs an nft script inside the node's namespace.
func (n *Node) nft(ctx context.Context, script string) error {
	cmd := n.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s", n.Netns, err, strings.TrimSpace(out.String()))
	}
	return nil
}
