package netnstest

// Tests of the harness itself, without the daemon: if these pass, a failed
// convergence test is the daemon's failure, not the harness's.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv4"

	"github.com/udpmapsync/udpmapsync/replication"
	"github.com/udpmapsync/udpmapsync/seal"
)

// requireHarness skips t where the harness cannot run at all.
func requireHarness(t *testing.T) {
	t.Helper()
	if err := Requirements(); err != nil {
		t.Skip(err)
	}
}

// newTopology builds a topology of nodes nodes, removed when the test
// ends.
func newTopology(t *testing.T, nodes int) *Topology {
	t.Helper()
	topo, err := NewTopology(nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	return topo
}

// TestTopologyMulticast proves the bridge floods multicast: every node
// sends to the group from a plain UDP socket and every other node must
// receive it, from the sender's address.
func TestTopologyMulticast(t *testing.T) {
	requireHarness(t)
	topo := newTopology(t, 3)

	sw, err := netns.GetFromName(topo.Switch)
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	h, err := netlink.NewHandleAt(sw)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br, err := h.LinkByName(BridgeName)
	if err != nil {
		t.Fatal(err)
	}
	if s := br.(*netlink.Bridge).MulticastSnooping; s == nil || *s {
		t.Errorf("bridge %s: multicast snooping is not off", BridgeName)
	}

	group := net.ParseIP(Group)
	conns := make([]*ipv4.PacketConn, len(topo.Nodes))
	for i, n := range topo.Nodes {
		err := n.Do(func() error {
			c, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", Port))
			if err != nil {
				return err
			}
			p := ipv4.NewPacketConn(c)
			conns[i] = p
			ifi, err := net.InterfaceByName(NodeIface)
			if err != nil {
				return err
			}
			if err := p.JoinGroup(ifi, &net.UDPAddr{IP: group}); err != nil {
				return err
			}
			if err := p.SetMulticastLoopback(false); err != nil {
				return err
			}
			return p.SetMulticastInterface(ifi)
		})
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		defer conns[i].Close()
	}

	// Receivers run until each has heard every other node; senders repeat
	// until then, so a datagram lost while interfaces settle does not fail
	// the test, and a bridge that never forwards does.
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, len(topo.Nodes))
	for i, n := range topo.Nodes {
		wg.Go(func() {
			heard := map[string]bool{}
			buf := make([]byte, 100)
			conns[i].SetReadDeadline(time.Now().Add(10 * time.Second))
			for len(heard) < len(topo.Nodes)-1 {
				k, _, src, err := conns[i].ReadFrom(buf)
				if err != nil {
					errs[i] = fmt.Errorf("%s heard only %v: %w", n.Name, heard, err)
					return
				}
				from := string(buf[:k])
				want := fmt.Sprintf("%s:%d", topo.Nodes[nodeIndex(t, from)].Addr, Port)
				if from == n.Name || src.String() != want {
					errs[i] = fmt.Errorf("%s got %q from %v, want another node's name from %s", n.Name, from, src, want)
					return
				}
				heard[from] = true
			}
		})
	}
	go func() {
		wg.Wait()
		close(done)
	}()
	dst := &net.UDPAddr{IP: group, Port: Port}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for sending := true; sending; {
		for i, n := range topo.Nodes {
			if _, err := conns[i].WriteTo([]byte(n.Name), nil, dst); err != nil {
				t.Fatalf("%s: send to %v: %v", n.Name, dst, err)
			}
		}
		select {
		case <-done:
			sending = false
		case <-tick.C:
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}

	if err := topo.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range append([]string{topo.Switch}, topo.Nodes[0].Netns) {
		if _, err := os.Stat(filepath.Join(netnsDir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s still there after Close: %v", name, err)
		}
	}
}

// nodeIndex maps "nodeN" to N-1.
func nodeIndex(t *testing.T, name string) int {
	var i int
	if _, err := fmt.Sscanf(name, "node%d", &i); err != nil || i < 1 {
		t.Errorf("bad node name %q", name)
		return 0
	}
	return i - 1
}

// TestWriteAndRead checks the harness's writer (bpftool batch), reader
// (batch lookups) and comparison against each other with no daemon: what
// the workload says it wrote is what the node holds, the other node's maps
// stay empty, and a single changed byte is reported.
func TestWriteAndRead(t *testing.T) {
	requireHarness(t)
	ctx := t.Context()
	c, err := NewCluster(ctx, ClusterConfig{Nodes: 2, Maps: DefaultMaps(), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 2, Keys: 300, DeleteRatio: 0.3, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	var deletes, updates int
	written := map[string]int{}
	for range 6 {
		var batch []Change
		for range 500 {
			ch := w.Next()
			if ch.Delete {
				deletes++
			} else {
				updates++
				written[ch.Map+string(ch.Key)]++
			}
			batch = append(batch, ch)
		}
		if err := c.Write(ctx, 0, batch); err != nil {
			t.Fatal(err)
		}
	}
	rewritten := 0
	for _, n := range written {
		if n > 1 {
			rewritten++
		}
	}
	if deletes == 0 || rewritten == 0 {
		t.Errorf("workload made %d deletes and rewrote %d keys; want some of both", deletes, rewritten)
	}

	s, err := c.Status(w.Want())
	if err != nil {
		t.Fatal(err)
	}
	for j, d := range s.Diffs[0] {
		if !d.Equal() || d.Want == 0 {
			t.Errorf("node1 %s: %s", s.Maps[j], d)
		}
	}
	for j, d := range s.Diffs[1] {
		if d.Have != 0 || d.Missing != d.Want {
			t.Errorf("node2 %s was not written to, but: %s", s.Maps[j], d)
		}
	}

	// Flip the last byte of one value behind the workload's back.
	var key, value string
	for key, value = range w.Want()["odd"] {
		break
	}
	changed := []byte(value)
	changed[len(changed)-1] ^= 0xff
	if err := c.Write(ctx, 0, []Change{{Map: "odd", Key: []byte(key), Value: changed}}); err != nil {
		t.Fatal(err)
	}
	have, err := c.Read(0)
	if err != nil {
		t.Fatal(err)
	}
	d := Compare(w.Want()["odd"], have["odd"])
	if d.Wrong != 1 || d.Missing != 0 || d.Extra != 0 || len(d.First) != 1 || !strings.Contains(d.First[0], fmt.Sprintf("%x", key)) {
		t.Errorf("after changing key %x: %s; want exactly that key wrong", key, d)
	}
}

// TestReadContentsArray checks the array convention of [Contents]: slots
// holding zeros read as absent, all others are read.
func TestReadContentsArray(t *testing.T) {
	requireHarness(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 3, MaxEntries: 10000})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	want := Contents{}
	for i := uint32(0); i < 10000; i += 7 {
		v := []byte{0, 0, byte(i)}
		if byte(i) == 0 {
			v[0] = 1
		}
		if err := m.Put(i, v); err != nil {
			t.Fatal(err)
		}
		want[string([]byte{byte(i), byte(i >> 8), 0, 0})] = string(v)
	}
	have, err := ReadContents(m)
	if err != nil {
		t.Fatal(err)
	}
	if d := Compare(want, have); !d.Equal() {
		t.Error(d)
	}
}

// fakeDaemon stands in for udpmapsync in TestDaemonRunner: the runner's
// own job (namespace, flags, ready file, log, SIGTERM then SIGKILL) is
// what is tested, and must be testable before the daemon exists. It
// writes its network namespace into the ready file.
const fakeDaemon = `#!/bin/sh
echo "args: $*"
while [ $# -gt 0 ]; do
	case "$1" in
	--ready-file) ready=$2; shift ;;
	--fake) mode=$2; shift ;;
	esac
	shift
done
case "$mode" in
fail) echo "attach capture: operation not permitted" >&2; exit 3 ;;
ignore-term) trap '' TERM ;;
*) trap 'echo "stopping"; exit 0' TERM ;;
esac
if [ "$mode" != never-ready ]; then
	readlink /proc/self/ns/net > "$ready.tmp" && mv "$ready.tmp" "$ready"
fi
while :; do sleep 0.05; done
`

func TestDaemonRunner(t *testing.T) {
	requireHarness(t)
	topo := newTopology(t, 1)
	node := topo.Nodes[0]
	dir := t.TempDir()
	bin := filepath.Join(dir, "fake-udpmapsync")
	if err := os.WriteFile(bin, []byte(fakeDaemon), 0o755); err != nil {
		t.Fatal(err)
	}
	start := func(mode string) (*Daemon, error) {
		return StartDaemon(node, DaemonConfig{
			Binary:       bin,
			Maps:         []string{"/pinned/a", "/pinned/b"},
			LogFile:      filepath.Join(dir, mode+".log"),
			ReadyFile:    filepath.Join(dir, mode+".ready"),
			Args:         []string{"--fake", mode},
			ReadyTimeout: 2 * time.Second,
		})
	}

	t.Run("ready", func(t *testing.T) {
		d, err := start("ok")
		if err != nil {
			t.Fatal(err)
		}
		defer d.Stop(time.Second)
		ready, err := os.ReadFile(filepath.Join(dir, "ok.ready"))
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(node.NetnsPath(), &st); err != nil {
			t.Fatal(err)
		}
		if got, want := strings.TrimSpace(string(ready)), fmt.Sprintf("net:[%d]", st.Ino); got != want {
			t.Errorf("daemon ran in namespace %s, want %s (%s)", got, want, node.Netns)
		}
		if exited, err := d.Exited(); exited {
			t.Fatalf("exited: %v", err)
		}
		if err := d.Stop(time.Second); err != nil {
			t.Fatal(err)
		}
		log := d.Tail(10)
		for _, want := range []string{
			"--iface eth1 --group 239.1.1.1 --port 3870 --capture auto --log-level info --stats-interval 5s --ready-file ",
			"--map /pinned/a --map /pinned/b --fake ok",
			// A key by default, shared by the daemons logging here.
			"--key-file " + filepath.Join(dir, KeyFileName),
			"stopping",
		} {
			if !strings.Contains(log, want) {
				t.Errorf("log lacks %q: %s", want, log)
			}
		}
		// The default key is one the daemon takes: mode 0600, one key.
		if _, err := seal.LoadKeyFile(filepath.Join(dir, KeyFileName)); err != nil {
			t.Errorf("the harness's key file: %v", err)
		}
	})

	t.Run("own key", func(t *testing.T) {
		// A key the test gives, in either form, is the only one.
		for _, args := range [][]string{{"--key-file", "/given.key"}, {"--key-file=/given.key"}} {
			d, err := StartDaemon(node, DaemonConfig{Binary: bin, LogFile: filepath.Join(dir, "own.log"),
				ReadyFile: filepath.Join(dir, "own.ready"), Args: args, ReadyTimeout: 2 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Stop(time.Second); err != nil {
				t.Fatal(err)
			}
			if log := d.Tail(10); strings.Count(log, "--key-file") != 1 {
				t.Errorf("args %q: want that --key-file alone: %s", args, log)
			}
			os.Remove(filepath.Join(dir, "own.ready"))
		}
	})

	t.Run("no key", func(t *testing.T) {
		d, err := StartDaemon(node, DaemonConfig{Binary: bin, LogFile: filepath.Join(dir, "nokey.log"),
			ReadyFile: filepath.Join(dir, "nokey.ready"), InsecureNoKey: true, ReadyTimeout: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Stop(time.Second); err != nil {
			t.Fatal(err)
		}
		if log := d.Tail(10); !strings.Contains(log, "--insecure-no-key") || strings.Contains(log, "--key-file") {
			t.Errorf("InsecureNoKey: want --insecure-no-key and no --key-file: %s", log)
		}
	})

	t.Run("exits early", func(t *testing.T) {
		_, err := start("fail")
		if err == nil || !strings.Contains(err.Error(), "exited before it was ready") || !strings.Contains(err.Error(), "operation not permitted") {
			t.Fatalf("got %v, want an early exit error quoting the log", err)
		}
	})

	t.Run("never ready", func(t *testing.T) {
		_, err := start("never-ready")
		if err == nil || !strings.Contains(err.Error(), "no ready file") {
			t.Fatalf("got %v, want a ready timeout", err)
		}
	})

	t.Run("ignores SIGTERM", func(t *testing.T) {
		d, err := start("ignore-term")
		if err != nil {
			t.Fatal(err)
		}
		err = d.Stop(300 * time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("got %v, want a kill after the grace period", err)
		}
		if exited, _ := d.Exited(); !exited {
			t.Fatal("still running after Stop")
		}
	})
}

// TestParseStats reads back a stats line made as the daemon makes it:
// the replication counters' attributes through log/slog's text handler.
func TestParseStats(t *testing.T) {
	var st replication.Stats
	st.Repaired.Store(7)
	st.DatagramsResent.Store(1 << 40)
	var b bytes.Buffer
	log := slog.New(slog.NewTextHandler(&b, nil))
	log.Info("peer restarted", "node", 5)
	log.LogAttrs(t.Context(), slog.LevelInfo, "stats", append(st.Snapshot().Attrs(), slog.Bool("ready", true), slog.Int("peers", 2))...)
	log.Info("stopping")

	var got Stats
	for line := range strings.Lines(b.String()) {
		if s, ok := ParseStats(line); ok {
			if got != nil {
				t.Errorf("two stats lines in:\n%s", b.String())
			}
			got = s
		}
	}
	want := Stats{"repaired": 7, "datagrams_resent": 1 << 40, "ready": 1, "peers": 2}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d; parsed %v from:\n%s", k, got[k], v, got, b.String())
		}
	}
	if n := len(st.Snapshot().Attrs()) + 2; len(got) != n {
		t.Errorf("parsed %d counters, want %d: %v", len(got), n, got)
	}
}

// TestFilters checks the loss and partition filters with plain UDP
// between two nodes: a filter drops what it says, in the direction it
// says, and nothing once removed.
func TestFilters(t *testing.T) {
	requireHarness(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft")
	}
	topo := newTopology(t, 2)
	a, b := topo.Nodes[0], topo.Nodes[1]
	conns := map[*Node]*net.UDPConn{}
	for _, n := range topo.Nodes {
		err := n.Do(func() (err error) {
			conns[n], err = net.ListenUDP("udp4", &net.UDPAddr{Port: Port})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer conns[n].Close()
	}
	// delivered sends count datagrams from one node to the other, 100 at
	// a time so that the receive buffer holds them, and counts those that
	// arrive. Waiting only briefly for stragglers can only make a filter
	// look better than it is.
	delivered := func(from, to *Node, count int) int {
		t.Helper()
		dst := &net.UDPAddr{IP: to.Addr.AsSlice(), Port: Port}
		got := 0
		buf := make([]byte, 10)
		for sent := 0; sent < count; {
			chunk := min(count-sent, 100)
			for range chunk {
				// An output filter refuses the send (EPERM): not delivered.
				if _, err := conns[from].WriteToUDP([]byte("x"), dst); err != nil && !errors.Is(err, syscall.EPERM) {
					t.Fatal(err)
				}
			}
			sent += chunk
			for got < sent {
				conns[to].SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, _, err := conns[to].ReadFromUDP(buf); err != nil {
					break
				}
				got++
			}
		}
		return got
	}
	both := func(what string, ab, ba int) {
		t.Helper()
		if got := delivered(a, b, 1); got != ab {
			t.Errorf("%s: node1 to node2: %d of 1 datagram delivered, want %d", what, got, ab)
		}
		if got := delivered(b, a, 1); got != ba {
			t.Errorf("%s: node2 to node1: %d of 1 datagram delivered, want %d", what, got, ba)
		}
	}
	ctx := t.Context()
	both("no filter", 1, 1)

	cut, err := b.Isolate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	both("node2 isolated", 0, 0)
	if err := cut.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	both("partition healed", 1, 1)

	drop, err := b.DropDatagrams(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	both("node2 drops all it receives", 0, 1)
	if err := drop.Remove(ctx); err != nil {
		t.Fatal(err)
	}

	loss, err := b.DropDatagrams(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	defer loss.Remove(context.Background())
	// 1000 datagrams at 30% loss: 700 arrive, give or take 14.5 (one
	// standard deviation); the bounds are 10 of them away.
	got := delivered(a, b, 1000)
	if got < 555 || got > 845 {
		t.Errorf("node2 drops 30%%: %d of 1000 datagrams delivered, want about 700", got)
	}
	t.Logf("node2 drops 30%%: %d of 1000 datagrams delivered", got)
}

// A diff spells out at most the first bytes of a long value, with its
// length: a report of 4 KiB values that differ stays readable (it printed
// every byte of three of them, 24 kB a line).
func TestCompareShortensLongValues(t *testing.T) {
	long := strings.Repeat("\xab", 4096)
	d := Compare(Contents{"k": long}, Contents{"k": long[:4095] + "\x00"})
	s := d.String()
	if d.Wrong != 1 || !strings.Contains(s, "… (4096 B)") || len(s) > 300 {
		t.Fatalf("diff %q (%d bytes): want one wrong value, shortened", s, len(s))
	}
	if s := Compare(Contents{"k": "ab"}, Contents{}).String(); !strings.Contains(s, "missing, want 6162") {
		t.Fatalf("diff %q: want a short value spelled out whole", s)
	}
}
