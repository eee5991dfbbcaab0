// Package transport moves udpmapsync datagrams between nodes over UDP: one
// socket per node, multicast to a group or unicast to a list of peers,
// batched system calls and UDP segmentation offload. It knows nothing of
// what the datagrams hold; the protocol in package replication sees it
// through a small Send/SendTo/Receive interface, as wireguard-go's device
// sees its conn package.
package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Socket settings.
const (
	// DefaultPort is the UDP port nodes send to and listen on.
	DefaultPort = 3870
	// socketBuffer absorbs bursts of datagrams while the receiver applies
	// the previous batch.
	socketBuffer = 32 << 20
	// receiveBufferSize holds the largest UDP payload, so neither a
	// datagram from a peer with a larger MTU nor a GRO message is truncated.
	receiveBufferSize = 1 << 16
	// receiveBatch is how many messages one Receive reads.
	receiveBatch = 64
	// batchSize is how many messages one sendmmsg of Send or SendTo
	// carries per destination.
	batchSize = 64
	// maxSegments bounds the datagrams of one GSO message: the kernel's
	// UDP_MAX_SEGMENTS, 64 before Linux 6.10.
	maxSegments = 64

	ipv4HeaderSize = 20
	ipv6HeaderSize = 40
	udpHeaderSize  = 8
	maxIPPacket    = 0xffff // IPv4 total length, IPv6 payload length
)

// Packet is one received datagram.
type Packet struct {
	Data []byte // aliases a transport buffer until the next Receive
	From netip.AddrPort
	// Unicast says that it was addressed to this node alone. A datagram
	// sent to the group reached every member, so whoever answers its
	// source must share what it may send there with the others; when
	// the kernel does not say, Unicast is false.
	Unicast bool
	// ReplyTo, when valid, is where to answer the datagram's sender
	// rather than From, and ReplyToSince when it last changed. A layer
	// that authenticates datagrams sets them (replication's sealing): a
	// datagram that opened may still be a replay sent from anywhere, but
	// only its sender sends the ones carrying its newest counters, so
	// their address is the sender's.
	ReplyTo      netip.AddrPort
	ReplyToSince time.Time
}

// Config says where a [UDP] transport sends and listens.
type Config struct {
	Iface *net.Interface
	// Group is the multicast group (IPv4 or IPv6) datagrams go to, unless
	// Peers is set.
	Group netip.Addr
	// Peers switches to unicast: every datagram goes to each of them (the
	// interface's own addresses are skipped, so every node can share one
	// list). All must be of one address family.
	Peers []netip.Addr
	// Unicast switches to unicast even while Peers is empty: discovery
	// sets the peers later ([UDP.SetPeers]), in Group's address family.
	Unicast bool
	Port    uint16
	// MTU sizes datagrams; 0 means the interface's MTU.
	MTU int
}

// UDP is the transport over one UDP socket bound to the wildcard address,
// so it receives both the group's datagrams and unicast ones, and to the
// configured interface (SO_BINDTODEVICE), so it receives nothing that
// arrived on another one. It sends and
// receives in batches (sendmmsg, recvmmsg) and, where the kernel and the
// interface allow, with UDP segmentation offload: a run of datagrams of
// one size goes down the stack as one message (GSO, UDP_SEGMENT) and
// datagrams of one peer come up as one (GRO, UDP_GRO), split here. The
// datagrams on the wire are the same either way. Sending allocates
// nothing; receiving allocates the source address of each message (x/net's
// ReadBatch does), two small objects per message and none per change.
type UDP struct {
	conn  *net.UDPConn
	pc    batchConn
	iface *net.Interface
	port  int
	v6    bool
	// dests are where Send sends: the group, or the peers. SetPeers
	// replaces the slice while Send reads it, never a slice's elements.
	dests   atomic.Pointer[[]*net.UDPAddr]
	payload int
	maxGSO  int         // bytes of datagrams one GSO message may carry
	gso     atomic.Bool // runs of datagrams are sent as GSO messages

	out []ipv4.Message // Send's messages, Buffers and OOB preallocated

	toMu sync.Mutex     // SendTo is called by the receiver and its retry timer
	to   []ipv4.Message // SendTo's messages
	in   []ipv4.Message // Receive's messages, each over its own buffer
	pkts []Packet       // Receive's result: the datagrams of in
}

