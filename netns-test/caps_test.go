package netnstest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/privileges"
)

// withCapabilities writes a wrapper that runs the daemon as root with
// exactly caps, in every set (effective, permitted, inheritable, ambient,
// bounding): what the systemd unit's AmbientCapabilities= and
// CapabilityBoundingSet= make of it.
func withCapabilities(t *testing.T, dir string, caps []string) string {
	t.Helper()
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("needs setpriv: apt-get install util-linux (or make deps)")
	}
	set := "-all"
	for _, c := range caps {
		set += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	name := "udpmapsync-with"
	for _, c := range caps {
		name += "-" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	wrapper := filepath.Join(dir, name)
	script := fmt.Sprintf("#!/bin/sh\nexec setpriv --reuid=0 --inh-caps=%[1]s --ambient-caps=%[1]s --bounding-set=%[1]s -- %[2]s \"$@\"\n",
		set, daemon.path)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return wrapper
}

// capabilityMask is the bit mask of caps, names of privileges.Required.
func capabilityMask(caps []string) uint64 {
	var m uint64
	for _, c := range privileges.Required {
		if slices.Contains(caps, c.Name) {
			m |= 1 << c.Number
		}
	}
	return m
}

// processCapabilities reads the effective and bounding sets of process pid.
func processCapabilities(t *testing.T, pid int) (eff, bnd uint64) {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		for prefix, v := range map[string]*uint64{"CapEff:": &eff, "CapBnd:": &bnd} {
			if hex, ok := strings.CutPrefix(line, prefix); ok {
				if *v, err = strconv.ParseUint(strings.TrimSpace(hex), 16, 64); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	return eff, bnd
}

// TestCapabilities runs the daemon with exactly the capabilities
// privileges.Required lists: two such daemons must replicate, and
// without any one of them the daemon must refuse to start, naming it.
func TestCapabilities(t *testing.T) {
	requireHarness(t)
	if daemon.err != nil {
		t.Fatal(daemon.err)
	}
	caps := privileges.Names()
	t.Logf("required: %s", strings.Join(caps, " "))
	dir := t.TempDir()
	// No daemon starts with the cluster: the failing starts come first,
	// on node1's maps while nothing else uses them.
	c := startCluster(t, ClusterConfig{
		Nodes:  2,
		Maps:   DefaultMaps(),
		Daemon: DaemonConfig{Binary: withCapabilities(t, dir, caps), StatsInterval: time.Second},
		Later:  []int{0, 1},
		Dir:    dir,
	})

	for _, missing := range caps {
		t.Run("without "+missing, func(t *testing.T) {
			fewer := slices.DeleteFunc(slices.Clone(caps), func(c string) bool { return c == missing })
			var maps []string
			for _, spec := range c.Maps {
				maps = append(maps, c.PinPath(0, spec.Name))
			}
			d, err := StartDaemon(c.Topology.Nodes[0], DaemonConfig{
				Binary:       withCapabilities(t, dir, fewer),
				Maps:         maps,
				LogFile:      filepath.Join(dir, "without-"+missing+".log"),
				ReadyFile:    filepath.Join(dir, "without-"+missing+".ready"),
				ReadyTimeout: 10 * time.Second,
			})
			if err == nil {
				d.Stop(StopGrace)
				t.Fatalf("the daemon started and got ready without %s (does cmd/udpmapsync/main.go call checkCapabilities?)", missing)
			}
			msg := err.Error()
			switch {
			case !strings.Contains(msg, "exited before it was ready"):
				t.Fatalf("without %s: %v; want an exit at start-up", missing, err)
			case !strings.Contains(msg, "missing capability "+missing+":"):
				t.Fatalf("without %s the daemon exited without saying \"missing capability %s:\" "+
					"(does cmd/udpmapsync/main.go call checkCapabilities?): %v", missing, missing, err)
			case !strings.Contains(msg, "AmbientCapabilities="+strings.Join(caps, " ")):
				t.Errorf("without %s the message does not say how to grant it: %v", missing, err)
			}
		})
	}

	for i := range c.Topology.Nodes {
		if err := c.Start(i); err != nil {
			t.Fatalf("with exactly %s: %v", strings.Join(caps, " "), err)
		}
		eff, bnd := processCapabilities(t, c.Daemons[i].Pid())
		if want := capabilityMask(caps); eff != want || bnd != want {
			t.Fatalf("%s: daemon runs with effective set %#x, bounding set %#x; want exactly %#x (%s)",
				c.Topology.Nodes[i].Name, eff, bnd, want, strings.Join(caps, " "))
		}
	}
	w, err := NewWorkload(WorkloadConfig{Maps: c.Maps, Writer: 1, Writers: 1, Keys: 500, DeleteRatio: 0.2, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, 0, w, 2000, 250)
	converge(t, c, w.Want())
	if err := c.Stop(StopGrace); err != nil {
		t.Error(err)
	}
}
