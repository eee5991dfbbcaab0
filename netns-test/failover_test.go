package netnstest

// The failover manager of issue 19: Debian's keepalived, configured with
// deploy/keepalived/keepalived.conf as shipped (only its parameter lines
// set per node), moves a virtual IP between three nodes by VRRP, and
// `udpmapsync status` keeps it off a node that is not in sync.
//
//	node1 priority 130   node2 priority 120   node3 priority 140
//	in sync, master      in sync, backup      joins late: resyncing, so 140-50 = 90
//	      │ fails (isolated, keepalived killed)
//	      ▼
//	                     master (120 > 90)    still resyncing: stays backup
//	                                          in sync: 140 > 120, takes over

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/udpmapsync/udpmapsync/control"
)

const (
	// keepalivedConf is the configuration under test, as shipped.
	keepalivedConf = "../deploy/keepalived/keepalived.conf"
	// failoverVIP is the virtual IP the nodes compete for.
	failoverVIP = "10.77.0.100"
	// failoverDemotion is the weight of the shipped vrrp_script, which
	// the node priorities of the test are chosen around.
	failoverDemotion = 50
)

// failoverPriority is each node's base priority: node3's is the highest,
// and the spread is below failoverDemotion.
var failoverPriority = [...]int{node1: 130, node2: 120, node3: 140}

// requireKeepalived skips t where keepalived is missing.
func requireKeepalived(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("keepalived"); err != nil {
		t.Skip("needs keepalived: apt-get install keepalived (or make deps)")
	}
}

// renderKeepalived returns the shipped configuration with its parameter
// definitions ($NAME=VALUE lines) set to params; a parameter the file does
// not define fails t, so the test cannot drift from the file.
func renderKeepalived(t *testing.T, params map[string]string) []byte {
	t.Helper()
	conf, err := os.ReadFile(keepalivedConf)
	if err != nil {
		t.Fatal(err)
	}
	for name, value := range params {
		def := regexp.MustCompile(`(?m)^\$` + name + `=.*$`)
		if len(def.FindAll(conf, -1)) != 1 {
			t.Fatalf("%s does not define $%s once", keepalivedConf, name)
		}
		conf = def.ReplaceAllLiteral(conf, []byte("$"+name+"="+value))
	}
	return conf
}

// keepalived is one keepalived instance, VRRP only, in a node's namespace,
// with a configuration, pid files and log of its own, so that three run
// side by side on one host.
type keepalived struct {
	node *Node
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

// startKeepalived starts keepalived on node i of c with the shipped
// configuration: this node's priority, its daemon's control socket, and
// the virtual IP on [NodeIface].
func startKeepalived(t *testing.T, c *Cluster, dir string, i int) *keepalived {
	t.Helper()
	n := c.Topology.Nodes[i]
	base := filepath.Join(dir, "keepalived-"+n.Name)
	conf := renderKeepalived(t, map[string]string{
		"IFACE":          NodeIface,
		"VIP":            failoverVIP + "/24",
		"ROUTER_ID":      "77",
		"PRIORITY":       strconv.Itoa(failoverPriority[i]),
		"UDPMAPSYNC":     daemon.path,
		"CONTROL_SOCKET": filepath.Join(dir, n.Name+".sock"),
	})
	if err := os.WriteFile(base+".conf", conf, 0o600); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(base + ".log")
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	// -n: stay in the foreground, to be waited for; -l -D -G: detailed
	// log on stdout, none to syslog; -P: VRRP only.
	cmd := n.Command(context.Background(), "keepalived", "-n", "-l", "-D", "-G", "-P",
		"-f", base+".conf", "-p", base+".pid", "-r", base+".vrrp.pid", "-c", base+".checkers.pid")
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start keepalived on %s: %v", n.Name, err)
	}
	k := &keepalived{node: n, log: log.Name(), cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(k.done)
	}()
	t.Cleanup(func() {
		// SIGTERM: keepalived removes the virtual IP and stops its VRRP
		// child; it is given a few seconds, then killed with its group.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-k.done:
		case <-time.After(5 * time.Second):
			k.kill()
		}
		if t.Failed() {
			t.Logf("keepalived on %s: %s", n.Name, k.tail(30))
		}
	})
	return k
}

