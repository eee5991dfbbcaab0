package netnstest

// Peer discovery on real daemons in unicast mode (no multicast group is
// joined): three nodes, the peers named by a real DNS server (Debian's
// dnsmasq in node1's namespace, answering from a hosts file it re-reads
// on SIGHUP) or listed in a file, both changed while the daemons run.
//
//	node1: dnsmasq :5353, daemon   node2: daemon   node3: daemon
//	       └───────────── bridge (10.77.0.0/24) ──────────┘
//
// The records first name node1 and node2: node3 runs, but nobody sends
// to it. Then node3 is added: it is greeted, repairs what it missed and
// converges. Then node2 is removed: it gets none of the changes written
// after that, while node3 does.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// peersName is the name dnsmasq answers for.
const peersName = "peers.udpmapsync.test"

// peersFile writes the addresses of the given nodes, as a hosts file
// (with a name) or as a peer list, aside and renamed into place.
func peersFile(t *testing.T, path string, c *Cluster, name string, nodes ...int) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# written by TestDiscovery\n")
	for _, i := range nodes {
		fmt.Fprintf(&b, "%s %s\n", c.Topology.Nodes[i].Addr, name)
	}
	if err := os.WriteFile(path+".new", []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// startDNS runs dnsmasq in node's namespace, answering A records from
// hosts alone, and returns it once it serves.
func startDNS(t *testing.T, node *Node, hosts string) (*exec.Cmd, netip.AddrPort) {
	t.Helper()
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("needs dnsmasq: apt-get install dnsmasq-base (or make deps)")
	}
	server := netip.AddrPortFrom(node.Addr, 5353)
	log := filepath.Join(filepath.Dir(hosts), "dnsmasq.log")
	out, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := node.Command(context.Background(), "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
		"--no-resolv", "--no-hosts", "--addn-hosts="+hosts, "--local-ttl=0", "--no-negcache",
		"--listen-address="+node.Addr.String(), "--bind-interfaces", fmt.Sprintf("--port=%d", server.Port()),
		"--user=root", "--group=root", "--pid-file="+filepath.Join(filepath.Dir(hosts), "dnsmasq.pid"),
		"--log-facility=-", "--log-queries")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("dnsmasq:\n%s", b)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if b, _ := os.ReadFile(log); strings.Contains(string(b), "read "+hosts) {
			return cmd, server
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(log)
			t.Fatalf("dnsmasq did not start in 10 s:\n%s", b)
		}
	}
}

// discoveryMaps is one small hash: the test is about who receives, not
// about the maps.
var discoveryMaps = []MapSpec{{Name: "flows", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1024}}

func TestDiscovery(t *testing.T) {
	t.Run("dns", func(t *testing.T) {
		var dns *exec.Cmd
		var hosts string
		discoveryScenario(t, func(c *Cluster) []string {
			hosts = filepath.Join(c.cfg.Dir, "hosts")
			peersFile(t, hosts, c, peersName, 0, 1)
			var server netip.AddrPort
			dns, server = startDNS(t, c.Topology.Nodes[0], hosts)
			// With a key (the default): discovery says where to send,
			// the seal whom to trust.
			return []string{"--peers", "dns:" + peersName, "--dns-server", server.String()}
		}, func(c *Cluster, nodes ...int) {
			peersFile(t, hosts, c, peersName, nodes...)
			if err := dns.Process.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
		}, false)
	})
	t.Run("file", func(t *testing.T) {
		var list string
		discoveryScenario(t, func(c *Cluster) []string {
			list = filepath.Join(c.cfg.Dir, "peers")
			peersFile(t, list, c, "", 0, 1)
			// Without a key the list is also the accept-list: node2,
			// once removed, is refused (forged) as well as not sent to.
			return []string{"--peers", "file:" + list, "--insecure-no-key"}
		}, func(c *Cluster, nodes ...int) { peersFile(t, list, c, "", nodes...) }, true)
	})
}

// discoveryScenario runs the three steps with peers that setup names
// (returning the daemons' arguments) and change renames.
func discoveryScenario(t *testing.T, setup func(*Cluster) []string, change func(*Cluster, ...int), unkeyed bool) {
	c := startCluster(t, ClusterConfig{Nodes: 3, Maps: discoveryMaps, Later: []int{0, 1, 2}})
	args := append(setup(c), "--peers-refresh", "1s", "--digest-interval", "0", "--announce-interval", "500ms")
	c.cfg.Daemon.Args = args
	c.cfg.Daemon.StatsInterval = time.Second
	// node3 first, alone: it becomes ready and sends to node1 and node2,
	// which do not send to it. With a key they hear it and ask it for
	// their initial sync, which it answers though they announce nothing
	// to it (before, they asked for ever while the lists disagreed).
	if err := c.Start(2); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range 2 {
		wg.Go(func() { errs[i] = c.Start(i) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx := t.Context()
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: 200, Seed: 19})
	if err != nil {
		t.Fatal(err)
	}
	write := func(n int) {
		t.Helper()
		batch := make([]Change, n)
		for i := range batch {
			batch[i] = w.Next()
		}
		if err := c.Write(ctx, 0, batch); err != nil {
			t.Fatal(err)
		}
	}
	// has reports whether node i holds what was written so far.
	has := func(i int) bool {
		got, err := c.Read(i)
		if err != nil {
			t.Fatal(err)
		}
		return Compare(w.Want()["flows"], got["flows"]).Equal()
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 20 s", what)
			}
		}
	}

	// 1. node3 is not named: node2 receives node1's changes, node3 not.
	write(50)
	waitFor("node2 holds node1's first writes", func() bool { return has(1) })
	time.Sleep(time.Second) // two announce intervals: node3 would have heard of them
	if has(2) {
		t.Fatal("node3 holds node1's writes before it is named a peer")
	}

	// 2. node3 is named: node1 greets it, it repairs what it missed.
	start := time.Now()
	change(c, 0, 1, 2)
	waitFor("node3, once named, holds node1's writes", func() bool { return has(2) })
	t.Logf("node3 converged %v after it was named", time.Since(start).Round(time.Millisecond))

	// 3. node2 is removed: once node1 and node3 have looked the peers up
	// again they send node2 nothing more. (How many peers a node counts
	// says nothing here: node1 may never have counted three, since node3
	// can converge by asking it before node1 looks node3 up.)
	change(c, 0, 2)
	gone := c.Topology.Nodes[1].Addr
	waitFor("node1 and node3 retire node2", func() bool {
		return retired(t, c.Daemons[0], gone) && retired(t, c.Daemons[2], gone)
	})
	write(50)
	waitFor("node3 holds node1's later writes", func() bool { return has(2) })
	time.Sleep(time.Second)
	if has(1) {
		t.Error("node2 holds node1's writes made after it was removed")
	}
	if unkeyed {
		waitFor("node1 refuses node2 (forged)", func() bool {
			s, err := c.Daemons[0].Stats()
			return err == nil && s["forged"] > 0
		})
	}
}

// retired reports whether one of the daemon's "peers changed" lines
// removed addr.
func retired(t *testing.T, d *Daemon, addr netip.Addr) bool {
	b, err := os.ReadFile(d.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `msg="peers changed"`) {
			continue
		}
		_, removed, _ := strings.Cut(line, " removed=")
		removed, _, _ = strings.Cut(removed, "]")
		if slices.Contains(strings.Fields(strings.Trim(removed, `"[`)), addr.String()) {
			return true
		}
	}
	return false
}
