package transport

// Real sockets in real network namespaces, on two nodes of the netns-test
// topology (package netnstest):
//
//	┌─────── node1: A ──────┐        ┌─────── node2: B ──────┐
//	│ UDP :3870             │        │ UDP :3870             │
//	│ eth1 10.77.0.1/24     │        │ eth1 10.77.0.2/24     │
//	│      fd77::1/64       │        │      fd77::2/64       │
//	└──────────┬────────────┘        └───────────┬───────────┘
//	           └──────── veth ─ bridge ─ veth ───┘

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
)

// listen opens a UDP transport on the node's interface. The socket stays
// in the node's namespace whichever thread uses it later.
func listen(t testing.TB, n *netnstest.Node, cfg Config) *UDP {
	t.Helper()
	var u *UDP
	err := n.Do(func() error {
		var err error
		if cfg.Iface, err = net.InterfaceByName(netnstest.NodeIface); err != nil {
			return err
		}
		u, err = ListenUDP(cfg)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s: %v", n.Name, err)
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
		for len(got) < want {
			pkts, err := u.Receive()
			if err != nil {
				done <- err
				return
			}
			for _, p := range pkts {
				got = append(got, Packet{Data: bytes.Clone(p.Data), From: p.From, Unicast: p.Unicast})
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
	a, b := netnstest.NewPair(t)
	for _, tc := range []struct {
		name    string
		cfg     Config
		payload int
		from    func(n *netnstest.Node) netip.Addr
	}{
		{"ipv4 multicast", Config{Group: netip.MustParseAddr("239.1.1.1"), Port: DefaultPort},
			1500 - 20 - 8, func(n *netnstest.Node) netip.Addr { return n.Addr }},
		{"ipv6 multicast", Config{Group: netip.MustParseAddr("ff02::1:3"), Port: DefaultPort},
			1500 - 40 - 8, nil},
		// Both nodes share one peer list; each skips its own address.
		{"ipv4 unicast peers", Config{Peers: []netip.Addr{a.Addr, b.Addr}, Port: DefaultPort},
			1500 - 20 - 8, func(n *netnstest.Node) netip.Addr { return n.Addr }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ua, ub := listen(t, a, tc.cfg), listen(t, b, tc.cfg)
			if ua.Payload() != tc.payload {
				t.Errorf("payload %d, want %d", ua.Payload(), tc.payload)
			}
			for _, dir := range []struct {
				from, to *UDP
				src, dst *netnstest.Node
			}{{ua, ub, a, b}, {ub, ua, b, a}} {
				sent := [][]byte{[]byte("first"), bytes.Repeat([]byte{7}, tc.payload), []byte("third")}
				if err := dir.from.Send(sent); err != nil {
					t.Fatalf("send from %s: %v", dir.src.Name, err)
				}
				got := receive(t, dir.to, len(sent))
				for i, p := range got {
					if !bytes.Equal(p.Data, sent[i]) {
						t.Errorf("datagram %d from %s: %d bytes, want the %d sent", i, dir.src.Name, len(p.Data), len(sent[i]))
					}
					if p.From.Port() != DefaultPort || (tc.from != nil && p.From.Addr() != tc.from(dir.src)) {
						t.Errorf("datagram %d from %s reported from %s", i, dir.src.Name, p.From)
					}
					if unicast := len(tc.cfg.Peers) > 0; p.Unicast != unicast {
						t.Errorf("datagram %d from %s: Unicast %v, want %v", i, dir.src.Name, p.Unicast, unicast)
					}
				}
				// What is sent to one node alone says so.
				to := netip.AddrPortFrom(dir.dst.Addr, DefaultPort)
				if tc.cfg.Group.Is6() {
					to = netip.AddrPortFrom(dir.dst.Addr6, DefaultPort)
				}
				if err := dir.from.SendTo(to, [][]byte{[]byte("alone")}); err != nil {
					t.Fatalf("send from %s to %s: %v", dir.src.Name, to, err)
				}
				if p := receive(t, dir.to, 1)[0]; string(p.Data) != "alone" || !p.Unicast {
					t.Errorf("datagram sent to %s alone: %q, Unicast %v; want \"alone\", true", to, p.Data, p.Unicast)
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

// A burst of same-sized datagrams goes down the stack as one GSO message
// and comes up as one GRO message, which Receive splits back into the
// datagrams sent, in order, the shorter last one included.
func TestUDPSegmentationOffload(t *testing.T) {
	a, b := netnstest.NewPair(t)
	cfg := Config{Group: netip.MustParseAddr("239.1.1.1"), Port: DefaultPort}
	ua, ub := listen(t, a, cfg), listen(t, b, cfg)
	if !ua.gso.Load() {
		t.Fatal("GSO off on a kernel that has it")
	}
	var sent [][]byte
	for i := range 40 {
		sent = append(sent, bytes.Repeat([]byte{byte(i)}, ua.Payload()))
	}
	sent = append(sent, []byte("the shorter rest"))
	if err := ua.Send(sent); err != nil {
		t.Fatal(err)
	}
	got := receive(t, ub, len(sent))
	for i, p := range got {
		if !bytes.Equal(p.Data, sent[i]) {
			t.Fatalf("datagram %d: %d bytes starting %d, want %d bytes starting %d", i, len(p.Data), p.Data[0], len(sent[i]), sent[i][0])
		}
	}
	if size, _ := control(ub.in[0].OOB[:ub.in[0].NN]); size != ua.Payload() {
		t.Errorf("the first message read has GRO segment size %d, want %d: GRO is not in effect", size, ua.Payload())
	}
	if !ua.gso.Load() {
		t.Error("GSO turned off after a send that worked")
	}
}

// A kernel that refuses a GSO message (here: segments larger than the
// link's MTU, from a --mtu set too high) gets the datagrams one by one,
// and GSO stays off.
func TestUDPSegmentationRefused(t *testing.T) {
	a, b := netnstest.NewPair(t)
	cfg := Config{Group: netip.MustParseAddr("239.1.1.1"), Port: DefaultPort, MTU: 3000}
	ua, ub := listen(t, a, cfg), listen(t, b, cfg)
	sent := [][]byte{bytes.Repeat([]byte{1}, 2900), bytes.Repeat([]byte{2}, 2900)}
	if err := ua.Send(sent); err != nil {
		t.Fatal(err)
	}
	got := receive(t, ub, len(sent))
	for i, p := range got {
		if !bytes.Equal(p.Data, sent[i]) {
			t.Errorf("datagram %d: %d bytes, want the %d sent", i, len(p.Data), len(sent[i]))
		}
	}
	if ua.gso.Load() {
		t.Error("GSO still on after the kernel refused it")
	}
}

// The socket is bound to its interface: a datagram to the sync port that
// arrives on another one, here the loopback, is not received.
func TestUDPBoundToInterface(t *testing.T) {
	a, b := netnstest.NewPair(t)
	cfg := Config{Group: netip.MustParseAddr("239.1.1.1"), Port: DefaultPort}
	ua, ub := listen(t, a, cfg), listen(t, b, cfg)
	err := b.Do(func() error {
		c, err := net.Dial("udp4", "127.0.0.1:3870")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("from the loopback"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ua.Send([][]byte{[]byte("from the link")}); err != nil {
		t.Fatal(err)
	}
	// Datagrams are received in order of arrival: the loopback one was
	// first, so if it got through it is what arrives.
	got := receive(t, ub, 1)
	if string(got[0].Data) != "from the link" {
		t.Errorf("received %q from %s, want only the datagram that came over the link", got[0].Data, got[0].From)
	}
}

// Discovery changes the peers while the socket is open: the node's own
// address is skipped, a peer of the other family is refused, and a peer
// that left is sent nothing more.
func TestUDPSetPeers(t *testing.T) {
	a, b := netnstest.NewPair(t)
	ua := listen(t, a, Config{Group: netip.MustParseAddr("239.1.1.1"), Unicast: true, Port: DefaultPort})
	ub := listen(t, b, Config{Group: netip.MustParseAddr("239.1.1.1"), Unicast: true, Port: DefaultPort})
	// It reads the interface's addresses, in the namespace it runs in,
	// as the daemon does in its own.
	var n int
	if err := a.Do(func() (err error) { n, err = ua.SetPeers([]netip.Addr{a.Addr, b.Addr}); return err }); err != nil || n != 1 {
		t.Fatalf("SetPeers(own, B) = %d, %v; want 1 (own skipped)", n, err)
	}
	if _, err := ua.SetPeers([]netip.Addr{b.Addr6}); err == nil {
		t.Error("an IPv6 peer on an IPv4 socket was taken")
	}
	if err := ua.Send([][]byte{[]byte("to B")}); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, ub, 1); string(got[0].Data) != "to B" || got[0].From.Addr() != a.Addr || !got[0].Unicast {
		t.Fatalf("B received %q from %s (unicast %v), want \"to B\" from %s", got[0].Data, got[0].From, got[0].Unicast, a.Addr)
	}
	if n, err := ua.SetPeers(nil); err != nil || n != 0 { // nothing to look up
		t.Fatalf("SetPeers(none) = %d, %v", n, err)
	}
	if err := ua.Send([][]byte{[]byte("after B left")}); err != nil {
		t.Fatal(err)
	}
	if err := a.Do(func() error { _, err := ua.SetPeers([]netip.Addr{b.Addr}); return err }); err != nil {
		t.Fatal(err)
	}
	if err := ua.Send([][]byte{[]byte("B is back")}); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, ub, 1); string(got[0].Data) != "B is back" {
		t.Errorf("B received %q first, want nothing sent while it was not a peer", got[0].Data)
	}
}
