package replication

// In-memory fakes for the protocol's three interfaces. They stand in for the
// ring buffer, the kernel map and the socket where a test is about the
// protocol logic alone; netns_test.go runs the same code over real sockets
// and a real kernel map.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/transport"
	"github.com/udpmapsync/udpmapsync/wire"
)

var errFakeClosed = errors.New("fake closed")

// step is one scripted Read of a [scriptSource].
type step struct {
	change   loader.Change
	buffered int           // what Buffered reports after this change
	sleep    time.Duration // before the change is returned
	timeout  bool          // return os.ErrDeadlineExceeded instead of a change
}

// scriptSource replays steps, then fails like a closed capture.
type scriptSource struct {
	steps     []step
	next      int
	buffered  int
	overflows uint64 // what Overflows reports
	deadlines []deadlineCall
}

type deadlineCall struct{ at, deadline time.Time }

func (s *scriptSource) Read(ch *loader.Change) error {
	if s.next == len(s.steps) {
		return errFakeClosed
	}
	st := &s.steps[s.next]
	s.next++
	time.Sleep(st.sleep)
	if st.timeout {
		return os.ErrDeadlineExceeded
	}
	*ch = st.change
	s.buffered = st.buffered
	return nil
}

func (s *scriptSource) SetDeadline(t time.Time) {
	s.deadlines = append(s.deadlines, deadlineCall{time.Now(), t})
}

func (s *scriptSource) Buffered() int { return s.buffered }

func (s *scriptSource) Overflows() (uint64, error) { return s.overflows, nil }

// chanSource delivers changes sent on a channel and honours deadlines like
// the capture does; closing the channel closes it.
type chanSource struct {
	ch       chan loader.Change
	mu       sync.Mutex
	deadline time.Time
}

func (s *chanSource) Read(ch *loader.Change) error {
	// Like the ring buffer, hand out what is queued even past the deadline.
	select {
	case c, ok := <-s.ch:
		if !ok {
			return errFakeClosed
		}
		*ch = c
		return nil
	default:
	}
	s.mu.Lock()
	d := s.deadline
	s.mu.Unlock()
	var timeout <-chan time.Time
	if !d.IsZero() {
		t := time.NewTimer(time.Until(d))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case c, ok := <-s.ch:
		if !ok {
			return errFakeClosed
		}
		*ch = c
		return nil
	case <-timeout:
		return os.ErrDeadlineExceeded
	}
}

func (s *chanSource) SetDeadline(t time.Time) {
	s.mu.Lock()
	s.deadline = t
	s.mu.Unlock()
}

func (s *chanSource) Buffered() int { return len(s.ch) }

func (s *chanSource) Overflows() (uint64, error) { return 0, nil }

// fakeTransport keeps copies of what is sent and delivers what a test
// queues with deliver. Cookies and echoes, the proof of a peer's address
// that comes before answers to it, are kept apart from the rest.
type fakeTransport struct {
	mu        sync.Mutex
	batches   [][][]byte
	unicast   []unicast
	cookies   []unicast
	in        chan transport.Packet
	closed    chan struct{}
	closeOnce sync.Once
}

// unicast is one SendTo call of a [fakeTransport].
type unicast struct {
	to     netip.AddrPort
	dgrams [][]byte
}

func newFakeTransport() *fakeTransport {
	return &fakeTransport{in: make(chan transport.Packet, 256), closed: make(chan struct{})}
}

func (f *fakeTransport) Send(dgrams [][]byte) error {
	batch := make([][]byte, len(dgrams))
	for i, d := range dgrams {
		batch[i] = bytes.Clone(d)
	}
	f.mu.Lock()
	f.batches = append(f.batches, batch)
	f.mu.Unlock()
	return nil
}

func (f *fakeTransport) SendTo(addr netip.AddrPort, dgrams [][]byte) error {
	u := unicast{to: addr, dgrams: make([][]byte, len(dgrams))}
	for i, d := range dgrams {
		u.dgrams[i] = bytes.Clone(d)
	}
	var h wire.Header
	f.mu.Lock()
	if len(dgrams) == 1 && h.Unmarshal(dgrams[0]) == nil && (h.Kind == wire.KindCookie || h.Kind == wire.KindCookieEcho) {
		f.cookies = append(f.cookies, u)
	} else {
		f.unicast = append(f.unicast, u)
	}
	f.mu.Unlock()
	return nil
}

// sentCookies returns and forgets the cookies and echoes sent so far.
func (f *fakeTransport) sentCookies() []unicast {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.cookies
	f.cookies = nil
	return u
}

// sentTo returns and forgets the SendTo calls so far.
func (f *fakeTransport) sentTo() []unicast {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.unicast
	f.unicast = nil
	return u
}

func (f *fakeTransport) Receive() ([]transport.Packet, error) {
	select {
	case p := <-f.in:
		return []transport.Packet{p}, nil
	case <-f.closed:
		return nil, errFakeClosed
	}
}

// Close ends a blocked Receive, as closing a socket does.
func (f *fakeTransport) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	return nil
}

// sent returns the batches sent so far, announces and changes alike.
func (f *fakeTransport) sent() [][][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.batches)
}

