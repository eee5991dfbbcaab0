package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/replication"
)

type fakeSource struct {
	status replication.Status
	stats  replication.StatsSnapshot
}

func (f *fakeSource) Daemon() Daemon {
	return Daemon{Version: "v1.2", Node: 1, Epoch: 99, Iface: "eth1", Group: "239.1.1.1", Port: 3870, Sealed: true,
		Started: time.Now().Add(-90 * time.Second)}
}
func (f *fakeSource) Status() replication.Status       { return f.status }
func (f *fakeSource) Stats() replication.StatsSnapshot { return f.stats }
func (f *fakeSource) Maps() []Map {
	n := uint64(1500)
	return []Map{
		{Name: "flows", Type: "hash", KeySize: 4, ValueSize: 8, MaxEntries: 65536, Entries: &n, Options: "scan=1s,vanished=keep,local=ifindex[0:4]"},
		{Name: "gone", Type: "lru_hash", KeySize: 8, ValueSize: 16, MaxEntries: 1024, EntriesError: "operation not permitted"},
	}
}
func (f *fakeSource) Capture() Capture {
	return Capture{Backend: "syscall", CannotSee: BlindSpots(false), Fallback: "the kernel refuses BPF trampolines"}
}

// serve listens on a socket in a fresh directory and serves src until the
// test ends.
func serve(t *testing.T, src Source) (path string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "run", "udpmapsync.sock")
	s, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, src) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket still there after the server stopped: %v", err)
		}
	})
	return path
}

func TestQuery(t *testing.T) {
	now := time.Now()
	src := &fakeSource{
		status: replication.Status{Ready: true, Peers: []replication.PeerStatus{{
			Node: 2, Addr: netip.MustParseAddrPort("10.77.0.2:3870"), Epoch: 7, Ready: true, Seq: 200, Applied: 150,
			LastHeard: now.Add(-300 * time.Millisecond), Datagrams: 210, Gaps: 4, Resyncs: 1,
			MissingSince: now.Add(-2 * time.Second),
			Mismatches:   []string{"flows: the peer treats bytes at offset 8, 4 bytes as a mono-s clock field, this node does not"}}},
			Resync: &replication.ResyncStatus{Peer: 2, Streaming: true, Since: now.Add(-2 * time.Second), Entries: 5000, Datagrams: 90}},
		stats: replication.StatsSnapshot{Captured: 11, GapsSeen: 4},
	}
	path := serve(t, src)

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 || fi.Sys().(*syscall.Stat_t).Uid != uint32(os.Geteuid()) {
		t.Errorf("socket mode %v owner %d, want a socket 0600 owned by %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid, os.Geteuid())
	}
	if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o700 {
		t.Errorf("directory: %v %v, want 0700", di.Mode(), err)
	}

	st, err := Query(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != Version || !st.Ready || st.Daemon.Node != 1 || len(st.Maps) != 2 || *st.Maps[0].Entries != 1500 ||
		st.Maps[1].Entries != nil || st.Capture.Backend != "syscall" || st.Totals["captured"] != 11 || st.Totals["gaps_seen"] != 4 {
		t.Errorf("status %+v", st)
	}
	if _, ok := st.Totals["ready"]; ok {
		t.Error("totals hold the ready flag")
	}
	p := st.Peers[0]
	if p.Node != 2 || p.Addr != "10.77.0.2:3870" || p.LastSeq != 200 || p.Applied != 150 || p.Lag != 50 ||
		p.LagSeconds < 1.9 || p.SilentSeconds < 0.25 || p.Loss != 0.02 || p.Resyncs != 1 || len(p.Mismatches) != 1 {
		t.Errorf("peer %+v", p)
	}
	r := st.Resync
	if r == nil || r.Peer != 2 || r.State != "streaming" || r.Entries != 5000 || r.Rate < 2000 || r.Rate > 2600 ||
		r.Total != nil || r.SecondsLeft != nil {
		t.Errorf("resync %+v", r)
	}
	if why := st.InSync(); !strings.Contains(why, "a full resync from node 2 is streaming") || !strings.Contains(why, "50 datagrams behind node 2") ||
		!strings.Contains(why, "map flows differs from node 2's") {
		t.Errorf("InSync: %q", why)
	}

	// The raw document has the documented names, and null for unknowns.
	raw := rawQuery(t, path, "status\n")
	for _, want := range []string{`"version":1`, `"maps":[`, `"key_size":4`, `"max_entries":65536`, `"entries":null`,
		`"options":"scan=1s,vanished=keep,local=ifindex[0:4]"`, `"last_seq":200`, `"lag":50`, `"mismatches":["flows: the peer treats`, `"total":null`, `"seconds_left":null`, `"cannot_see":[`, `"totals":{`} {
		if !strings.Contains(raw, want) {
			t.Errorf("document lacks %s: %s", want, raw)
		}
	}
	if raw := rawQuery(t, path, "reboot\n"); !strings.Contains(raw, `"error":"unknown request`) {
		t.Errorf("unknown request answered %s", raw)
	}

	var table bytes.Buffer
	if err := st.WriteTable(&table); err != nil {
		t.Fatal(err)
	}
	out := table.String()
	t.Logf("\n%s", out)
	for _, want := range []string{"udpmapsync v1.2, node 1 on eth1 (group 239.1.1.1, port 3870, sealed), epoch 99, up 1m3",
		"state: NOT IN SYNC: a full resync", "\nMAPS\nNAME   TYPE      KEY  VALUE  MAX ENTRIES  ENTRIES                      OPTIONS\n",
		"flows  hash      4 B  8 B    65536        1500                         scan=1s,vanished=keep,local=ifindex[0:4]\n",
		"gone   lru_hash  8 B  16 B   1024         ? (operation not permitted)  -\n",
		"\nPEERS\n", "10.77.0.2:3870", "2.00%",
		"\nMISMATCH: peer 2 (10.77.0.2:3870), map flows: the peer treats bytes at offset 8, 4 bytes as a mono-s clock field, this node does not; its changes to it are dropped\n", "\nRESYNC\n", "streaming", "entries/s  unknown  unknown",
		"\nCAPTURE\nbackend             syscall\n", "cannot see          writes by BPF programs",
		"fentry unavailable  the kernel refuses BPF trampolines", "\nTOTALS\ncaptured "} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q", want)
		}
	}
}