// batchConn is what [ipv4.PacketConn] and [ipv6.PacketConn] share: their
// Message types are the same type.
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// ListenUDP opens the socket, joins the group on the interface (unless
// peers are configured) and sets it up for link-local replication:
// multicast TTL/hop limit 1, no loopback of our own datagrams, large
// socket buffers.
func ListenUDP(cfg Config) (*UDP, error) {
	v6 := cfg.Group.Is6()
	if len(cfg.Peers) > 0 {
		v6 = cfg.Peers[0].Is6()
	} else if !cfg.Group.IsMulticast() {
		return nil, fmt.Errorf("group %s: not a multicast address", cfg.Group)
	}

	network, wildcard, ipHeader := "udp4", "0.0.0.0", ipv4HeaderSize
	if v6 {
		network, wildcard, ipHeader = "udp6", "::", ipv6HeaderSize
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = cfg.Iface.MTU
	}
	maxMTU := maxIPPacket // the IPv4 total length includes the header
	if v6 {
		maxMTU += ipv6HeaderSize // the IPv6 payload length does not
	}
	u := &UDP{payload: min(mtu, maxMTU) - ipHeader - udpHeaderSize, iface: cfg.Iface, port: int(cfg.Port), v6: v6}
	u.maxGSO = maxIPPacket - udpHeaderSize
	if !v6 {
		u.maxGSO -= ipv4HeaderSize
	}

	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = setSocketOptions(int(fd), v6, cfg.Iface.Name) }); cerr != nil {
			return cerr
		}
		return err
	}}
	addr := net.JoinHostPort(wildcard, strconv.Itoa(int(cfg.Port)))
	pconn, err := lc.ListenPacket(context.Background(), network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	u.conn = pconn.(*net.UDPConn)
	if err := u.setup(cfg, v6); err != nil {
		u.conn.Close()
		return nil, err
	}

	u.gso.Store(u.enableOffload())
	u.out = newMessages(min(batchSize*max(1, len(*u.dests.Load())), maxMessages))
	u.to = newMessages(batchSize)
	u.in = make([]ipv4.Message, receiveBatch)
	for i := range u.in {
		u.in[i].Buffers = [][]byte{make([]byte, receiveBufferSize)}
		u.in[i].OOB = make([]byte, unix.CmsgSpace(4)+unix.CmsgSpace(unix.SizeofInet6Pktinfo))
	}
	u.pkts = make([]Packet, 0, receiveBatch)
	return u, nil
}

// newMessages returns n messages with room for a GSO message's datagrams
// and its segment size.
func newMessages(n int) []ipv4.Message {
	ms := make([]ipv4.Message, n)
	for i := range ms {
		ms[i].Buffers = make([][]byte, 0, maxSegments)
		ms[i].OOB = make([]byte, 0, unix.CmsgSpace(2))
	}
	return ms
}

// enableOffload asks for GRO on receive and reports whether the kernel
// knows GSO. Neither is needed: without GRO datagrams arrive one by one,
// and without GSO they are sent one by one.
func (u *UDP) enableOffload() bool {
	rc, err := u.conn.SyscallConn()
	if err != nil {
		return false
	}
	gso := false
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1)
		// Setting the socket's segment size to 0 (none) fails on
		// kernels without UDP GSO.
		gso = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT, 0) == nil
	})
	return gso
}

// multicastConn is the part of [ipv4.PacketConn] and [ipv6.PacketConn]
// that setup needs besides the multicast TTL or hop limit.
type multicastConn interface {
	batchConn
	SetMulticastInterface(ifi *net.Interface) error
	SetMulticastLoopback(on bool) error
	JoinGroup(ifi *net.Interface, group net.Addr) error
}

// setup joins the group or resolves the peers, and points multicast at the
// interface: without IP_MULTICAST_IF, sending to a group over a link with
// only a connected route fails with ENETUNREACH.
func (u *UDP) setup(cfg Config, v6 bool) error {
	var pc multicastConn
	var setHops func(int) error
	if v6 {
		c := ipv6.NewPacketConn(u.conn)
		pc, setHops = c, c.SetMulticastHopLimit
	} else {
		c := ipv4.NewPacketConn(u.conn)
		pc, setHops = c, c.SetMulticastTTL
	}
	u.pc = pc
	if err := pc.SetMulticastInterface(cfg.Iface); err != nil {
		return fmt.Errorf("set multicast interface %s: %w", cfg.Iface.Name, err)
	}
	if err := setHops(1); err != nil {
		return fmt.Errorf("set multicast hop limit: %w", err)
	}
	if err := pc.SetMulticastLoopback(false); err != nil {
		return fmt.Errorf("disable multicast loopback: %w", err)
	}
	unicast := cfg.Unicast || len(cfg.Peers) > 0
	if !unicast {
		group := &net.UDPAddr{IP: cfg.Group.AsSlice(), Port: int(cfg.Port)}
		if err := pc.JoinGroup(cfg.Iface, group); err != nil {
			return fmt.Errorf("join group %s on %s: %w", cfg.Group, cfg.Iface.Name, err)
		}
		u.dests.Store(&[]*net.UDPAddr{group})
		return nil
	}
	n, err := u.SetPeers(cfg.Peers)
	if err != nil {
		return err
	}
	if n == 0 && len(cfg.Peers) > 0 {
		return errors.New("peers: every listed address is this node's own; list the other nodes")
	}
	return nil
}

