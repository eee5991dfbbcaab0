package netnstest

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// capsSource holds the daemon's requiredCapabilities table, the one list
// of the capabilities it needs; the systemd unit and the DaemonSet in
// deploy/ are checked against it too.
const capsSource = "../cmd/udpmapsync/caps.go"

// capabilityNumbers are the capabilities(7) numbers of those the daemon
// could plausibly need.
var capabilityNumbers = map[string]int{
	"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_IPC_LOCK": 14, "CAP_SYS_ADMIN": 21,
	"CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39,
}

// requiredCapabilities reads the names in the daemon's
// requiredCapabilities table.
func requiredCapabilities(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), capsSource, nil, parser.SkipObjectResolution)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "requiredCapabilities" || len(vs.Values) != 1 {
			return true
		}
		table, _ := vs.Values[0].(*ast.CompositeLit)
		for _, e := range table.Elts {
			for _, field := range e.(*ast.CompositeLit).Elts {
				kv := field.(*ast.KeyValueExpr)
				if kv.Key.(*ast.Ident).Name != "name" {
					continue
				}
				name, err := strconv.Unquote(kv.Value.(*ast.BasicLit).Value)
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, name)
			}
		}
		return false
	})
	if len(names) == 0 {
		t.Fatalf("%s: no requiredCapabilities table with name fields", capsSource)
	}
	for _, n := range names {
		if _, ok := capabilityNumbers[n]; !ok {
			t.Fatalf("%s requires %s, whose number this test does not know", capsSource, n)
		}
	}
	return names
}

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

// capabilityMask is the bit mask of caps.
func capabilityMask(caps []string) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << capabilityNumbers[c]
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

// TestCapabilities runs the daemon with exactly the capabilities its
// requiredCapabilities table lists: two such daemons must replicate, and
// without any one of them the daemon must refuse to start, naming it.
func TestCapabilities(t *testing.T) {
	requireHarness(t)
	if daemon.err != nil {
		t.Fatal(daemon.err)
	}
	caps := requiredCapabilities(t)
	t.Logf("required: %s", strings.Join(caps, " "))
	dir := t.TempDir()
	// No daemon starts with the cluster: the failing starts come first,
	// on node1's maps while nothing else uses them.
	c, err := NewCluster(t.Context(), ClusterConfig{
		Nodes:  2,
		Maps:   DefaultMaps(),
		Daemon: DaemonConfig{Binary: withCapabilities(t, dir, caps), StatsInterval: time.Second},
		Later:  []int{0, 1},
		Dir:    dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs(40))
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
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
