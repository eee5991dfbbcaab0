package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
	"github.com/udpmapsync/udpmapsync/perf/report"
	"github.com/udpmapsync/udpmapsync/wire"
)

// sealWait bounds the wait for a datagram on the wire: the daemons
// announce every 200 ms.
const sealWait = 3 * time.Second

// checkSealing looks at the datagrams on node2's interface until it sees
// one of udpmapsync's and checks that it is sealed when the system is
// the sealed one, and plain otherwise: a daemon that ignored --key-file
// would otherwise be measured as sealed.
func (d *deployment) checkSealing() error {
	if !report.IsUDPMapSync(d.system) || len(d.c.Topology.Nodes) < 2 {
		return nil
	}
	want := d.system == report.UDPMapSyncSealed
	n := d.c.Topology.Nodes[1]
	fd, err := packetSocket(n)
	if err != nil {
		return fmt.Errorf("check sealing: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("check sealing: %w", err)
	}
	buf := make([]byte, 256) // headers are enough; the rest is cut off
	deadline := time.Now().Add(sealWait)
	for time.Now().Before(deadline) {
		k, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		} else if err != nil {
			return fmt.Errorf("check sealing: read %s: %w", n.Name, err)
		}
		h, ok := udpmapsyncHeader(buf[:k])
		if !ok {
			continue
		}
		if h.Sealed != want {
			if want {
				return fmt.Errorf("the daemon sends plain datagrams with --key-file (seen on %s): the binary ignores the key, so it cannot be measured sealed", n.Name)
			}
			return fmt.Errorf("the daemon sends sealed datagrams without --key-file (seen on %s)", n.Name)
		}
		return nil
	}
	return fmt.Errorf("check sealing: no udpmapsync datagram on %s within %v", n.Name, sealWait)
}

// packetSocket opens a socket receiving every IPv4 packet in node n's
// namespace, from the IP header on, sent and received. It enters the
// namespace on a thread of its own, which is thrown away if it cannot
// return to the harness's namespace.
func packetSocket(n *netnstest.Node) (int, error) {
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // and not unlocked if the thread stays in n's namespace
		fd, err := func() (int, error) {
			orig, err := netns.Get()
			if err != nil {
				return -1, err
			}
			defer orig.Close()
			target, err := netns.GetFromPath(n.NetnsPath())
			if err != nil {
				return -1, fmt.Errorf("open namespace %s: %w", n.Netns, err)
			}
			defer target.Close()
			if err := netns.Set(target); err != nil {
				return -1, fmt.Errorf("enter namespace %s: %w", n.Netns, err)
			}
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
			if serr := netns.Set(orig); serr != nil {
				if err == nil {
					unix.Close(fd)
				}
				return -2, fmt.Errorf("leave namespace %s: %w", n.Netns, serr)
			}
			if err != nil {
				return -1, fmt.Errorf("packet socket in %s: %w", n.Netns, err)
			}
			return fd, nil
		}()
		if fd != -2 {
			runtime.UnlockOSThread()
		}
		ch <- result{fd, err}
	}()
	r := <-ch
	return r.fd, r.err
}

// udpmapsyncHeader parses p, an IPv4 packet, as a UDP datagram of
// udpmapsync's and returns its header.
func udpmapsyncHeader(p []byte) (wire.Header, bool) {
	var h wire.Header
	if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_UDP {
		return h, false
	}
	ihl := int(p[0]&0x0f) * 4
	if binary.BigEndian.Uint16(p[6:])&0x1fff != 0 || len(p) < ihl+8 {
		return h, false // a later fragment carries no header
	}
	return h, h.Unmarshal(p[ihl+8:]) == nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