// maxMessages bounds the messages Send prepares for one sendmmsg, however
// many peers there are.
const maxMessages = 16 * batchSize

// SetPeers makes Send go to these peers, skipping the interface's own
// addresses, and returns how many remain. It is safe to call while Send
// runs: a Send under way finishes with the previous peers.
func (u *UDP) SetPeers(peers []netip.Addr) (int, error) {
	for _, p := range peers {
		if p.Is6() != u.v6 {
			return 0, fmt.Errorf("peer %s: not of the socket's address family (%s); use one family", p, family(u.v6))
		}
	}
	own, err := interfaceAddrs(u.iface)
	if err != nil {
		return 0, err
	}
	dests := make([]*net.UDPAddr, 0, len(peers))
	for _, p := range peers {
		if slices.Contains(own, p.WithZone("")) {
			continue
		}
		dst := &net.UDPAddr{IP: p.AsSlice(), Port: u.port, Zone: p.Zone()}
		if dst.Zone == "" && p.Is6() && p.IsLinkLocalUnicast() {
			dst.Zone = u.iface.Name
		}
		dests = append(dests, dst)
	}
	u.dests.Store(&dests)
	return len(dests), nil
}

// family names an address family as the errors say it.
func family(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// interfaceAddrs lists the addresses of ifi, without zones.
func interfaceAddrs(ifi *net.Interface) ([]netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", ifi.Name, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// setSocketOptions runs before bind. Without CAP_NET_ADMIN the FORCE
// variants fail and the buffers are capped by net.core.[rw]mem_max.
func setSocketOptions(fd int, v6 bool, iface string) error {
	// Bound to the interface, the socket takes no datagram that arrived
	// on another one: the sync port is not reachable from other networks.
	if err := unix.BindToDevice(fd, iface); err != nil {
		return fmt.Errorf("bind to interface %s (SO_BINDTODEVICE): %w", iface, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("set SO_REUSEADDR: %w", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, socketBuffer) != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, socketBuffer); err != nil {
			return fmt.Errorf("set SO_RCVBUF: %w", err)
		}
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, socketBuffer) != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, socketBuffer); err != nil {
			return fmt.Errorf("set SO_SNDBUF: %w", err)
		}
	}
	// The destination of each datagram: the group, or this node alone.
	level, opt := unix.IPPROTO_IP, unix.IP_PKTINFO
	if v6 {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return fmt.Errorf("ask for each datagram's destination (PKTINFO): %w", err)
	}
	// A wildcard-bound socket would otherwise also receive every group any
	// other socket on the host joined for this port.
	level, opt = unix.IPPROTO_IP, unix.IP_MULTICAST_ALL
	if v6 {
		level, opt = unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_ALL
	}
	if err := unix.SetsockoptInt(fd, level, opt, 0); err != nil {
		return fmt.Errorf("disable multicast all: %w", err)
	}
	return nil
}

// Payload is the largest datagram that fits the MTU unfragmented.
func (u *UDP) Payload() int { return u.payload }

// Send sends each datagram to the group, or to every peer, in as few
// sendmmsg calls, and with GSO as few messages, as possible. A message
// the kernel refuses is skipped, so one unreachable peer does not stop the
// others; the first error is returned.
func (u *UDP) Send(dgrams [][]byte) error {
	dests := *u.dests.Load()
	if want := min(batchSize*len(dests), maxMessages); len(u.out) < want {
		u.out = newMessages(want) // more peers than before: once per growth
	}
	var first error
	n := 0
	for len(dgrams) > 0 {
		k := u.segments(dgrams)
		for _, dst := range dests {
			setMessage(&u.out[n], dgrams[:k], dst)
			if n++; n == len(u.out) {
				first = firstErr(first, u.write(u.out[:n]))
				n = 0
			}
		}
		dgrams = dgrams[k:]
	}
	return firstErr(first, u.write(u.out[:n]))
}

// SendTo sends the datagrams to addr alone, like Send. It is off the hot
// path: it allocates the address.
func (u *UDP) SendTo(addr netip.AddrPort, dgrams [][]byte) error {
	dst := net.UDPAddrFromAddrPort(addr)
	u.toMu.Lock()
	defer u.toMu.Unlock()
	var first error
	for len(dgrams) > 0 {
		n := 0
		for ; n < len(u.to) && len(dgrams) > 0; n++ {
			k := u.segments(dgrams)
			setMessage(&u.to[n], dgrams[:k], dst)
			dgrams = dgrams[k:]
		}
		first = firstErr(first, u.write(u.to[:n]))
	}
	return first
}

