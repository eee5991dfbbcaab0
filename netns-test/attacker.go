package netnstest

// An attacker and a victim for the hostile-input tests (attack_test.go):
// hosts on the bridge that run no daemon. The attacker records the
// multicast traffic, forges datagrams with package wire (unsealed, or
// sealed with a key of its own), and sends them from its own address or,
// through a raw socket with IP_HDRINCL, from any address it likes. The
// victim only listens and counts what reaches it.

import (
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/seal"
	"github.com/udpmapsync/udpmapsync/wire"
)

// IP-level sizes, for counting bytes as the link carries them (without
// the Ethernet header): every datagram the attacker sends or anyone
// receives is counted as UDP payload + [UDPOverhead], plus 20 bytes per
// further IP fragment.
const (
	ipv4HeaderLen = 20
	udpHeaderLen  = 8
	// UDPOverhead is the IPv4 and UDP header of one unfragmented datagram.
	UDPOverhead = ipv4HeaderLen + udpHeaderLen
	// MaxUDPPayload is the largest UDP payload over IPv4.
	MaxUDPPayload = 65535 - UDPOverhead
	// linkMTU is the MTU of every veth of the topology.
	linkMTU = 1500
)

// ipBytes is what a UDP payload of n bytes costs on the link in IP bytes,
// fragmented to [linkMTU] as the kernel (or [Attacker.SendSpoofed]) does.
func ipBytes(n int) uint64 {
	frag := (linkMTU - ipv4HeaderLen) &^ 7
	l := udpHeaderLen + n
	frags := (l + frag - 1) / frag
	return uint64(l + frags*ipv4HeaderLen)
}

// Captured is one datagram the attacker received.
type Captured struct {
	From netip.AddrPort
	// Multicast: sent to the group, not to the attacker.
	Multicast bool
	Data      []byte
	// Header is the datagram's header, if it has one (OK).
	Header wire.Header
	OK     bool
}

// Run is what the attacker learned of one real node from its traffic: the
// headers are in the clear, sealed or not.
type Run struct {
	Node   uint32
	Epoch  uint64
	Addr   netip.AddrPort
	Latest uint64 // the latest change seq it announced or sent
	Ready  bool   // its announces carry FlagReady
}

// maxCaptured bounds the recorded multicast datagrams kept for replays.
const maxCaptured = 8192

// Attacker is a host on the bridge without the cluster's key.
type Attacker struct {
	Node  *Node
	Group netip.Addr
	Port  int

	conn *ipv4.PacketConn // UDP on Port, joined to the group
	raw  *ipv4.RawConn    // IP_HDRINCL: any source address
	ifi  *net.Interface
	ipID atomic.Uint32

	sentBytes, sentDatagrams       atomic.Uint64 // IP bytes and datagrams sent, by either socket
	unicastBytes, unicastDatagrams atomic.Uint64 // received at the attacker's address, not via the group

	mu        sync.Mutex
	captured  []Captured // ring of recorded multicast datagrams
	next      int
	total     int
	runs      map[uint32]*Run
	onUnicast func(Captured)
	// unicastKinds tallies what reached the attacker's own address, by
	// sender, kind and the node id in the header.
	unicastKinds map[string]int

	done chan struct{}
	wg   sync.WaitGroup
}

