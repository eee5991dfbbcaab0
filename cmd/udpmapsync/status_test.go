package main

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/udpmapsync/udpmapsync/control"
	"github.com/udpmapsync/udpmapsync/replication"
)

func TestServiceFlags(t *testing.T) {
	f := parse(t, "--iface", "lo", "--node-id", "9", "--insecure-no-key")
	if f.MetricsAddr != "" || f.ControlSocket != "/run/udpmapsync/udpmapsync.sock" || f.StateDir != "/var/lib/udpmapsync" {
		t.Errorf("defaults: --metrics-addr %q --control-socket %q --state-dir %q", f.MetricsAddr, f.ControlSocket, f.StateDir)
	}
	_, err := parse(t, "--iface", "lo", "--node-id", "9", "--insecure-no-key", "--state-dir", "").check()
	if err == nil || !strings.Contains(err.Error(), "--state-dir") {
		t.Errorf("empty --state-dir: %v", err)
	}
}

// fakeDaemon answers the status command as a daemon in the state given.
type fakeDaemon struct{ status replication.Status }

func (f *fakeDaemon) Daemon() control.Daemon {
	return control.Daemon{Version: "test", Node: 1, Iface: "eth1"}
}
func (f *fakeDaemon) Status() replication.Status       { return f.status }
func (f *fakeDaemon) Stats() replication.StatsSnapshot { return replication.StatsSnapshot{Captured: 5} }
func (f *fakeDaemon) Maps() []control.Map              { return []control.Map{{Name: "flows", Type: "hash"}} }
func (f *fakeDaemon) Capture() control.Capture         { return control.Capture{Backend: "syscall"} }

func TestStatusCommand(t *testing.T) {
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := statusCommand(args, &out, &errb)
		return code, out.String(), errb.String()
	}
	missing := filepath.Join(t.TempDir(), "none.sock")
	if code, _, stderr := run("--control-socket", missing); code != 2 || !strings.Contains(stderr, missing) ||
		!strings.Contains(stderr, "--control-socket") {
		t.Errorf("no daemon: exit %d, %q", code, stderr)
	}
	if code, _, _ := run("--bogus"); code != 2 {
		t.Errorf("bad flag: exit %d", code)
	}

	path := filepath.Join(t.TempDir(), "s.sock")
	srv, err := control.Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := &fakeDaemon{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, src) }()
	defer func() { cancel(); <-done }()

	code, out, stderr := run("--control-socket", path)
	if code != 1 || !strings.Contains(out, "MAPS") || stderr != "udpmapsync status: not in sync: the initial sync is not complete\n" {
		t.Errorf("not ready: exit %d, stderr %q, out:\n%s", code, stderr, out)
	}
	src.status = replication.Status{Ready: true, Peers: []replication.PeerStatus{{Node: 2, Seq: 9, Applied: 7}}}
	if code, _, stderr := run("--control-socket", path); code != 1 || !strings.Contains(stderr, "2 datagrams behind node 2") {
		t.Errorf("lagging: exit %d, stderr %q", code, stderr)
	}
	src.status.Peers[0].Applied = 9
	code, out, stderr = run("--control-socket", path, "--json")
	var st control.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 || stderr != "" || !st.Ready || st.Totals["captured"] != 5 {
		t.Errorf("in sync, --json: exit %d, %v, stderr %q:\n%s", code, err, stderr, out)
	}
}