// rawQuery sends req and returns the answer as it comes.
func rawQuery(t *testing.T, path, req string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	var b bytes.Buffer
	if _, err := b.ReadFrom(c); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b.Bytes(), &v); err != nil {
		t.Fatalf("answer %q: %v", b.String(), err)
	}
	return strings.TrimSpace(b.String())
}

func TestInSync(t *testing.T) {
	st := &Status{Ready: true, Peers: []Peer{{Node: 2}}}
	if why := st.InSync(); why != "" {
		t.Errorf("ready, no lag: %q", why)
	}
	st.Peers[0].ResyncOwed = true
	if why := st.InSync(); why != "a full resync from node 2 is owed: its changes were lost here" {
		t.Errorf("owing a resync: %q", why)
	}
	st.Peers[0].ResyncOwed = false
	st.Ready = false
	if why := st.InSync(); why != "the initial sync is not complete" {
		t.Errorf("not ready: %q", why)
	}
}

func TestListenRefusesARunningDaemon(t *testing.T) {
	path := serve(t, &fakeSource{})
	_, err := Listen(path, nil)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), "--control-socket") ||
		!strings.Contains(err.Error(), "(pid ") {
		t.Fatalf("second Listen: %v, want ErrInUse naming the pid and --control-socket", err)
	}
	// The first daemon still answers.
	if _, err := Query(path, time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestListenReplacesAStaleSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "udpmapsync.sock")
	// A socket bound and closed without unlinking: what a killed daemon
	// leaves.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	if _, err := Query(path, time.Second); err == nil {
		t.Fatal("a stale socket answered")
	}
	s, err := Listen(path, nil)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer s.Close()
	if di, _ := os.Stat(dir); di.Mode().Perm() == 0o700 {
		t.Log("the existing directory kept its mode")
	}

	// A file that is not a socket is not ours to remove.
	other := filepath.Join(dir, "not-a-socket")
	if err := os.WriteFile(other, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(other, nil); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Fatalf("Listen over a file: %v", err)
	}
}

func TestQueryUnreachable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nothing.sock")
	_, err := Query(path, time.Second)
	var ue *UnreachableError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "--control-socket") ||
		!strings.Contains(err.Error(), "no such file or directory") {
		t.Fatalf("Query with no daemon: %v", err)
	}
}

func TestQueryNotRoot(t *testing.T) {
	err := (&UnreachableError{Path: "/run/x.sock", Err: syscall.EACCES}).Error()
	if !strings.Contains(err, "root only") || strings.Contains(err, "is udpmapsync running") {
		t.Errorf("permission denied: %q", err)
	}
}

func TestQueryOtherVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Read(make([]byte, 64))
			c.Write([]byte(`{"version":2}` + "\n"))
			c.Close()
		}
	}()
	_, err = Query(path, time.Second)
	var ue *UnreachableError
	if err == nil || errors.As(err, &ue) || !strings.Contains(err.Error(), "schema version 2") {
		t.Fatalf("Query of a version 2 daemon: %v", err)
	}
}

func TestDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second:                          "0ms",
		350 * time.Millisecond:                "350ms",
		12300 * time.Millisecond:              "12.3s",
		4*time.Minute + 12*time.Second:        "4m12s",
		3*time.Hour + 4*time.Minute:           "3h04m",
		50*time.Hour + 10*time.Minute:         "2d02h",
		59*time.Second + 990*time.Millisecond: "1m00s",
	} {
		if got := Duration(d); got != want {
			t.Errorf("Duration(%v) = %q, want %q", d, got, want)
		}
	}
}

// The header says where the node sends: the group, the peers, or, in
// unicast mode before discovery found anyone, that there are none.
func TestTableWhere(t *testing.T) {
	for _, tc := range []struct {
		d    Daemon
		want string
	}{
		{Daemon{Group: "239.1.1.1"}, "(group 239.1.1.1,"},
		{Daemon{Peers: []string{"10.0.0.1", "10.0.0.2"}}, "(peers 10.0.0.1,10.0.0.2,"},
		{Daemon{Peers: []string{}}, "(no peers found,"},
	} {
		var b strings.Builder
		st := &Status{Daemon: tc.d}
		if err := st.WriteTable(&b); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(b.String(), tc.want) {
			t.Errorf("%+v: header %q lacks %q", tc.d, strings.SplitN(b.String(), "\n", 2)[0], tc.want)
		}
	}
}