// NewAttacker opens the attacker's sockets in node's namespace: a UDP
// socket on port joined to group, which records the multicast the bridge
// floods to it and receives what is sent to the attacker's own address,
// and a raw socket to send from spoofed addresses.
func NewAttacker(node *Node, group string, port int) (*Attacker, error) {
	g, err := netip.ParseAddr(group)
	if err != nil {
		return nil, fmt.Errorf("attacker: group %q: %w", group, err)
	}
	a := &Attacker{Node: node, Group: g, Port: port, runs: make(map[uint32]*Run), unicastKinds: make(map[string]int),
		done: make(chan struct{})}
	err = node.Do(func() error {
		ifi, err := net.InterfaceByName(NodeIface)
		if err != nil {
			return err
		}
		a.ifi = ifi
		c, err := net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", port))
		if err != nil {
			return err
		}
		a.conn = ipv4.NewPacketConn(c)
		if uc, ok := c.(*net.UDPConn); ok {
			_ = uc.SetReadBuffer(8 << 20)
			_ = uc.SetWriteBuffer(8 << 20)
			forceBuffer(uc, unix.SO_RCVBUFFORCE, 8<<20)
		}
		if err := a.conn.JoinGroup(ifi, &net.UDPAddr{IP: g.AsSlice()}); err != nil {
			return err
		}
		if err := a.conn.SetControlMessage(ipv4.FlagDst, true); err != nil {
			return err
		}
		if err := a.conn.SetMulticastInterface(ifi); err != nil {
			return err
		}
		// What it sends itself is not the nodes' traffic.
		if err := a.conn.SetMulticastLoopback(false); err != nil {
			return err
		}
		// IPPROTO_RAW: send only, so it queues no copy of every UDP
		// packet the namespace receives.
		r, err := net.ListenPacket("ip4:255", "0.0.0.0")
		if err != nil {
			return err
		}
		if a.raw, err = ipv4.NewRawConn(r); err != nil {
			r.Close()
			return err
		}
		if err := a.raw.SetMulticastInterface(ifi); err != nil {
			return err
		}
		if err := a.raw.SetMulticastLoopback(false); err != nil {
			return err
		}
		return a.raw.SetMulticastTTL(1)
	})
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("attacker on %s: %w", node.Name, err)
	}
	a.wg.Add(1)
	go a.receive()
	return a, nil
}

// forceBuffer sets a socket buffer past net.core.rmem_max (root).
func forceBuffer(c *net.UDPConn, opt, size int) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size) })
}

// Close closes the sockets and waits for the receive loop.
func (a *Attacker) Close() error {
	select {
	case <-a.done:
		return nil
	default:
	}
	close(a.done)
	var errs []error
	if a.conn != nil {
		errs = append(errs, a.conn.Close())
	}
	if a.raw != nil {
		errs = append(errs, a.raw.Close())
	}
	a.wg.Wait()
	return errors.Join(errs...)
}

// Addr is the attacker's own address and port.
func (a *Attacker) Addr() netip.AddrPort { return netip.AddrPortFrom(a.Node.Addr, uint16(a.Port)) }

// GroupAddr is the cluster's multicast destination.
func (a *Attacker) GroupAddr() netip.AddrPort { return netip.AddrPortFrom(a.Group, uint16(a.Port)) }

// OnUnicast sets a function called, on the receive goroutine, with every
// datagram sent to the attacker's own address.
func (a *Attacker) OnUnicast(fn func(Captured)) {
	a.mu.Lock()
	a.onUnicast = fn
	a.mu.Unlock()
}

func (a *Attacker) receive() {
	defer a.wg.Done()
	buf := make([]byte, 1<<16)
	for {
		n, cm, src, err := a.conn.ReadFrom(buf)
		if err != nil {
			select {
			case <-a.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		ua, _ := src.(*net.UDPAddr)
		if ua == nil {
			continue
		}
		from := ua.AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		c := Captured{From: from, Data: append([]byte(nil), buf[:n]...)}
		c.OK = c.Header.Unmarshal(c.Data) == nil
		if cm != nil && cm.Dst != nil && cm.Dst.IsMulticast() {
			c.Multicast = true
		}
		a.mu.Lock()
		if c.OK {
			a.learn(&c)
		}
		fn := a.onUnicast
		if !c.Multicast {
			what := fmt.Sprintf("from %v: malformed", c.From)
			if c.OK {
				what = fmt.Sprintf("from %v: kind %d node %d sealed %v", c.From, c.Header.Kind, c.Header.Node, c.Header.Sealed)
			}
			a.unicastKinds[what]++
		}
		if c.Multicast && c.OK {
			if len(a.captured) < maxCaptured {
				a.captured = append(a.captured, c)
			} else {
				a.captured[a.next] = c
				a.next = (a.next + 1) % maxCaptured
			}
			a.total++
		}
		a.mu.Unlock()
		if !c.Multicast {
			a.unicastBytes.Add(ipBytes(n))
			a.unicastDatagrams.Add(1)
			if fn != nil {
				fn(c)
			}
		}
	}
}

// learn records the run of a real node from a datagram's header: the
// nodes' own multicast, whose source is their address.
func (a *Attacker) learn(c *Captured) {
	h := &c.Header
	if !c.Multicast || c.From.Addr() == a.Node.Addr || (h.Kind != wire.KindAnnounce && h.Kind != wire.KindChanges) {
		return
	}
	r := a.runs[h.Node]
	if r == nil || h.Epoch > r.Epoch {
		r = &Run{Node: h.Node, Epoch: h.Epoch, Addr: c.From}
		a.runs[h.Node] = r
	}
	if h.Epoch != r.Epoch || h.Seq > wire.MaxSeq {
		return
	}
	r.Latest = max(r.Latest, h.Seq)
	if h.Kind == wire.KindAnnounce {
		r.Ready = h.Flags&wire.FlagReady != 0
	}
}

// Runs returns what the attacker knows of the real nodes, by node id.
func (a *Attacker) Runs() map[uint32]Run {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[uint32]Run, len(a.runs))
	for id, r := range a.runs {
		out[id] = *r
	}
	return out
}

// RunAt returns the run of the node at addr, if the attacker heard it.
func (a *Attacker) RunAt(addr netip.Addr) (Run, bool) {
	for _, r := range a.Runs() {
		if r.Addr.Addr() == addr {
			return r, true
		}
	}
	return Run{}, false
}

// Captured returns the recorded multicast datagrams, oldest first, and
// how many were recorded in all.
func (a *Attacker) Captured() ([]Captured, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Captured, 0, len(a.captured))
	out = append(out, a.captured[a.next:]...)
	out = append(out, a.captured[:a.next]...)
	return out, a.total
}

