// Package netnstest runs udpmapsync end to end on one kernel: nodes in
// network namespaces on a shared bridge, maps created and written with
// bpftool, daemons started inside the namespaces, and a byte-for-byte
// comparison of every node's maps. The convergence test, the failure
// scenarios (loss, partitions, restarts, ...) and `make demo` (./demo) are
// built from it.
//
// The topology [NewTopology] builds (names carry a random suffix, shown as
// <rand>, so parallel and leftover runs never collide):
//
//	┌── ums-<rand>-node1 ──┐   ┌── ums-<rand>-node2 ──┐   ┌── ums-<rand>-node3 ──┐
//	│ udpmapsync           │   │ udpmapsync           │   │ udpmapsync           │
//	│ eth1 10.77.0.1/24    │   │ eth1 10.77.0.2/24    │   │ eth1 10.77.0.3/24    │
//	│      fd77::1/64      │   │      fd77::2/64      │   │      fd77::3/64      │
//	└──────────┬───────────┘   └──────────┬───────────┘   └──────────┬───────────┘
//	           │ veth                     │ veth                     │ veth
//	┌──────────┴──────────────────────────┴──────────────────────────┴───────────┐
//	│ ums-<rand>-sw      sw-node1 ─────── sw-node2 ─────── sw-node3              │
//	│                    ports of br0 (mcast_snooping 0: multicast is flooded)   │
//	└────────────────────────────────────────────────────────────────────────────┘
//
// Every namespace is named under /run/netns, so a process enters one with
// `nsenter --net=/run/netns/NAME` and keeps the mount namespace (and with
// it the bpffs holding the maps); `ip netns exec` would remount /sys. The
// nodes have no route besides 10.77.0.0/24 and fd77::/64: a multicast
// sender must pick its interface (IP_MULTICAST_IF), as the daemon's --iface
// does.
//
// BPF maps are global to the kernel, not per namespace, so each node gets
// its own maps under a private bpffs ([MountBPFFS]).
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Names and addresses of the topology.
const (
	// NodeIface is the name of every node's interface on the bridge.
	NodeIface = "eth1"
	// BridgeName is the bridge in the switch namespace.
	BridgeName = "br0"
	// MaxNodes bounds the nodes of one topology: addresses are 10.77.0.N/24
	// and fd77::N/64.
	MaxNodes = 250

	netnsDir = "/run/netns"
)

// Topology is a set of node namespaces joined by a bridge in a switch
// namespace. Close removes it.
type Topology struct {
	// Suffix is the random part of every namespace name of this topology.
	Suffix string
	// Switch is the name of the namespace holding the bridge.
	Switch string
	// Nodes are the node namespaces, Nodes[i] having addresses
	// 10.77.0.(i+1) and fd77::(i+1).
	Nodes []*Node

	created []string // named namespaces to delete on Close
}

// Node is one host of a [Topology]: a network namespace with one
// interface, [NodeIface], plugged into the bridge.
type Node struct {
	// Name is the short name used in logs and paths, "node1" for the first.
	Name string
	// Netns is the namespace's name under /run/netns.
	Netns string
	// Addr is the node's IPv4 address on [NodeIface], with a /24.
	Addr netip.Addr
	// Addr6 is the node's IPv6 address on [NodeIface], with a /64.
	Addr6 netip.Addr
}

// NewTopology creates nodes node namespaces, the switch namespace and the
// bridge, with every interface up, addressed and ready for IPv4 and IPv6
// multicast. On error nothing is left behind.
func NewTopology(nodes int) (_ *Topology, err error) {
	if nodes < 1 || nodes > MaxNodes {
		return nil, fmt.Errorf("create topology: %d nodes, want 1 to %d", nodes, MaxNodes)
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("create topology: random suffix: %w", err)
	}
	sfx := hex.EncodeToString(b[:])
	t := &Topology{Suffix: sfx, Switch: "ums-" + sfx + "-sw"}
	for i := 1; i <= nodes; i++ {
		name := fmt.Sprintf("node%d", i)
		t.Nodes = append(t.Nodes, &Node{
			Name:  name,
			Netns: "ums-" + sfx + "-" + name,
			Addr:  netip.AddrFrom4([4]byte{10, 77, 0, byte(i)}),
			Addr6: netip.AddrFrom16([16]byte{0: 0xfd, 1: 0x77, 15: byte(i)}),
		})
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
		}
	}()

	names := []string{t.Switch}
	for _, n := range t.Nodes {
		names = append(names, n.Netns)
	}
	if err := t.createNamespaces(names); err != nil {
		return nil, err
	}
	if err := t.wire(); err != nil {
		return nil, err
	}
	return t, nil
}

// createNamespaces creates named namespaces on a thread of its own:
// netns.NewNamed moves the calling thread into the new namespace.
func (t *Topology) createNamespaces(names []string) error {
	return inThread(func() error {
		for _, name := range names {
			h, err := netns.NewNamed(name)
			if err != nil {
				return fmt.Errorf("create network namespace %s: %w", name, err)
			}
			h.Close()
			t.created = append(t.created, name)
		}
		return nil
	})
}

