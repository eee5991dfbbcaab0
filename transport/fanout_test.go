package transport

import (
	"net/netip"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
)

// BenchmarkSendUnicast is what unicast mode costs the sender per peer:
// batches of 64 full change datagrams (1,472 bytes) sent to 1, 2 and 4
// peers on a bridge, as Send sends a flush. The peers' sockets are open
// but not read: the kernel drops what overflows them, after the sender
// paid for it. cpu-ns/dgram is the sending thread's user and system time
// per datagram per peer, the figure docs/OPERATIONS.md quotes; divide by
// the changes a datagram carries for the cost per change.
func BenchmarkSendUnicast(b *testing.B) {
	if testing.Short() {
		b.Skip("needs network namespaces")
	}
	topo, err := netnstest.NewTopology(5)
	if err != nil {
		b.Skip(err) // not root
	}
	b.Cleanup(func() { topo.Close() })
	for _, n := range topo.Nodes[1:] {
		listen(b, n, Config{Group: netip.MustParseAddr("239.1.1.1"), Unicast: true, Port: DefaultPort})
	}
	dgrams := make([][]byte, 64)
	for i := range dgrams {
		dgrams[i] = make([]byte, 1472)
	}
	for _, peers := range []int{1, 2, 4} {
		b.Run("peers="+strconv.Itoa(peers), func(b *testing.B) {
			var addrs []netip.Addr
			for _, n := range topo.Nodes[1 : 1+peers] {
				addrs = append(addrs, n.Addr)
			}
			u := listen(b, topo.Nodes[0], Config{Group: netip.MustParseAddr("239.1.1.1"), Peers: addrs, Port: DefaultPort + 1})
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			start := threadCPU()
			for b.Loop() {
				_ = u.Send(dgrams) // a full peer socket drops, it does not fail
			}
			sent := float64(b.N * len(dgrams) * peers)
			b.ReportMetric(float64(threadCPU()-start)/sent, "cpu-ns/dgram")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/sent, "ns/dgram")
		})
	}
}

// threadCPU is the calling thread's user and system time.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