// nopTransport drops everything without allocating: for allocation tests.
type nopTransport struct{}

func (nopTransport) Send([][]byte) error                   { return nil }
func (nopTransport) SendTo(netip.AddrPort, [][]byte) error { return nil }
func (nopTransport) Receive() ([]transport.Packet, error)  { return nil, io.EOF }

// fakeTarget is a map in memory that logs every batch applied to it. A
// snapshot transfer dumps it from its own goroutine, hence the lock.
type fakeTarget struct {
	mu                 sync.Mutex
	keySize, valueSize int
	state              map[string]string
	calls              []call
	fail               error
}

type call struct {
	op         ops.Op
	keys, vals []byte
}

func (c call) String() string { return fmt.Sprintf("{%s %q %q}", c.op, c.keys, c.vals) }

func newFakeTarget(keySize, valueSize int) *fakeTarget {
	return &fakeTarget{keySize: keySize, valueSize: valueSize, state: map[string]string{}}
}

func (f *fakeTarget) UpdateBatch(keys, values []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{ops.Update, bytes.Clone(keys), bytes.Clone(values)})
	if f.fail != nil {
		return f.fail
	}
	for i := 0; i < len(keys)/f.keySize; i++ {
		f.state[string(keys[i*f.keySize:][:f.keySize])] = string(values[i*f.valueSize:][:f.valueSize])
	}
	return nil
}

func (f *fakeTarget) DeleteBatch(keys []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call{ops.Delete, bytes.Clone(keys), nil})
	missing := 0
	for i := 0; i < len(keys)/f.keySize; i++ {
		k := string(keys[i*f.keySize:][:f.keySize])
		if _, ok := f.state[k]; !ok {
			missing++
		}
		delete(f.state, k)
	}
	return missing, nil
}

func (f *fakeTarget) Lookup(key, value []byte) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.state[string(key)]
	copy(value, v)
	return ok, nil
}

// Dump hands out the entries in key order, batch by batch.
func (f *fakeTarget) Dump(keys, values []byte, fn func(keys, values []byte) error) error {
	f.mu.Lock()
	ks := slices.Sorted(maps.Keys(f.state))
	vs := make([]string, len(ks))
	for i, k := range ks {
		vs[i] = f.state[k]
	}
	f.mu.Unlock()
	batch := len(keys) / f.keySize
	for len(ks) > 0 {
		n := min(batch, len(ks))
		for i := range n {
			copy(keys[i*f.keySize:], ks[i])
			copy(values[i*f.valueSize:], vs[i])
		}
		if err := fn(keys[:n*f.keySize], values[:n*f.valueSize]); err != nil {
			return err
		}
		ks, vs = ks[n:], vs[n:]
	}
	return nil
}

// snapshot copies the state.
func (f *fakeTarget) snapshot() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.state)
}

// nopTarget accepts everything without allocating: for allocation tests.
type nopTarget struct{}

func (nopTarget) UpdateBatch(keys, values []byte) error  { return nil }
func (nopTarget) DeleteBatch(keys []byte) (int, error)   { return 0, nil }
func (nopTarget) Lookup(key, value []byte) (bool, error) { return false, nil }
func (nopTarget) Dump(keys, values []byte, fn func(keys, values []byte) error) error {
	return nil
}

// testMap describes a hash map for a table.
func testMap(name string, id ebpf.MapID, keySize, valueSize uint32, target Target) Map {
	return Map{
		Desc: wire.Descriptor{Name: name, Type: uint32(ebpf.Hash), KeySize: keySize,
			ValueSize: valueSize, MaxEntries: 1024},
		ID:     id,
		Target: target,
	}
}

func mustTable(t testing.TB, payload int, maps ...Map) *Table {
	t.Helper()
	tab, err := NewTable(maps, payload)
	if err != nil {
		t.Fatal(err)
	}
	return tab
}

// logBuffer collects log lines for a test to inspect.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// record is one decoded change, for comparing datagrams.
type record struct {
	fp         uint32
	op         ops.Op
	key, value string
}

// decodeChanges decodes a change datagram with the key and value sizes of
// tab's maps, failing the test on any error.
func decodeChanges(t testing.TB, tab *Table, d []byte) (wire.Header, []record) {
	t.Helper()
	var h wire.Header
	if err := h.Unmarshal(d); err != nil {
		t.Fatalf("header: %v", err)
	}
	if h.Kind != wire.KindChanges {
		t.Fatalf("kind %d, want changes", h.Kind)
	}
	var out []record
	var secs wire.Sections
	secs.Reset(d[wire.HeaderSize:], h.Count)
	for {
		sec, err := secs.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("section: %v", err)
		}
		m := tab.byFP[sec.Map]
		if m == nil {
			t.Fatalf("section for unknown map %#x", sec.Map)
		}
		var recs wire.Records
		recs.Reset(sec, m.keySize, m.valueSize, secs.Base(), h.Node)
		for {
			r, err := recs.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("record: %v", err)
			}
			out = append(out, record{sec.Map, r.Op, string(r.Key), string(r.Value)})
		}
	}
	return h, out
}

