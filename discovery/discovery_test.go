package discovery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeResolver stands for a DNS server: the unit tests need no network
// (TestDiscoveryDNS in netns-test runs a real one).
type fakeResolver struct {
	addrs   []netip.Addr
	err     error
	network string // of the last lookup
}

func (r *fakeResolver) LookupNetIP(_ context.Context, network, host string) ([]netip.Addr, error) {
	r.network = network
	return r.addrs, r.err
}

// recorder collects the changes a watcher applies.
type recorder struct{ changes []Change }

func (r *recorder) apply(ch Change) { r.changes = append(r.changes, ch) }

// last returns the latest change and forgets the count.
func (r *recorder) take(t *testing.T, want int) []Change {
	t.Helper()
	if len(r.changes) != want {
		t.Fatalf("%d changes applied, want %d: %+v", len(r.changes), want, r.changes)
	}
	out := r.changes
	r.changes = nil
	return out
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

func TestWatcherDNS(t *testing.T) {
	r := &fakeResolver{addrs: addrs("10.0.0.2", "10.0.0.1", "10.0.0.2")}
	var rec recorder
	w := NewWatcher(NewDNS("peers.test", false, r), rec.apply, nil)
	ctx := context.Background()

	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if r.network != "ip4" {
		t.Errorf("looked up %s, want ip4 (A records) for an IPv4 socket", r.network)
	}
	ch := rec.take(t, 1)[0]
	if !slices.Equal(ch.Peers, addrs("10.0.0.1", "10.0.0.2")) || !slices.Equal(ch.Added, ch.Peers) || ch.Removed != nil {
		t.Errorf("first lookup: %+v, want both peers added, sorted and once", ch)
	}

	_ = w.Refresh(ctx) // unchanged: nothing to apply
	rec.take(t, 0)

	r.addrs = addrs("10.0.0.2", "10.0.0.3")
	_ = w.Refresh(ctx)
	ch = rec.take(t, 1)[0]
	if !slices.Equal(ch.Added, addrs("10.0.0.3")) || !slices.Equal(ch.Removed, addrs("10.0.0.1")) {
		t.Errorf("records changed: %+v, want 10.0.0.3 added and 10.0.0.1 removed", ch)
	}

	r.err = &net.DNSError{Err: "i/o timeout", IsTimeout: true}
	if err := w.Refresh(ctx); err == nil {
		t.Error("a timed-out lookup returned no error")
	}
	rec.take(t, 0)
	if got := w.Peers(); !slices.Equal(got, addrs("10.0.0.2", "10.0.0.3")) {
		t.Errorf("after a failed lookup peers are %v, want the previous ones kept", got)
	}
	if f := w.Stats().Failures.Load(); f != 1 {
		t.Errorf("failures %d, want 1", f)
	}

	r.err = &net.DNSError{Err: "no such host", IsNotFound: true}
	if err := w.Refresh(ctx); err != nil {
		t.Errorf("a name without records: %v, want no error (a Service without ready pods)", err)
	}
	ch = rec.take(t, 1)[0]
	if len(ch.Peers) != 0 || len(ch.Removed) != 2 {
		t.Errorf("name gone: %+v, want every peer removed", ch)
	}
	if n := w.Stats().Lookups.Load(); n != 5 {
		t.Errorf("lookups %d, want 5", n)
	}
}

func TestWatcherFirstLookupEmpty(t *testing.T) {
	// The first set is applied even when empty: without a key it is the
	// accept-list, and nobody is accepted until someone is found.
	var rec recorder
	w := NewWatcher(NewDNS("peers.test", true, &fakeResolver{err: &net.DNSError{IsNotFound: true}}), rec.apply, nil)
	_ = w.Refresh(context.Background())
	if ch := rec.take(t, 1)[0]; ch.Peers == nil || len(ch.Peers) != 0 {
		t.Errorf("first, empty lookup applied %+v, want an empty, non-nil set", ch)
	}
}

func TestWatcherOverLimit(t *testing.T) {
	r := &fakeResolver{}
	for i := range 3 * MaxPeers {
		r.addrs = append(r.addrs, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	slices.Reverse(r.addrs)
	var rec recorder
	w := NewWatcher(NewDNS("many.test", false, r), rec.apply, nil)
	err := w.Refresh(context.Background())
	if !errors.Is(err, ErrOverLimit) {
		t.Errorf("%d records: %v, want ErrOverLimit", len(r.addrs), err)
	}
	ch := rec.take(t, 1)[0]
	if len(ch.Peers) != MaxPeers || ch.Peers[0] != netip.MustParseAddr("10.1.0.0") {
		t.Errorf("kept %d peers from %v, want the lowest %d", len(ch.Peers), ch.Peers[0], MaxPeers)
	}
	if n := w.Stats().OverLimit.Load(); n != 1 {
		t.Errorf("over_limit %d, want 1", n)
	}
}

// writeFile replaces path's content as an operator should: write aside,
// then rename.
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestWatcherFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers")
	writeFile(t, path, "# the nodes\n10.0.0.1\n\n  10.0.0.2  # rack 2\n")
	var rec recorder
	w := NewWatcher(NewFile(path, false), rec.apply, nil)
	ctx := context.Background()
	if err := w.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if ch := rec.take(t, 1)[0]; !slices.Equal(ch.Peers, addrs("10.0.0.1", "10.0.0.2")) {
		t.Errorf("read %v, want 10.0.0.1 and 10.0.0.2", ch.Peers)
	}

	writeFile(t, path, "10.0.0.2\n10.0.0.3\n")
	_ = w.Refresh(ctx)
	if ch := rec.take(t, 1)[0]; !slices.Equal(ch.Added, addrs("10.0.0.3")) || !slices.Equal(ch.Removed, addrs("10.0.0.1")) {
		t.Errorf("rewritten file: %+v, want 10.0.0.3 added, 10.0.0.1 removed", ch)
	}

	// An edit in place is seen as well: the size changes.
	if err := os.WriteFile(path, []byte("10.0.0.2\n10.0.0.3\n10.0.0.4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_ = w.Refresh(ctx)
	if ch := rec.take(t, 1)[0]; !slices.Equal(ch.Added, addrs("10.0.0.4")) {
		t.Errorf("edited file: %+v, want 10.0.0.4 added", ch)
	}

	writeFile(t, path, "10.0.0.2\n10.0.0.3\nnode4\n10.0.0.5\nfe80::1\n")
	err := w.Refresh(ctx)
	var bad *BadLinesError
	if !errors.As(err, &bad) || !slices.Equal(bad.Lines, []int{3, 5}) || bad.Count != 2 {
		t.Fatalf("bad lines: %v, want lines 3 and 5", err)
	}
	for _, want := range []string{path, "lines [3 5]", `"node4" is not an IP address`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if ch := rec.take(t, 1)[0]; !slices.Equal(ch.Peers, addrs("10.0.0.2", "10.0.0.3", "10.0.0.5")) {
		t.Errorf("with bad lines: %v, want the good lines kept", ch.Peers)
	}
	_ = w.Refresh(ctx) // the same file: its bad lines are not counted again
	rec.take(t, 0)
	if n := w.Stats().BadLines.Load(); n != 2 {
		t.Errorf("bad_lines %d, want 2", n)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := w.Refresh(ctx); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file removed: %v, want not exist", err)
	}
	rec.take(t, 0)
	if got := w.Peers(); len(got) != 3 {
		t.Errorf("file removed: peers %v, want the previous ones kept", got)
	}
}

func TestFileTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "peers")
	if err := os.WriteFile(path, make([]byte, maxFileSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFile(path, false).Lookup(context.Background()); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Errorf("a %d-byte file: %v, want refused", maxFileSize+1, err)
	}
}

func TestWatcherRun(t *testing.T) {
	r := &fakeResolver{addrs: addrs("10.0.0.1")}
	changes := make(chan Change, 4)
	w := NewWatcher(NewDNS("peers.test", false, r), func(ch Change) { changes <- ch }, nil)
	tick := make(chan time.Time)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx, tick); close(done) }()
	tick <- time.Time{}
	if ch := <-changes; !slices.Equal(ch.Added, addrs("10.0.0.1")) {
		t.Errorf("first tick: %+v", ch)
	}
	// The status command reads the peers while the watcher replaces them
	// (go test -race checks it).
	tick <- time.Time{}
	_ = w.Peers()
	cancel()
	<-done
}

func TestParse(t *testing.T) {
	static, src, err := Parse([]string{"10.0.0.1", "::ffff:10.0.0.2"}, false, nil)
	if err != nil || src != nil || !slices.Equal(static, addrs("10.0.0.1", "10.0.0.2")) {
		t.Errorf("static list: %v %v %v", static, src, err)
	}
	if _, src, err := Parse([]string{"dns:udpmapsync.default.svc.cluster.local"}, false, nil); err != nil || src.String() != "dns:udpmapsync.default.svc.cluster.local" {
		t.Errorf("dns: %v %v", src, err)
	}
	if _, src, err := Parse([]string{"file:/etc/peers"}, true, nil); err != nil || src.String() != "file:/etc/peers" {
		t.Errorf("file: %v %v", src, err)
	}
	var many []string
	for i := range MaxPeers + 1 {
		many = append(many, fmt.Sprintf("10.0.%d.%d", i>>8, i&0xff))
	}
	for _, bad := range [][]string{{"dns:"}, {"file:"}, {"dns:a b"}, {"10.0.0.1", "dns:x"}, {"node1"}, {"10.0.0.1", "fd00::1"}, many} {
		_, _, err := Parse(bad, false, nil)
		if err == nil || !strings.HasPrefix(err.Error(), "--peers") {
			t.Errorf("--peers %v: %v, want an error naming the flag", bad, err)
		}
	}
}
