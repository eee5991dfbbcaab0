// Package privileges is the one list of the Linux capabilities the
// udpmapsync daemon needs, found by trying, and a check of the running
// process against it. The daemon checks it at start-up; the deployment
// files in deploy/ grant exactly this set, and their tests read it here.
package privileges

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Capability is one Linux capability the daemon needs, with what for.
type Capability struct {
	Name   string // as capabilities(7) spells it
	Number int
	Why    string
	// SysAdminSuffices: the kernel also grants what this capability is
	// needed for to CAP_SYS_ADMIN (bpf_capable, perfmon_capable), so a
	// process holding CAP_SYS_ADMIN does not need it.
	SysAdminSuffices bool
}

// Required is the smallest set the daemon runs with, found by starting it
// under setpriv with each capability dropped in turn (netns-test's
// TestCapabilities does that on every run):
//
//   - without CAP_BPF, creating the capture's ring buffer map fails with
//     EPERM;
//   - without CAP_PERFMON, loading the capture program (tp_btf/sys_exit,
//     or the fexit programs) fails with EPERM;
//   - without CAP_NET_ADMIN it starts, but SO_RCVBUFFORCE/SO_SNDBUFFORCE
//     fail and the kernel silently caps both socket buffers at
//     net.core.rmem_max/wmem_max (208 KiB on Debian) instead of 32 MiB.
//
// Opening maps by bpffs path needs nothing beyond these. Opening them by
// id or name also needs CAP_SYS_ADMIN (BPF_MAP_GET_FD_BY_ID and
// BPF_MAP_GET_NEXT_ID are refused without it); nothing else does.
// Binding the socket to its interface (SO_BINDTODEVICE, once) and the
// multicast join need no capability.
var Required = []Capability{
	{Name: "CAP_BPF", Number: unix.CAP_BPF, SysAdminSuffices: true,
		Why: "creates the capture's BPF maps (ring buffer) and loads its programs"},
	{Name: "CAP_PERFMON", Number: unix.CAP_PERFMON, SysAdminSuffices: true,
		Why: "loads the capture's tracing programs, which read the map writes of other processes"},
	{Name: "CAP_NET_ADMIN", Number: unix.CAP_NET_ADMIN,
		Why: "sizes the UDP socket buffers at 32 MiB, past net.core.rmem_max/wmem_max (SO_RCVBUFFORCE, SO_SNDBUFFORCE); capped there (208 KiB on Debian), bursts overrun them and peers must repair or resync"},
}

// Names returns the names of the Required capabilities, in order.
func Names() []string {
	names := make([]string, len(Required))
	for i, c := range Required {
		names[i] = c.Name
	}
	return names
}

// Missing returns the Required capabilities that the running process does
// not hold in its effective set.
func Missing() ([]Capability, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("read capabilities: %w", err)
	}
	return MissingFrom(func(c int) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }), nil
}

// MissingFrom returns the Required capabilities that an effective set,
// given by has, lacks.
func MissingFrom(has func(capability int) bool) []Capability {
	var missing []Capability
	for _, c := range Required {
		if !has(c.Number) && !(c.SysAdminSuffices && has(unix.CAP_SYS_ADMIN)) {
			missing = append(missing, c)
		}
	}
	return missing
}