// kill ends keepalived and its children (the VRRP process, a running
// check) at once, as a crash of the host would: no advert with priority 0
// tells the others.
func (k *keepalived) kill() {
	syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
	<-k.done
}

// tail returns the last n lines of the log.
func (k *keepalived) tail(n int) string {
	b, err := os.ReadFile(k.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return "\n  | " + strings.Join(lines[max(0, len(lines)-n):], "\n  | ")
}

// scriptResult matches keepalived's log line when the check's result
// changes.
var scriptResult = regexp.MustCompile(`VRRP_Script\(udpmapsync_in_sync\) (succeeded|failed)`)

// inSync reports whether keepalived last logged that the check succeeded.
func (k *keepalived) inSync() bool {
	b, _ := os.ReadFile(k.log)
	m := scriptResult.FindAllSubmatch(b, -1)
	return len(m) > 0 && string(m[len(m)-1][1]) == "succeeded"
}

// logged reports whether keepalived's log contains s.
func (k *keepalived) logged(s string) bool {
	b, _ := os.ReadFile(k.log)
	return bytes.Contains(b, []byte(s))
}

// vipWatch reads which nodes hold the virtual IP, by netlink in each
// node's namespace.
type vipWatch struct {
	handles []*netlink.Handle
	vip     netip.Addr
}

func newVIPWatch(t *testing.T, c *Cluster) *vipWatch {
	t.Helper()
	w := &vipWatch{vip: netip.MustParseAddr(failoverVIP)}
	for _, n := range c.Topology.Nodes {
		ns, err := netns.GetFromPath(n.NetnsPath())
		if err != nil {
			t.Fatal(err)
		}
		h, err := netlink.NewHandleAt(ns)
		ns.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Close)
		w.handles = append(w.handles, h)
	}
	return w
}

// holders returns the indexes of the nodes among nodes whose [NodeIface]
// holds the virtual IP.
func (w *vipWatch) holders(t *testing.T, nodes ...int) []int {
	t.Helper()
	var out []int
	for _, i := range nodes {
		link, err := w.handles[i].LinkByName(NodeIface)
		if err != nil {
			t.Fatal(err)
		}
		addrs, err := w.handles[i].AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == w.vip {
				out = append(out, i)
			}
		}
	}
	return out
}

// waitFor polls cond every 50 ms until it holds, failing t with what after
// timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s after %v", what, timeout)
		}
	}
}

// dropUnicast makes node n drop every unicast UDP datagram to [Port]: the
// snapshots of a full resync and the answers to its requests, while the
// peers' multicast announces still arrive (so the node knows it has ready
// peers to wait for, and does not seed the group with its empty maps).
func dropUnicast(ctx context.Context, n *Node) (*Filter, error) {
	return n.addFilter(ctx, "inet", fmt.Sprintf(`
	chain input {
		type filter hook input priority 0; policy accept;
		iifname %q meta pkttype host udp dport %d drop
	}`, NodeIface, Port))
}