// Sent returns the IP bytes and datagrams the attacker has sent.
func (a *Attacker) Sent() (bytes, datagrams uint64) {
	return a.sentBytes.Load(), a.sentDatagrams.Load()
}

// UnicastKinds tallies the datagrams sent to the attacker's own address
// by sender, kind and the header's node id.
func (a *Attacker) UnicastKinds() map[string]int {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[string]int, len(a.unicastKinds))
	for k, n := range a.unicastKinds {
		out[k] = n
	}
	return out
}

// Unicast returns the IP bytes and datagrams sent to the attacker's own
// address (the group's multicast is not counted).
func (a *Attacker) Unicast() (bytes, datagrams uint64) {
	return a.unicastBytes.Load(), a.unicastDatagrams.Load()
}

// Send sends payload from the attacker's own address and port; the kernel
// fragments what exceeds the MTU.
func (a *Attacker) Send(dst netip.AddrPort, payload []byte) error {
	if len(payload) > MaxUDPPayload {
		return fmt.Errorf("attacker send: %d bytes, at most %d", len(payload), MaxUDPPayload)
	}
	var cm *ipv4.ControlMessage
	if dst.Addr().IsMulticast() {
		cm = &ipv4.ControlMessage{IfIndex: a.ifi.Index}
	}
	if _, err := a.conn.WriteTo(payload, cm, net.UDPAddrFromAddrPort(dst)); err != nil {
		return err
	}
	a.sentBytes.Add(ipBytes(len(payload)))
	a.sentDatagrams.Add(1)
	return nil
}

// SendSpoofed sends payload as a UDP datagram from src, whatever address
// that is, to dst, through the raw socket. A datagram that does not fit
// the MTU is sent as IP fragments, as a kernel would fragment it.
func (a *Attacker) SendSpoofed(src, dst netip.AddrPort, payload []byte) error {
	if len(payload) > MaxUDPPayload {
		return fmt.Errorf("attacker send: %d bytes, at most %d", len(payload), MaxUDPPayload)
	}
	udp := make([]byte, udpHeaderLen, udpHeaderLen+len(payload))
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(udpHeaderLen+len(payload)))
	udp = append(udp, payload...)
	binary.BigEndian.PutUint16(udp[6:], udpChecksum(src.Addr(), dst.Addr(), udp))

	var cm *ipv4.ControlMessage
	if dst.Addr().IsMulticast() {
		cm = &ipv4.ControlMessage{IfIndex: a.ifi.Index}
	}
	id := int(uint16(a.ipID.Add(1)))
	frag := (linkMTU - ipv4HeaderLen) &^ 7
	for off := 0; off < len(udp); off += frag {
		end := min(off+frag, len(udp))
		h := &ipv4.Header{
			Version: ipv4.Version, Len: ipv4.HeaderLen, TotalLen: ipv4.HeaderLen + end - off,
			ID: id, FragOff: off / 8, TTL: 64, Protocol: unix.IPPROTO_UDP,
			Src: src.Addr().AsSlice(), Dst: dst.Addr().AsSlice(),
		}
		if dst.Addr().IsMulticast() {
			h.TTL = 1
		}
		if end < len(udp) {
			h.Flags = ipv4.MoreFragments
		}
		if err := a.raw.WriteTo(h, udp[off:end], cm); err != nil {
			return fmt.Errorf("attacker raw send %v -> %v: %w", src, dst, err)
		}
	}
	a.sentBytes.Add(ipBytes(len(payload)))
	a.sentDatagrams.Add(1)
	return nil
}

