package replication

// Real sockets in real network namespaces, and a real kernel map:
//
//	┌─────────── ns A ───────────┐        ┌─────────── ns B ───────────┐
//	│ sender, fed by chanSource  │        │ receiver → kernel hash map │
//	│ UDP :3870                  │        │ UDP :3870                  │
//	│ veth-a 10.77.0.1/24        ├────────┤ veth-b 10.77.0.2/24        │
//	│        fd77::1/64          │  veth  │        fd77::2/64          │
//	└────────────────────────────┘        └────────────────────────────┘
//
// The namespaces are unnamed and vanish when the test closes their handles.
// Only the capture is faked (chanSource): it needs the daemon's BPF
// programs, which are the loader's to test.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/loader"
)

// testNode is one end of a namespace pair.
type testNode struct {
	ns     netns.NsHandle
	ifname string
	v4, v6 netip.Addr
}

// newNodePair creates two namespaces joined by a veth pair, both ends up
// with an IPv4 and an IPv6 address (no duplicate address detection, so
// they are usable at once).
func newNodePair(t *testing.T) (a, b *testNode) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	a = &testNode{ifname: "veth-a", v4: netip.MustParseAddr("10.77.0.1"), v6: netip.MustParseAddr("fd77::1")}
	b = &testNode{ifname: "veth-b", v4: netip.MustParseAddr("10.77.0.2"), v6: netip.MustParseAddr("fd77::2")}
	for _, n := range []*testNode{a, b} {
		var err error
		inThread(func() { n.ns, err = netns.New() })
		if err != nil {
			t.Fatalf("create network namespace: %v", err)
		}
		t.Cleanup(func() { n.ns.Close() })
	}
	h, err := netlink.NewHandleAt(a.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.ifname}, PeerName: b.ifname, PeerNamespace: netlink.NsFd(b.ns)}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, n := range []*testNode{a, b} {
		h, err := netlink.NewHandleAt(n.ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		for _, name := range []string{"lo", n.ifname} {
			link, err := h.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if name == n.ifname {
				for _, cidr := range []string{n.v4.String() + "/24", n.v6.String() + "/64"} {
					addr, _ := netlink.ParseAddr(cidr)
					addr.Flags = unix.IFA_F_NODAD
					if err := h.AddrAdd(link, addr); err != nil {
						t.Fatalf("add %s to %s: %v", cidr, name, err)
					}
				}
			}
			if err := h.LinkSetUp(link); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range []*testNode{a, b} {
		n.waitIPv6Multicast(t)
	}
	return a, b
}

// waitIPv6Multicast waits for the kernel to route IPv6 multicast on the
// node's link. The route appears only after the link-watch work has seen
// the carrier come up (immediately here, up to a second after `ip link set
// up` by hand); until then IPv6 multicast arriving on the link is dropped
// and counted in Ip6InNoRoutes. IPv4 multicast has no such delay.
func (n *testNode) waitIPv6Multicast(t *testing.T) {
	t.Helper()
	h, err := netlink.NewHandleAt(n.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link, err := h.LinkByName(n.ifname)
	if err != nil {
		t.Fatal(err)
	}
	filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, LinkIndex: link.Attrs().Index}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			if r.Dst != nil && r.Dst.IP.IsMulticast() {
				return
			}
		}
	}
	t.Fatalf("%s: no IPv6 multicast route after 10s", n.ifname)
}

// inThread runs fn on an OS thread of its own and discards the thread
// afterwards, so a namespace switch inside fn cannot leak to other
// goroutines.
func inThread(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		fn()
	}()
	<-done
}