// changesBuilder encodes change datagrams for receiver tests.
type changesBuilder struct {
	w   wire.ChangeWriter
	buf []byte
}

func (b *changesBuilder) start() {
	b.buf = make([]byte, 1472)
	b.w.Reset(b.buf, 0, 0)
}

// testWriter is the origin of the builder's records: a writer whose every
// change is newer than the last, as if the peers' clocks ran together.
const testWriter = 0xfeed

// testClock stamps the builder's records.
var testClock = hlc.New(nil, 0)

func (b *changesBuilder) add(t testing.TB, fp uint32, op ops.Op, key, value string) {
	t.Helper()
	var v []byte
	if op == ops.Update {
		v = []byte(value)
	}
	if !b.w.Append(fp, op, uint64(testClock.Now()), testWriter, []byte(key), v) {
		t.Fatal("test datagram full")
	}
}

func (b *changesBuilder) finish(node uint32, epoch, seq uint64) []byte {
	return b.finishKind(wire.KindChanges, node, epoch, seq)
}

// finishKind is finish for a change or a snapshot datagram.
func (b *changesBuilder) finishKind(k wire.Kind, node uint32, epoch, seq uint64) []byte {
	return bytes.Clone(b.w.Finish(wire.Header{Kind: k, Node: node, Epoch: epoch, Seq: seq}))
}

var (
	peerA = netip.MustParseAddrPort("10.0.0.1:3870")
	peerB = netip.MustParseAddrPort("10.0.0.2:3870")
)

// newTestNode builds a node from cfg, with a source that yields nothing,
// a transport that drops everything and this test's own node id where cfg
// leaves them out.
func newTestNode(t testing.TB, cfg Config) *Node {
	t.Helper()
	if cfg.Source == nil {
		cfg.Source = &chanSource{ch: make(chan loader.Change)}
	}
	if cfg.Transport == nil {
		cfg.Transport = nopTransport{}
	}
	if cfg.Node == 0 {
		cfg.Node = ourNode
	}
	if cfg.ResendBytes == 0 {
		cfg.ResendBytes = 1 << 20 // not the default 16 MiB: fuzzing builds many nodes
	}
	n, err := NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// parseDescriptors decodes an announce body, failing the test on an error.
func parseDescriptors(t testing.TB, body []byte, count uint16) []wire.Descriptor {
	t.Helper()
	var it wire.Descriptors
	it.Reset(body, count)
	var out []wire.Descriptor
	for {
		d, err := it.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("descriptors: %v", err)
		}
		out = append(out, d)
	}
}

// echoOf is the echo node, in epoch, sends of cookie, a cookie datagram.
func echoOf(t testing.TB, cookie []byte, node uint32, epoch uint64) []byte {
	t.Helper()
	var h wire.Header
	var c wire.Cookie
	if err := h.Unmarshal(cookie); err != nil {
		t.Fatal(err)
	}
	if err := c.Unmarshal(&h, cookie[wire.HeaderSize:]); err != nil || h.Kind != wire.KindCookie {
		t.Fatalf("not a cookie: %+v, %v", h, err)
	}
	e := c.Header(wire.KindCookieEcho, node, epoch)
	d, err := e.AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// packet is d as received from from.
func packet(from netip.AddrPort, d []byte) transport.Packet {
	return transport.Packet{Data: d, From: from}
}

// countLines counts the log lines that contain s.
func countLines(logs, s string) int {
	n := 0
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// testingMemStats is the live heap at one moment, after a collection.
type testingMemStats struct{ heap uint64 }

func (m *testingMemStats) read() {
	runtime.GC()
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	m.heap = s.HeapAlloc
}

// slowTarget is a fakeTarget whose Dump takes its time and says while it
// runs, to catch a snapshot transfer that outlives its node.
type slowTarget struct {
	*fakeTarget
	dumping *atomic.Int32
}

func (s *slowTarget) Dump(keys, values []byte, fn func(keys, values []byte) error) error {
	s.dumping.Add(1)
	defer s.dumping.Add(-1)
	return s.fakeTarget.Dump(keys, values, func(k, v []byte) error {
		time.Sleep(20 * time.Millisecond)
		return fn(k, v)
	})
}

// knownVersion is the version k holds of key in map index m, and whether
// it holds one.
func knownVersion(k *knowledge.Store, m int, key string) (knowledge.Version, bool) {
	h := k.Lock()
	defer h.Unlock()
	if e := h.Lookup(m, []byte(key)); e != nil {
		return e.Version(), true
	}
	return knowledge.Version{}, false
}

// setKnown records v as the latest write of key in map index m.
func setKnown(k *knowledge.Store, m int, key string, v knowledge.Version, deleted, applied bool) {
	h := k.Lock()
	defer h.Unlock()
	h.Set(h.Put(m, []byte(key)), m, []byte(key), v, deleted, applied, time.Now())
}

// suspectBefore is when k last learned of a capture loss.
func suspectBefore(k *knowledge.Store) hlc.Stamp {
	h := k.Lock()
	defer h.Unlock()
	return h.SuspectBefore()
}