// udpChecksum is the UDP checksum over the IPv4 pseudo header and udp
// (whose checksum field is zero).
func udpChecksum(src, dst netip.Addr, udp []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	s, d := src.As4(), dst.As4()
	add(s[:])
	add(d[:])
	sum += unix.IPPROTO_UDP + uint32(len(udp))
	add(udp)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	if c == 0 {
		c = 0xffff
	}
	return c
}

// Forger crafts datagrams with package wire: unsealed when made with nil
// keys, else sealed with those keys (which, for a keyed cluster, are the
// wrong ones), each (node, epoch) with its own sealer as a real node
// would.
type Forger struct {
	keys    *seal.Keys
	mu      sync.Mutex
	sealers map[[12]byte]*seal.Sealer
}

// NewForger returns a forger that seals with keys, or not at all if keys
// is nil.
func NewForger(keys *seal.Keys) *Forger {
	return &Forger{keys: keys, sealers: make(map[[12]byte]*seal.Sealer)}
}

// Datagram is h and body as one datagram, sealed if the forger seals.
// h.Sealed is set accordingly.
func (f *Forger) Datagram(h wire.Header, body []byte) ([]byte, error) {
	h.Sealed = f.keys != nil
	d, err := h.AppendTo(make([]byte, 0, wire.HeaderSize+len(body)+seal.Overhead))
	if err != nil {
		return nil, err
	}
	d = append(d, body...)
	return f.seal(h, d)
}

func (f *Forger) seal(h wire.Header, d []byte) ([]byte, error) {
	if f.keys == nil {
		return d, nil
	}
	var run [12]byte
	binary.BigEndian.PutUint32(run[:], h.Node)
	binary.BigEndian.PutUint64(run[4:], h.Epoch)
	f.mu.Lock()
	s := f.sealers[run]
	if s == nil {
		s = seal.NewSealer(f.keys, h.Node, h.Epoch)
		f.sealers[run] = s
	}
	f.mu.Unlock()
	if cap(d)-len(d) < seal.Overhead {
		d = append(make([]byte, 0, len(d)+seal.Overhead), d...)
	}
	return s.Seal(d, wire.HeaderSize)
}

// Record is one change an attacker puts into a datagram. A zero Stamp is
// the present, as the header's node: a write peers take as the latest.
type Record struct {
	Map        MapSpec
	Delete     bool
	Key, Value []byte
	Stamp      hlc.Stamp
}

// Changes is a change datagram (or, with h.Kind KindSnapshot, a snapshot
// datagram) holding recs, built with a [wire.ChangeWriter] of payload
// bytes: records that do not fit are left out.
func (f *Forger) Changes(h wire.Header, payload int, recs []Record) ([]byte, error) {
	var w wire.ChangeWriter
	w.Reset(make([]byte, payload, payload+seal.Overhead), h.Node, 0)
	now := hlc.New(nil, 0)
	for _, r := range recs {
		desc := r.Map.Descriptor()
		op, value := ops.Update, r.Value
		if r.Delete {
			op, value = ops.Delete, nil
		}
		stamp := cmp.Or(r.Stamp, now.Now())
		if !w.Append(desc.Fingerprint(), op, uint64(stamp), cmp.Or(h.Node, 1), r.Key, value) {
			break
		}
	}
	h.Sealed = f.keys != nil
	return f.seal(h, w.Finish(h))
}

// Announce is an announce datagram describing maps.
func (f *Forger) Announce(h wire.Header, maps []MapSpec) ([]byte, error) {
	var body []byte
	for _, m := range maps {
		desc := m.Descriptor()
		var err error
		if body, err = desc.AppendTo(body); err != nil {
			return nil, err
		}
	}
	h.Kind, h.Count = wire.KindAnnounce, uint16(len(maps))
	return f.Datagram(h, body)
}