// listen opens a UDP transport inside the node's namespace. The socket
// stays in that namespace whichever thread uses it later.
func (n *testNode) listen(t *testing.T, cfg UDPConfig) *UDP {
	t.Helper()
	var u *UDP
	var err error
	inThread(func() {
		if err = netns.Set(n.ns); err != nil {
			return
		}
		if cfg.Iface, err = net.InterfaceByName(n.ifname); err != nil {
			return
		}
		u, err = ListenUDP(cfg)
	})
	if err != nil {
		t.Fatalf("listen in %s's namespace: %v", n.ifname, err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

// receive collects want datagrams from u, giving up after a generous
// timeout.
func receive(t *testing.T, u *UDP, want int) []Packet {
	t.Helper()
	var got []Packet
	done := make(chan error, 1)
	go func() {
		pkts := make([]Packet, receiveBatch)
		for len(got) < want {
			n, err := u.Receive(pkts)
			if err != nil {
				done <- err
				return
			}
			for _, p := range pkts[:n] {
				got = append(got, Packet{Data: bytes.Clone(p.Data), From: p.From})
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
	case <-time.After(10 * time.Second):
		u.Close()
		<-done
		t.Fatalf("received %d of %d datagrams", len(got), want)
	}
	return got
}

func TestUDPTransport(t *testing.T) {
	a, b := newNodePair(t)
	for _, tc := range []struct {
		name    string
		cfg     func(self *testNode) UDPConfig
		payload int
		from    func(n *testNode) netip.Addr
	}{
		{"ipv4 multicast", func(*testNode) UDPConfig {
			return UDPConfig{Group: netip.MustParseAddr("239.1.1.1"), Port: DefaultPort}
		}, 1500 - 20 - 8, func(n *testNode) netip.Addr { return n.v4 }},
		{"ipv6 multicast", func(*testNode) UDPConfig {
			return UDPConfig{Group: netip.MustParseAddr("ff02::1:3"), Port: DefaultPort}
		}, 1500 - 40 - 8, nil},
		// Both nodes share one peer list; each skips its own address.
		{"ipv4 unicast peers", func(*testNode) UDPConfig {
			return UDPConfig{Peers: []netip.Addr{a.v4, b.v4}, Port: DefaultPort}
		}, 1500 - 20 - 8, func(n *testNode) netip.Addr { return n.v4 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ua, ub := a.listen(t, tc.cfg(a)), b.listen(t, tc.cfg(b))
			if ua.Payload() != tc.payload {
				t.Errorf("payload %d, want %d", ua.Payload(), tc.payload)
			}
			for _, dir := range []struct {
				from, to *UDP
				src      *testNode
			}{{ua, ub, a}, {ub, ua, b}} {
				sent := [][]byte{[]byte("first"), bytes.Repeat([]byte{7}, tc.payload), []byte("third")}
				if err := dir.from.Send(sent); err != nil {
					t.Fatalf("send from %s: %v", dir.src.ifname, err)
				}
				got := receive(t, dir.to, len(sent))
				for i, p := range got {
					if !bytes.Equal(p.Data, sent[i]) {
						t.Errorf("datagram %d from %s: %d bytes, want the %d sent", i, dir.src.ifname, len(p.Data), len(sent[i]))
					}
					if p.From.Port() != DefaultPort || (tc.from != nil && p.From.Addr() != tc.from(dir.src)) {
						t.Errorf("datagram %d from %s reported from %s", i, dir.src.ifname, p.From)
					}
				}
			}
			// The send path is part of the hot path: no allocations.
			batch := [][]byte{[]byte("a"), []byte("b")}
			if allocs := testing.AllocsPerRun(100, func() { _ = ua.Send(batch) }); allocs != 0 && !raceEnabled {
				t.Errorf("%v allocations per Send, want 0", allocs)
			}
		})
	}
}

// openMap creates a kernel hash map and opens it through the loader, as
// the daemon would.
func openMap(t *testing.T, name string) *loader.Map {
	t.Helper()
	km, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 4096})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	defer km.Close()
	info, err := km.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	ms, err := loader.OpenMaps([]string{fmt.Sprintf("id:%d", id)})
	if err != nil {
		t.Fatalf("open map %d: %v", id, err)
	}
	t.Cleanup(func() { ms[0].Close() })
	return ms[0]
}

// mapContents reads a kernel map into key -> value. An iteration that
// deletes overtook returns nil: read again.
func mapContents(t *testing.T, id ebpf.MapID) map[uint32]uint64 {
	t.Helper()
	km, err := ebpf.NewMapFromID(id)
	if err != nil {
		t.Fatal(err)
	}
	defer km.Close()
	out := map[uint32]uint64{}
	var k uint32
	var v uint64
	it := km.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); errors.Is(err, ebpf.ErrIterationAborted) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	return out
}

// Node A's sender reaches node B's receiver over multicast on the veth
// pair, and B's kernel map ends up holding exactly A's final state.
func TestEndToEnd(t *testing.T) {
	a, b := newNodePair(t)
	// Two maps of one name and schema, one per node, as on two machines.
	mapA, mapB := openMap(t, "e2e_flows"), openMap(t, "e2e_flows")
	cfg := UDPConfig{Group: netip.MustParseAddr("239.1.1.1"), Port: DefaultPort}
	ua, ub := a.listen(t, cfg), b.listen(t, cfg)
	logs := new(logBuffer)
	log := newLogger(logs)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	})

	tabA, err := NewTable([]Map{MapFromLoader(mapA)}, ua.Payload())
	if err != nil {
		t.Fatal(err)
	}
	tabB, err := NewTable([]Map{MapFromLoader(mapB)}, ub.Payload())
	if err != nil {
		t.Fatal(err)
	}
	src := &chanSource{ch: make(chan loader.Change, 1<<14)}
	statsA, statsB := new(Stats), new(Stats)
	sender := NewSender(SenderConfig{Source: src, Transport: ua, Table: tabA, Node: 1, Epoch: 1,
		Stats: statsA, Log: log.With("node", "A")})
	receiver := NewReceiver(ReceiverConfig{Transport: ub, Table: tabB, Node: 2, Stats: statsB, Log: log.With("node", "B")})

	ctx, cancel := context.WithCancel(context.Background())
	senderDone, receiverDone := make(chan error, 1), make(chan error, 1)
	go func() { senderDone <- sender.Run(ctx) }()
	go func() { receiverDone <- receiver.Run(ctx) }()

	// Updates, overwrites and deletes, many of them coalescing.
	want := map[uint32]uint64{}
	change := func(op loader.Op, k uint32, v uint64) {
		c := loader.Change{MapID: mapA.ID, Op: op, Key: binary.NativeEndian.AppendUint32(nil, k)}
		if op == loader.OpUpdate {
			c.Value = binary.NativeEndian.AppendUint64(nil, v)
			want[k] = v
		} else {
			delete(want, k)
		}
		src.ch <- c
	}
	for i := range uint32(3000) {
		change(loader.OpUpdate, i, uint64(i)*3)
		if i%7 == 0 {
			change(loader.OpDelete, i/2, 0)
		}
		if i%5 == 0 {
			change(loader.OpUpdate, i/3, uint64(i))
		}
	}

	var got map[uint32]uint64
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = mapContents(t, mapB.ID); maps.Equal(got, want) {
			break
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("B's map has %d entries, want %d; A %+v; B %+v", len(got), len(want), statsA.Snapshot(), statsB.Snapshot())
	}

	cancel()
	close(src.ch)
	ua.Close()
	ub.Close()
	for name, done := range map[string]chan error{"sender": senderDone, "receiver": receiverDone} {
		if err := <-done; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	sa, sb := statsA.Snapshot(), statsB.Snapshot()
	if sb.Malformed+sb.Forged+sb.UnknownMap+sb.ApplyErrors+sb.GapsSeen+sb.Duplicates+sb.ResyncNeeded != 0 {
		t.Errorf("receiver dropped or missed something: %+v", sb)
	}
	if p := receiver.Peers(); len(p) != 1 || p[0].Node != 1 || p[0].Addr != netip.AddrPortFrom(a.v4, DefaultPort) {
		t.Errorf("peers %+v, want node 1 at %s", p, a.v4)
	}
	if sa.ChangesSent != sb.ChangesApplied+sb.DeletesMissing {
		t.Errorf("sent %d changes, applied %d and %d deletes of missing keys", sa.ChangesSent, sb.ChangesApplied, sb.DeletesMissing)
	}
	if sa.Coalesced == 0 {
		t.Error("nothing coalesced: the test does not exercise coalescing")
	}
}

// nft runs an nftables script inside the node's namespace.
func (n *testNode) nft(t *testing.T, script string) {
	t.Helper()
	var out []byte
	var err error
	inThread(func() {
		if err = netns.Set(n.ns); err != nil {
			return
		}
		cmd := exec.Command("nft", "-f", "-") // forked from this thread: inherits its namespace
		cmd.Stdin = strings.NewReader(script)
		out, err = cmd.CombinedOutput()
	})
	if err != nil {
		t.Fatalf("nft in %s's namespace: %v\n%s", n.ifname, err, out)
	}
}

// With 30% of the datagrams arriving at B dropped at random (requests'
// answers included), A's resends fill every gap and B's kernel map ends up
// holding exactly A's final state, without giving up on any gap.
func TestRepairOverLossyLink(t *testing.T) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("needs nft to drop datagrams")
	}
	a, b := newNodePair(t)
	b.nft(t, `table inet loss {
	chain input {
		type filter hook input priority 0;
		udp dport 3870 numgen random mod 100 < 30 drop
	}
}`)
	mapA, mapB := openMap(t, "lossy_flows"), openMap(t, "lossy_flows")
	cfg := UDPConfig{Group: netip.MustParseAddr("239.1.1.1"), Port: DefaultPort}
	ua, ub := a.listen(t, cfg), b.listen(t, cfg)
	logs := new(logBuffer)
	log := newLogger(logs)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", logs)
		}
	})
	tabA, err := NewTable([]Map{MapFromLoader(mapA)}, ua.Payload())
	if err != nil {
		t.Fatal(err)
	}
	tabB, err := NewTable([]Map{MapFromLoader(mapB)}, ub.Payload())
	if err != nil {
		t.Fatal(err)
	}
	resend, err := NewResend(DefaultResendBytes, ua.Payload())
	if err != nil {
		t.Fatal(err)
	}
	src := &chanSource{ch: make(chan loader.Change, 1<<16)}
	statsA, statsB := new(Stats), new(Stats)
	// A sends changes and answers B's requests from its resend buffer.
	sender := NewSender(SenderConfig{Source: src, Transport: ua, Table: tabA, Node: 1, Epoch: 1,
		AnnounceInterval: 100 * time.Millisecond, Resend: resend, Stats: statsA, Log: log.With("node", "A")})
	server := NewReceiver(ReceiverConfig{Transport: ua, Table: tabA, Node: 1, Epoch: 1, Resend: resend,
		Stats: statsA, Log: log.With("node", "A")})
	receiver := NewReceiver(ReceiverConfig{Transport: ub, Table: tabB, Node: 2, Epoch: 2, Stats: statsB, Log: log.With("node", "B")})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 3)
	go func() { done <- sender.Run(ctx) }()
	go func() { done <- server.Run(ctx) }()
	go func() { done <- receiver.Run(ctx) }()

	// Until B has heard of A, A's changes are for the initial sync, which
	// is not what this test is about.
	for deadline := time.Now().Add(10 * time.Second); len(receiver.Peers()) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("B never heard A's announce")
		}
	}
	want := map[uint32]uint64{}
	for i := range uint32(20000) {
		k := i % 3000
		c := loader.Change{MapID: mapA.ID, Op: loader.OpUpdate, Key: binary.NativeEndian.AppendUint32(nil, k)}
		if i%7 == 0 {
			c.Op = loader.OpDelete
			delete(want, k)
		} else {
			c.Value = binary.NativeEndian.AppendUint64(nil, uint64(i))
			want[k] = uint64(i)
		}
		src.ch <- c
		if i%500 == 0 {
			time.Sleep(time.Millisecond) // several bursts, so that tails are lost too
		}
	}

	var got map[uint32]uint64
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if got = mapContents(t, mapB.ID); maps.Equal(got, want) {
			break
		}
	}
	cancel()
	close(src.ch)
	ua.Close()
	ub.Close()
	for range 3 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	sa, sb := statsA.Snapshot(), statsB.Snapshot()
	if !maps.Equal(got, want) {
		t.Errorf("B's map has %d entries, want %d", len(got), len(want))
	}
	if sb.GapsSeen == 0 || sb.NacksSent == 0 || sb.Repaired == 0 || sa.DatagramsResent == 0 {
		t.Errorf("no loss repaired: the drop rule did not work? A %+v; B %+v", sa, sb)
	}
	if sb.ResyncNeeded != 0 || sb.Held != 0 || sb.Malformed+sb.Forged+sb.ApplyErrors != 0 {
		t.Errorf("B gave up on a gap or dropped something: %+v", sb)
	}
	t.Logf("A: sent %d datagrams, resent %d; B: gaps %d, requests %d (%d ranges), repaired %d, duplicates %d",
		sa.DatagramsSent, sa.DatagramsResent, sb.GapsSeen, sb.NacksSent, sb.RangesRequested, sb.Repaired, sb.Duplicates)
}