// segments returns how many of the leading datagrams go in one message:
// with GSO, a run of datagrams of the first one's size, the last of which
// may be shorter (the kernel cuts a GSO message into segments of one size
// and a shorter rest); without GSO, one.
func (u *UDP) segments(dgrams [][]byte) int {
	if !u.gso.Load() {
		return 1
	}
	size := len(dgrams[0])
	total, k := size, 1
	for k < len(dgrams) && k < maxSegments {
		l := len(dgrams[k])
		if l > size || total+l > u.maxGSO {
			break
		}
		total += l
		k++
		if l < size {
			break
		}
	}
	return k
}

// setMessage makes m carry dgrams to dst: one datagram plainly, several
// as one GSO message of the first one's size.
func setMessage(m *ipv4.Message, dgrams [][]byte, dst net.Addr) {
	m.Buffers = append(m.Buffers[:0], dgrams...)
	m.Addr = dst
	m.OOB = m.OOB[:0]
	if len(dgrams) > 1 {
		m.OOB = m.OOB[:unix.CmsgSpace(2)]
		h := (*unix.Cmsghdr)(unsafe.Pointer(&m.OOB[0]))
		h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		binary.NativeEndian.PutUint16(m.OOB[unix.CmsgLen(0):], uint16(len(dgrams[0])))
	}
}

// firstErr keeps the first non-nil error.
func firstErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

func (u *UDP) write(ms []ipv4.Message) error {
	var first error
	for len(ms) > 0 {
		n, err := u.pc.WriteBatch(ms, 0)
		if err != nil {
			if len(ms[0].Buffers) > 1 && gsoRefused(err) {
				// The interface cannot segment (no checksum offload) or
				// the kernel refuses: from now on, one datagram each.
				u.gso.Store(false)
				err = u.writeEach(&ms[0])
			}
			if err != nil && first == nil {
				first = fmt.Errorf("send to %s: %w", ms[0].Addr, err)
			}
			n = 1
		}
		ms = ms[n:]
	}
	return first
}

// gsoRefused reports whether err is how the kernel refuses a GSO message
// it could send as separate datagrams.
func gsoRefused(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EMSGSIZE) ||
		errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOPROTOOPT)
}

// writeEach sends the datagrams of GSO message m one by one.
func (u *UDP) writeEach(m *ipv4.Message) error {
	ms := make([]ipv4.Message, len(m.Buffers))
	for i, d := range m.Buffers {
		ms[i] = ipv4.Message{Buffers: [][]byte{d}, Addr: m.Addr}
	}
	for len(ms) > 0 {
		n, err := u.pc.WriteBatch(ms, 0)
		if err != nil {
			return err
		}
		ms = ms[n:]
	}
	return nil
}

// Receive blocks for at least one datagram and returns what one recvmmsg
// brought, GRO messages split into their datagrams. Packet.From carries no
// IPv6 zone, so a peer's address compares equal however the kernel
// reported it.
func (u *UDP) Receive() ([]Packet, error) {
	for i := range u.in {
		u.in[i].OOB = u.in[i].OOB[:cap(u.in[i].OOB)]
	}
	n, err := u.pc.ReadBatch(u.in, 0)
	if err != nil {
		return nil, err
	}
	u.pkts = u.pkts[:0]
	for i := range u.in[:n] {
		m := &u.in[i]
		var from netip.AddrPort
		if a, ok := m.Addr.(*net.UDPAddr); ok {
			ap := a.AddrPort()
			from = netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
		}
		data := m.Buffers[0][:m.N]
		size, unicast := control(m.OOB[:m.NN])
		if size <= 0 {
			size = len(data)
		}
		for len(data) > size {
			u.pkts = append(u.pkts, Packet{Data: data[:size:size], From: from, Unicast: unicast})
			data = data[size:]
		}
		u.pkts = append(u.pkts, Packet{Data: data[:len(data):len(data)], From: from, Unicast: unicast})
	}
	return u.pkts, nil
}

// control reads a received message's control messages: the segment size
// of a GRO message (0 if it is a single datagram), and whether its
// destination was a unicast address (PKTINFO).
func control(oob []byte) (groSize int, unicast bool) {
	for len(oob) >= unix.CmsgLen(0) {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return groSize, unicast
		}
		data := oob[unix.CmsgLen(0):l]
		switch {
		case h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && len(data) >= 4:
			groSize = int(int32(binary.NativeEndian.Uint32(data)))
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo: ifindex, spec_dst, then addr, the
			// header's destination.
			unicast = !netip.AddrFrom4([4]byte(data[8:12])).IsMulticast()
		case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && len(data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo: addr first.
			unicast = !netip.AddrFrom16([16]byte(data[:16])).IsMulticast()
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	return groSize, unicast
}

// Close closes the socket, which also ends a blocked Receive.
func (u *UDP) Close() error { return u.conn.Close() }