// Nack is a datagram of kind h.Kind (KindNack, KindGone or KindSyncAck)
// with n as its body.
func (f *Forger) Nack(h wire.Header, n wire.Nack) ([]byte, error) {
	body, err := n.AppendTo(nil)
	if err != nil {
		return nil, err
	}
	h.Count = uint16(n.N)
	return f.Datagram(h, body)
}

// SyncStart is a KindSyncStart datagram answering request id.
func (f *Forger) SyncStart(h wire.Header, id uint32, st wire.SyncStart) ([]byte, error) {
	body, err := st.AppendTo(nil)
	if err != nil {
		return nil, err
	}
	h.Kind, h.Seq = wire.KindSyncStart, wire.SyncSeq(id, 0)
	return f.Datagram(h, body)
}

// Descriptor is how the map is described in announces; its Fingerprint
// names the map in change sections.
func (s MapSpec) Descriptor() wire.Descriptor {
	return wire.Descriptor{Name: s.Name, Type: uint32(s.Type), KeySize: s.KeySize, ValueSize: s.ValueSize, MaxEntries: s.MaxEntries}
}

// RandomKeys returns a random 32-byte key as [seal.Keys], and its key file
// line (base64).
func RandomKeys() (*seal.Keys, []byte, error) {
	k := make([]byte, seal.KeySize)
	if _, err := rand.Read(k); err != nil {
		return nil, nil, err
	}
	keys, err := seal.NewKeys(k)
	return keys, k, err
}

// Listener is a victim: a host that listens on a UDP port and counts every
// byte that reaches it. It joins no group, so only unicast reaches it.
type Listener struct {
	Node *Node
	conn *net.UDPConn

	bytes, datagrams atomic.Uint64
	mu               sync.Mutex
	from             map[netip.Addr]uint64 // IP bytes by source address
	done             chan struct{}
	wg               sync.WaitGroup
}

// NewListener listens on port on every address of node.
func NewListener(node *Node, port int) (*Listener, error) {
	l := &Listener{Node: node, from: make(map[netip.Addr]uint64), done: make(chan struct{})}
	err := node.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		if err != nil {
			return err
		}
		l.conn = c
		_ = c.SetReadBuffer(8 << 20)
		forceBuffer(c, unix.SO_RCVBUFFORCE, 32<<20)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listener on %s: %w", node.Name, err)
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		buf := make([]byte, 1<<16)
		for {
			n, src, err := l.conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			b := ipBytes(n)
			l.bytes.Add(b)
			l.datagrams.Add(1)
			l.mu.Lock()
			l.from[src.Addr().Unmap()] += b
			l.mu.Unlock()
		}
	}()
	return l, nil
}

// Addr is the listener's address and port.
func (l *Listener) Addr() netip.AddrPort {
	return netip.AddrPortFrom(l.Node.Addr, uint16(l.conn.LocalAddr().(*net.UDPAddr).Port))
}

// Received returns the IP bytes and datagrams received so far, and the
// bytes by source address.
func (l *Listener) Received() (bytes, datagrams uint64, from map[netip.Addr]uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	from = make(map[netip.Addr]uint64, len(l.from))
	for a, n := range l.from {
		from[a] = n
	}
	return l.bytes.Load(), l.datagrams.Load(), from
}

// Drops returns the UDP datagrams the listener's namespace dropped for a
// full receive buffer (RcvbufErrors in /proc/net/snmp): if not zero, the
// counts of [Listener.Received] are a lower bound.
func (l *Listener) Drops() (uint64, error) {
	var drops uint64
	err := l.Node.Do(func() error {
		b, err := os.ReadFile("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		var names []string
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || f[0] != "Udp:" {
				continue
			}
			if names == nil {
				names = f
				continue
			}
			for i := range f {
				if i < len(names) && names[i] == "RcvbufErrors" {
					drops, err = strconv.ParseUint(f[i], 10, 64)
					return err
				}
			}
		}
		return errors.New("no Udp RcvbufErrors in /proc/net/snmp")
	})
	return drops, err
}

// Close stops listening.
func (l *Listener) Close() error {
	select {
	case <-l.done:
		return nil
	default:
	}
	close(l.done)
	err := l.conn.Close()
	l.wg.Wait()
	return err
}

// RSS is the resident set size of process pid (VmRSS in
// /proc/PID/status), in bytes.
func RSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("/proc/%d/status: VmRSS line %q", pid, line)
			}
			kb, err := strconv.ParseUint(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}
