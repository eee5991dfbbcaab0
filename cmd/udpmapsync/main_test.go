package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// parse registers the flags on a fresh set and parses args, as main does.
func parse(t *testing.T, args ...string) *Flags {
	t.Helper()
	var f Flags
	fs := pflag.NewFlagSet("udpmapsync", pflag.ContinueOnError)
	f.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return &f
}

func TestDefaults(t *testing.T) {
	f := parse(t, "--iface", "lo", "--node-id", "9", "--key-file", "/etc/udpmapsync/key")
	c, err := f.check()
	if err != nil {
		t.Fatal(err)
	}
	if c.group.String() != "239.1.1.1" || f.Port != 3870 || f.Capture != "auto" || c.node != 9 ||
		f.RingSize != 8<<20 || f.FlushInterval.Microseconds() != 200 || f.AnnounceInterval.Seconds() != 1 ||
		f.DigestInterval.Seconds() != 30 {
		t.Errorf("defaults %+v %+v", f, c)
	}
}

// Every refusal names the problem and what to do about it.
func TestCheckErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"--iface is required", "ip link"}},
		{[]string{"--iface", "nosuch9"}, []string{"--iface nosuch9: no such interface", "see ip link"}},
		{[]string{"--iface", "lo", "--group", "10.0.0.1"}, []string{"--group 10.0.0.1", "not a multicast address"}},
		{[]string{"--iface", "lo", "--peers", "10.0.0.1,nope"}, []string{"--peers nope", "not an IP address, dns:NAME or file:PATH"}},
		{[]string{"--iface", "lo", "--peers", "dns:a,10.0.0.1"}, []string{"--peers dns:a,10.0.0.1", "alone"}},
		{[]string{"--iface", "lo", "--peers", "file:/nonexistent/peers"}, []string{"--peers file:/nonexistent/peers", "no such file", "one peer address a line"}},
		{[]string{"--iface", "lo", "--peers", "dns:a", "--peers-refresh", "10ms"}, []string{"--peers-refresh 10ms", "at least 1s"}},
		{[]string{"--iface", "lo", "--peers", "dns:a", "--dns-server", "10.0.0.1"}, []string{"--dns-server 10.0.0.1", "address and port"}},
		{[]string{"--iface", "lo", "--log-level", "loud"}, []string{"--log-level loud", "debug, info, warn or error"}},
		{[]string{"--iface", "lo", "--repair", "multicast"}, []string{"--repair multicast", "group (the default) or unicast"}},
		{[]string{"--iface", "lo", "--flush-interval", "0s"}, []string{"--flush-interval", "positive"}},
		{[]string{"--iface", "lo", "--digest-interval", "10ms"}, []string{"--digest-interval 10ms", "at least 1s", "0 to turn digest rounds off"}},
		{[]string{"--iface", "lo", "--digest-interval", "-1s"}, []string{"--digest-interval -1s", "at least 1s"}},
		{[]string{"--iface", "lo", "--scan-interval", "1ms"}, []string{"--scan-interval 1ms", "at least 10ms", "reads every map whole"}},
		{[]string{"--iface", "lo", "--reassembly-memory", "64KiB"}, []string{"--reassembly-memory 64KiB", "1MiB to 1TiB", "a quarter"}},
		{[]string{"--iface", "lo", "--apply-workers", "3"}, []string{"--apply-workers 3", "use 1, or 2"}},
		// lo has no MAC address to derive the node id from.
		{[]string{"--iface", "lo", "--insecure-no-key"}, []string{"--iface lo has no MAC address", "--node-id"}},
		// A key is the default: without one the daemon says how to make
		// one, and how to do without on a trusted link.
		{[]string{"--iface", "lo", "--node-id", "9"}, []string{"no --key-file", "earlier ones ran unauthenticated",
			"head -c 32 /dev/urandom | base64 > /etc/udpmapsync/key", "--key-file /etc/udpmapsync/key", "--insecure-no-key"}},
		{[]string{"--iface", "lo", "--node-id", "9", "--key-file", "k", "--insecure-no-key"}, []string{"--key-file and --insecure-no-key exclude each other"}},
	} {
		_, err := parse(t, tc.args...).check()
		if err == nil {
			t.Errorf("%q: accepted", tc.args)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q lacks %q", tc.args, err, w)
			}
		}
	}
}

// The DaemonSet passes --peers=$(UDPMAPSYNC_PEERS): empty is multicast,
// a name is discovery, a file must hold only addresses.
func TestPeersForms(t *testing.T) {
	base := []string{"--iface", "lo", "--node-id", "9", "--insecure-no-key"}
	c, err := parse(t, append(base, "--peers=")...).check()
	if err != nil || c.peers != nil || c.discover != nil {
		t.Errorf("--peers=: %+v %v, want multicast", c, err)
	}
	c, err = parse(t, append(base, "--peers=dns:udpmapsync.kube-system.svc.cluster.local")...).check()
	if err != nil || c.discover == nil || c.discover.String() != "dns:udpmapsync.kube-system.svc.cluster.local" {
		t.Errorf("--peers=dns:...: %+v %v", c, err)
	}
	// Without a key, no one is accepted before the first lookup that
	// works: the node's peers start empty, not unset.
	if c != nil && (c.peers == nil || len(c.peers) != 0) {
		t.Errorf("--peers=dns:...: static peers %#v, want empty and not nil", c.peers)
	}
	list := filepath.Join(t.TempDir(), "peers")
	if err := os.WriteFile(list, []byte("10.0.0.1\n10.0.0.2 # two\nten\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = parse(t, append(base, "--peers=file:"+list)...).check()
	if err == nil || !strings.Contains(err.Error(), "lines [3]") || !strings.HasPrefix(err.Error(), "--peers file:") {
		t.Errorf("a file with a bad line: %v, want it refused at start with the line number", err)
	}
}

// run reports flag errors before touching the kernel.
func TestRunRefusesBadFlags(t *testing.T) {
	err := run(context.Background(), parse(t, "--iface", "nosuch9"))
	if err == nil || !strings.Contains(err.Error(), "see ip link") {
		t.Errorf("run: %v, want the interface error", err)
	}
}

func TestNodeIDStable(t *testing.T) {
	mac, _ := net.ParseMAC("02:fc:00:00:00:01")
	a, err := nodeID(&net.Interface{Name: "eth0", HardwareAddr: mac})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := nodeID(&net.Interface{Name: "eth0", HardwareAddr: mac})
	other, _ := net.ParseMAC("02:fc:00:00:00:02")
	c, _ := nodeID(&net.Interface{Name: "eth0", HardwareAddr: other})
	if a == 0 || a != b || a == c {
		t.Errorf("node ids %d %d (same MAC) %d (other MAC): want equal, non-zero, distinct", a, b, c)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int{"4096": 4096, "16MiB": 16 << 20, "16M": 16 << 20, "512KiB": 512 << 10, "1GiB": 1 << 30} {
		var b byteSize
		if err := b.Set(in); err != nil || int(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1TiB", "8GiB", "1.5M"} {
		var b byteSize
		if err := b.Set(in); err == nil {
			t.Errorf("Set(%q) accepted: %d", in, b)
		}
	}
	if s := byteSize(16 << 20).String(); s != "16MiB" {
		t.Errorf("String() = %q, want 16MiB", s)
	}
}