// TestFailoverKeepalived runs keepalived on three nodes with the shipped
// configuration. node1 is master; node3, the highest priority, joins late
// with empty maps and is held in its full resync (its unicast is dropped)
// while node1 fails. The virtual IP must go to node2, which is in sync,
// not to node3; once node3's resync may complete, node3 takes the virtual
// IP, and only after its daemon says it is in sync, holding every entry.
func TestFailoverKeepalived(t *testing.T) {
	requireNft(t)
	requireKeepalived(t)
	dir := t.TempDir()
	maps := []MapSpec{{Name: "flows", Type: ebpf.Hash, KeySize: 8, ValueSize: 16, MaxEntries: 131072}}
	c := startCluster(t, ClusterConfig{
		Nodes: 3, Maps: maps, Later: []int{node3}, Dir: dir,
		Daemon: DaemonConfig{
			StatsInterval: scenarioInterval,
			Args:          []string{"--announce-interval", scenarioInterval.String()},
			ReadyTimeout:  60 * time.Second,
		},
	})
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: 65536, Seed: 19})
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, node1, w, scale(60000), 10000)
	converge(t, c, w.Want())

	vips := newVIPWatch(t, c)
	ka := map[int]*keepalived{}
	for _, i := range []int{node1, node2} {
		ka[i] = startKeepalived(t, c, dir, i)
	}
	// Both start demoted (init_fail) and are promoted once their check
	// passes: node1 must then hold the virtual IP.
	waitFor(t, 20*time.Second, "node1 master and node2 backup, both in sync", func() bool {
		return ka[node1].inSync() && ka[node2].inSync() && slices.Equal(vips.holders(t, node1, node2, node3), []int{node1})
	})

	// node3 joins: its resync cannot complete while its unicast is dropped.
	hold := filter(t, func(ctx context.Context) (*Filter, error) { return dropUnicast(ctx, c.Topology.Nodes[node3]) })
	// Start returns once node3 is ready; the test goes on meanwhile.
	var startErr error
	started := make(chan struct{})
	go func() {
		defer close(started)
		startErr = c.Start(node3)
	}()
	t.Cleanup(func() { <-started })
	ka[node3] = startKeepalived(t, c, dir, node3)
	sock3 := filepath.Join(dir, "node3.sock")
	var st3 *control.Status
	waitFor(t, 20*time.Second, "resync on node3 and node3's keepalived a backup", func() bool {
		st3, _ = control.Query(sock3, time.Second)
		return st3 != nil && st3.Resync != nil && ka[node3].logged("Entering BACKUP STATE")
	})
	if st3.InSync() == "" {
		t.Fatal("node3 says it is in sync while its resync is held")
	}
	t.Logf("node3 before the failure: %s", st3.InSync())

	// node1 fails: its network and its keepalived go at once.
	filter(t, c.Topology.Nodes[node1].Isolate)
	ka[node1].kill()
	failed := time.Now()
	waitFor(t, 20*time.Second, "node2 master after node1 failed", func() bool {
		held := vips.holders(t, node2, node3)
		if slices.Contains(held, node3) {
			t.Fatal("node3 took the virtual IP while its resync is held")
		}
		return slices.Equal(held, []int{node2})
	})
	t.Logf("node2 took the virtual IP %v after node1 failed", time.Since(failed).Round(time.Millisecond))
	st3, err = control.Query(sock3, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if why := st3.InSync(); why == "" {
		t.Fatal("node3 is in sync while its resync is held")
	} else {
		t.Logf("node3 when node2 took over: %s", why)
	}
	// Wait for node3's keepalived to have a chance to take the IP while
	// it is not in sync (three missed adverts and its skew): it must not.
	for range 20 {
		if slices.Equal(vips.holders(t, node3), []int{node3}) {
			t.Fatal("node3 took the virtual IP while not in sync")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// node3 may resync now; it takes the virtual IP once in sync.
	if err := hold.Remove(t.Context()); err != nil {
		t.Fatal(err)
	}
	released := time.Now()
	var inSync, took time.Time
	var entries uint64
	waitFor(t, 30*time.Second, "node3 master after its resync", func() bool {
		st, err := control.Query(sock3, time.Second)
		held := slices.Equal(vips.holders(t, node3), []int{node3})
		if err == nil && st.Resync != nil {
			entries = max(entries, st.Resync.Entries)
		}
		if err == nil && st.InSync() == "" && inSync.IsZero() {
			inSync = time.Now()
		}
		if held && inSync.IsZero() {
			t.Fatalf("node3 took the virtual IP before it was in sync (status: %v)", err)
		}
		if held {
			took = time.Now()
		}
		return held
	})
	have, err := c.Read(node3)
	if err != nil {
		t.Fatal(err)
	}
	if d := Compare(w.Want()["flows"], have["flows"]); !d.Equal() {
		t.Fatalf("node3 took the virtual IP without every entry: %s", d)
	}
	<-started
	if startErr != nil {
		t.Fatal(startErr)
	}
	t.Logf("node3 resynced %d entries (at least %d seen streaming), in sync %v after its resync was released, master %v later",
		len(w.Want()["flows"]), entries, inSync.Sub(released).Round(time.Millisecond), took.Sub(inSync).Round(time.Millisecond))
}
