package main

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// capability is one Linux capability the daemon needs, with what for.
type capability struct {
	name   string // as capabilities(7) spells it
	number int
	why    string
	// sysAdmin: the kernel also grants what this capability is needed for
	// to CAP_SYS_ADMIN (bpf_capable, perfmon_capable), so a process
	// holding CAP_SYS_ADMIN does not need it.
	sysAdmin bool
}

// requiredCapabilities is the smallest set the daemon runs with, found by
// starting it under setpriv with each capability dropped in turn
// (netns-test/caps_test.go does that on every run):
//
//   - without CAP_BPF, creating the capture's ring buffer map fails with
//     EPERM;
//   - without CAP_PERFMON, loading the capture program (tp_btf/sys_exit,
//     or the fexit programs) fails with EPERM;
//   - without CAP_NET_ADMIN it starts, but SO_RCVBUFFORCE/SO_SNDBUFFORCE
//     fail and the kernel silently caps both socket buffers at
//     net.core.rmem_max/wmem_max (208 KiB on Debian) instead of 32 MiB.
//
// Opening maps by bpffs path needs nothing beyond these. --map id:N and
// name:NAME also need CAP_SYS_ADMIN (BPF_MAP_GET_FD_BY_ID and
// BPF_MAP_GET_NEXT_ID are refused without it); nothing else does.
// Binding the socket to --iface (SO_BINDTODEVICE, once) and the multicast
// join need no capability.
//
// deploy/ (the systemd unit and the Kubernetes DaemonSet) grants exactly
// this set; its tests read this table.
var requiredCapabilities = []capability{
	{name: "CAP_BPF", number: unix.CAP_BPF, sysAdmin: true,
		why: "creates the capture's BPF maps (ring buffer) and loads its programs"},
	{name: "CAP_PERFMON", number: unix.CAP_PERFMON, sysAdmin: true,
		why: "loads the capture's tracing programs, which read the map writes of other processes"},
	{name: "CAP_NET_ADMIN", number: unix.CAP_NET_ADMIN,
		why: "sizes the UDP socket buffers at 32 MiB, past net.core.rmem_max/wmem_max (SO_RCVBUFFORCE, SO_SNDBUFFORCE); capped there (208 KiB on Debian), bursts overrun them and peers must repair or resync"},
}

// checkCapabilities fails early, naming each missing capability, why the
// daemon needs it and how to grant it, where opening maps or loading the
// capture would fail with a bare EPERM.
func checkCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	return capabilityError(func(c int) bool { return data[c/32].Effective&(1<<(c%32)) != 0 })
}

// capabilityError is checkCapabilities on an effective set given by has.
func capabilityError(has func(int) bool) error {
	var missing []capability
	for _, c := range requiredCapabilities {
		if !has(c.number) && !(c.sysAdmin && has(unix.CAP_SYS_ADMIN)) {
			missing = append(missing, c)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	noun, them := "capabilities", "them"
	if len(missing) == 1 {
		noun, them = "capability", "it"
	}
	names := make([]string, len(missing))
	for i, c := range missing {
		names[i] = c.name
	}
	var b strings.Builder
	fmt.Fprintf(&b, "missing %s %s:", noun, strings.Join(names, ", "))
	for _, c := range missing {
		fmt.Fprintf(&b, "\n  %s: %s", c.name, c.why)
	}
	var all, k8s []string
	for _, c := range requiredCapabilities {
		all = append(all, c.name)
		k8s = append(k8s, strings.TrimPrefix(c.name, "CAP_"))
	}
	fmt.Fprintf(&b, "\ngrant %s: run udpmapsync as root;"+
		" or in its systemd unit AmbientCapabilities=%[2]s and CapabilityBoundingSet=%[2]s (deploy/systemd/udpmapsync.service);"+
		" or in Kubernetes securityContext.capabilities.add: [%[3]s] (deploy/kubernetes/daemonset.yaml)",
		them, strings.Join(all, " "), strings.Join(k8s, ", "))
	return errors.New(b.String())
}