// inThread runs fn on a locked OS thread that fn may move to other network
// namespaces, and brings the thread back to its own namespace afterwards.
func inThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			// The thread is still in its own namespace: nothing to restore.
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		err = fn()
		// A thread left in a test namespace must not run other goroutines:
		// it is only unlocked once it is back home, else it dies with this
		// goroutine.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// wire creates the bridge and one veth pair per node and configures them.
func (t *Topology) wire() error {
	sw, err := netns.GetFromName(t.Switch)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", t.Switch, err)
	}
	defer sw.Close()
	hsw, err := netlink.NewHandleAt(sw)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", t.Switch, err)
	}
	defer hsw.Close()
	if err := linkUp(hsw, "lo"); err != nil {
		return fmt.Errorf("switch %s: %w", t.Switch, err)
	}
	// Without a querier, snooping expires group memberships after ~260 s
	// and the bridge stops forwarding the group.
	snooping := false
	bridge := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: BridgeName}, MulticastSnooping: &snooping}
	if err := hsw.LinkAdd(bridge); err != nil {
		return fmt.Errorf("add bridge %s in %s: %w", BridgeName, t.Switch, err)
	}
	br, err := hsw.LinkByName(BridgeName)
	if err != nil {
		return fmt.Errorf("find bridge %s in %s: %w", BridgeName, t.Switch, err)
	}
	if err := hsw.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %s up: %w", BridgeName, err)
	}
	for _, n := range t.Nodes {
		if err := n.plug(hsw, br); err != nil {
			return err
		}
	}
	return nil
}

// plug creates the node's veth pair with one end on the bridge and gives
// the other end, inside the node, its addresses.
func (n *Node) plug(hsw *netlink.Handle, br netlink.Link) error {
	ns, err := netns.GetFromName(n.Netns)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", n.Netns, err)
	}
	defer ns.Close()
	port := "sw-" + n.Name
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port},
		PeerName:      NodeIface,
		PeerNamespace: netlink.NsFd(ns),
	}
	if err := hsw.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s/%s for %s: %w", port, NodeIface, n.Name, err)
	}
	p, err := hsw.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", port, err)
	}
	if err := hsw.LinkSetMaster(p, br); err != nil {
		return fmt.Errorf("attach %s to %s: %w", port, BridgeName, err)
	}
	if err := hsw.LinkSetUp(p); err != nil {
		return fmt.Errorf("set %s up: %w", port, err)
	}

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink handle in %s: %w", n.Netns, err)
	}
	defer h.Close()
	if err := linkUp(h, "lo"); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	eth, err := h.LinkByName(NodeIface)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", NodeIface, n.Netns, err)
	}
	// Without duplicate address detection the IPv6 address is usable at
	// once instead of after a second.
	for _, addr := range []*netlink.Addr{
		{IPNet: &net.IPNet{IP: n.Addr.AsSlice(), Mask: net.CIDRMask(24, 32)}},
		{IPNet: &net.IPNet{IP: n.Addr6.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD},
	} {
		if err := h.AddrAdd(eth, addr); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", addr, NodeIface, n.Netns, err)
		}
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set %s up in %s: %w", NodeIface, n.Netns, err)
	}
	if err := waitIPv6Multicast(h, eth); err != nil {
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	return nil
}

// waitIPv6Multicast waits for the kernel to route IPv6 multicast on link.
// The route appears only once the link-watch work has seen the carrier
// come up (at once here, up to a second after `ip link set up` by hand);
// until then IPv6 multicast arriving on the link is dropped and counted in
// Ip6InNoRoutes. IPv4 multicast has no such delay.
func waitIPv6Multicast(h *netlink.Handle, link netlink.Link) error {
	filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, LinkIndex: link.Attrs().Index}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
		if err != nil {
			return fmt.Errorf("list IPv6 routes of %s: %w", link.Attrs().Name, err)
		}
		for _, r := range routes {
			if r.Dst != nil && r.Dst.IP.IsMulticast() {
				return nil
			}
		}
	}
	return fmt.Errorf("no IPv6 multicast route on %s after 10s", link.Attrs().Name)
}

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// Close deletes the namespaces; their interfaces and the bridge go with
// them once no process is left inside. Calling it again does nothing.
func (t *Topology) Close() error {
	var errs []error
	for _, name := range t.created {
		if err := netns.DeleteNamed(name); err != nil {
			errs = append(errs, fmt.Errorf("delete network namespace %s: %w", name, err))
		}
	}
	t.created = nil
	return errors.Join(errs...)
}

// NetnsPath is the file that names the node's namespace, for nsenter --net
// or setns.
func (n *Node) NetnsPath() string {
	return filepath.Join(netnsDir, n.Netns)
}

// Command returns a command that runs name inside the node's network
// namespace (and nothing else's: mounts, PIDs and the rest are shared). It
// runs in a process group of its own, so a Ctrl-C at the terminal reaches
// only the harness, which then stops its children in order.
// Cancelling ctx kills it.
func (n *Node) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.NetnsPath(), "--", name}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// Do runs fn on a thread inside the node's network namespace. Sockets fn
// opens stay in that namespace after it returns.
func (n *Node) Do(fn func() error) error {
	target, err := netns.GetFromPath(n.NetnsPath())
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", n.Netns, err)
	}
	defer target.Close()
	return inThread(func() error {
		if err := netns.Set(target); err != nil {
			return fmt.Errorf("enter namespace %s: %w", n.Netns, err)
		}
		return fn()
	})
}
