package replication

// These tests drive the sender with the in-memory fakes of fakes_test.go:
// a scripted source instead of the ring buffer and a recording transport
// instead of the socket.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

const testPayload = 1472 // 1500-byte MTU over IPv4

func newTestSender(t testing.TB, tab *Table, src Source, tr Transport, cfg senderConfig) (*sender, *Stats) {
	t.Helper()
	stats := new(Stats)
	cfg.Source, cfg.Transport, cfg.Table, cfg.Stats = src, tr, tab, stats
	cfg.Node, cfg.Epoch = 7, 1000
	if cfg.Knowledge == nil {
		if cfg.Clock == nil {
			cfg.Clock = hlc.New(nil, 0)
		}
		cfg.Knowledge = newKnowledge(tab, DefaultTombstoneHorizon, cfg.Clock, cfg.Node, stats, time.Now())
	}
	if cfg.Clock == nil {
		cfg.Clock = hlc.New(nil, 0)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return newSender(cfg), stats
}

// stampOne stamps one change as [sender.stampStaged] does, with the
// knowledge held for it alone.
func stampOne(s *sender, m *localMap, op ops.Op, key, value []byte, now time.Time) (knowledge.Version, bool) {
	h := s.know.Lock()
	defer h.Unlock()
	return s.stamp(h, m, op, s.know.Hash(key), key, value, now)
}

func upd(id ebpf.MapID, key, value string) loader.Change {
	return loader.Change{MapID: id, Op: ops.Update, Key: []byte(key), Value: []byte(value)}
}

func del(id ebpf.MapID, key string) loader.Change {
	return loader.Change{MapID: id, Op: ops.Delete, Key: []byte(key)}
}

// changeDatagrams returns the change datagrams sent, in order, skipping
// announces.
func changeDatagrams(tr *fakeTransport) [][]byte {
	var out [][]byte
	for _, b := range tr.sent() {
		for _, d := range b {
			var h wire.Header
			if h.Unmarshal(d) == nil && h.Kind == wire.KindChanges {
				out = append(out, d)
			}
		}
	}
	return out
}

func TestCoalesce(t *testing.T) {
	tab := mustTable(t, testPayload,
		testMap("flows", 1, 4, 8, nil),
		testMap("nat", 2, 4, 8, nil))
	flows, nat := tab.byID(1).fp, tab.byID(2).fp
	for _, tc := range []struct {
		name      string
		in        []loader.Change
		want      []record
		coalesced uint64
	}{
		{"update then update", []loader.Change{upd(1, "key1", "value--1"), upd(1, "key1", "value--2")},
			[]record{{flows, ops.Update, "key1", "value--2"}}, 1},
		{"update then delete", []loader.Change{upd(1, "key1", "value--1"), del(1, "key1")},
			[]record{{flows, ops.Delete, "key1", ""}}, 1},
		{"delete then update", []loader.Change{del(1, "key1"), upd(1, "key1", "value--2")},
			[]record{{flows, ops.Update, "key1", "value--2"}}, 1},
		{"update delete update", []loader.Change{upd(1, "key1", "value--1"), del(1, "key1"), upd(1, "key1", "value--3")},
			[]record{{flows, ops.Update, "key1", "value--3"}}, 2},
		{"same key bytes in two maps", []loader.Change{upd(1, "key1", "value--1"), upd(2, "key1", "value--2")},
			[]record{{flows, ops.Update, "key1", "value--1"}, {nat, ops.Update, "key1", "value--2"}}, 0},
		{"keys keep their first position", []loader.Change{
			upd(1, "key1", "value--1"), upd(2, "key9", "value--9"), upd(1, "key2", "value--2"), del(1, "key1")},
			[]record{{flows, ops.Delete, "key1", ""}, {flows, ops.Update, "key2", "value--2"},
				{nat, ops.Update, "key9", "value--9"}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newFakeTransport()
			s, stats := newTestSender(t, tab, nil, tr, senderConfig{})
			for i := range tc.in {
				s.add(&tc.in[i], time.Now())
			}
			s.flush()
			ds := changeDatagrams(tr)
			if len(ds) != 1 {
				t.Fatalf("%d datagrams, want 1", len(ds))
			}
			h, got := decodeChanges(t, tab, ds[0])
			if !slices.Equal(got, tc.want) {
				t.Errorf("records:\n got %v\nwant %v", got, tc.want)
			}
			if h.Node != 7 || h.Epoch != 1000 || h.Seq != 1 {
				t.Errorf("header %+v, want node 7 epoch 1000 seq 1", h)
			}
			snap := stats.Snapshot()
			if snap.Coalesced != tc.coalesced || snap.Captured != uint64(len(tc.in)) ||
				snap.ChangesSent != uint64(len(tc.want)) || snap.DatagramsSent != 1 {
				t.Errorf("stats %+v", snap)
			}
		})
	}
}

func TestBadChangesDropped(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	tr := newFakeTransport()
	s, stats := newTestSender(t, tab, nil, tr, senderConfig{})
	for _, c := range []loader.Change{
		upd(99, "key1", "value--1"),            // map not replicated
		upd(1, "key", "value--1"),              // short key
		upd(1, "key1", "value"),                // short value
		{MapID: 1, Op: 3, Key: []byte("key1")}, // unknown op
		upd(1, "key2", "value--2"),             // fine
	} {
		s.add(&c, time.Now())
	}
	s.flush()
	ds := changeDatagrams(tr)
	if len(ds) != 1 {
		t.Fatalf("%d datagrams, want 1", len(ds))
	}
	if _, got := decodeChanges(t, tab, ds[0]); len(got) != 1 || got[0].key != "key2" {
		t.Errorf("records %v, want only key2", got)
	}
	if n := stats.Snapshot().BadChanges; n != 4 {
		t.Errorf("bad_changes %d, want 4", n)
	}
}

func key(i int) string { return string(binary.BigEndian.AppendUint32(nil, uint32(i))) }

func TestCloseWhenFull(t *testing.T) {
	const valueSize = 100
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, valueSize, nil))
	perDatagram := (testPayload - wire.HeaderSize - wire.SectionHeaderSize) / (1 + 4 + valueSize)
	tr := newFakeTransport()
	s, _ := newTestSender(t, tab, nil, tr, senderConfig{})
	value := string(make([]byte, valueSize))
	const n = 40
	for i := range n {
		c := upd(1, key(i), value)
		s.add(&c, time.Now())
	}
	s.flush()
	ds := changeDatagrams(tr)
	if want := (n + perDatagram - 1) / perDatagram; len(ds) != want {
		t.Fatalf("%d datagrams, want %d", len(ds), want)
	}
	next := 0
	for i, d := range ds {
		h, recs := decodeChanges(t, tab, d)
		if h.Seq != uint64(i+1) {
			t.Errorf("datagram %d: seq %d, want %d", i, h.Seq, i+1)
		}
		if len(d) > testPayload {
			t.Errorf("datagram %d: %d bytes, more than the payload", i, len(d))
		}
		if i < len(ds)-1 && len(recs) != perDatagram {
			t.Errorf("datagram %d: %d records, want %d (full)", i, len(recs), perDatagram)
		}
		for _, r := range recs {
			if r.key != key(next) {
				t.Fatalf("datagram %d: key %x, want %x: order lost", i, r.key, key(next))
			}
			next++
		}
	}
	if next != n {
		t.Errorf("%d records sent, want %d", next, n)
	}
}

// A delete that coalesced into a full datagram cannot grow back into an
// update there: the datagram is closed with the delete and the update
// follows in the next one, so the peer sees both in order.
func TestCloseWhenCoalescedChangeGrows(t *testing.T) {
	const valueSize = 100
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, valueSize, nil))
	perDatagram := (testPayload - wire.HeaderSize - wire.SectionHeaderSize) / (1 + 4 + valueSize)
	tr := newFakeTransport()
	s, stats := newTestSender(t, tab, nil, tr, senderConfig{})
	value := string(make([]byte, valueSize))
	changes := []loader.Change{del(1, key(0))}
	for i := 1; i <= perDatagram; i++ {
		changes = append(changes, upd(1, key(i), value))
	}
	room := testPayload - wire.HeaderSize - wire.SectionHeaderSize - 5 - perDatagram*(1+4+valueSize)
	if room < 0 || room >= valueSize {
		t.Fatalf("test layout: %d bytes left, want room for the delete but not for its value", room)
	}
	changes = append(changes, upd(1, key(0), value))
	for i := range changes {
		s.add(&changes[i], time.Now())
	}
	s.flush()
	ds := changeDatagrams(tr)
	if len(ds) != 2 {
		t.Fatalf("%d datagrams, want 2", len(ds))
	}
	_, first := decodeChanges(t, tab, ds[0])
	_, second := decodeChanges(t, tab, ds[1])
	if first[0].op != ops.Delete || first[0].key != key(0) {
		t.Errorf("first datagram starts with %v, want the delete of key 0", first[0])
	}
	if len(second) != 1 || second[0].op != ops.Update || second[0].key != key(0) {
		t.Errorf("second datagram %v, want only the update of key 0", second)
	}
	if c := stats.Snapshot().Coalesced; c != 0 {
		t.Errorf("coalesced %d, want 0", c)
	}
}

// runScript runs a sender over a scripted source until the script ends.
// tweak, if not nil, adjusts the sender before it runs.
func runScript(t *testing.T, tab *Table, steps []step, cfg senderConfig, tweak func(*sender)) (*fakeTransport, *scriptSource) {
	t.Helper()
	src := &scriptSource{steps: steps}
	tr := newFakeTransport()
	s, _ := newTestSender(t, tab, src, tr, cfg)
	if tweak != nil {
		tweak(s)
	}
	if err := s.Run(context.Background()); !errors.Is(err, errFakeClosed) {
		t.Fatalf("run: %v, want the source's error at the end of the script", err)
	}
	return tr, src
}

// recordCounts returns the number of records of each change datagram in
// each batch sent, skipping announce-only batches.
func recordCounts(t *testing.T, tab *Table, tr *fakeTransport) [][]int {
	var out [][]int
	for _, b := range tr.sent() {
		var counts []int
		for _, d := range b {
			var h wire.Header
			if err := h.Unmarshal(d); err != nil {
				t.Fatal(err)
			}
			if h.Kind == wire.KindChanges {
				counts = append(counts, int(h.Count))
			}
		}
		if counts != nil {
			out = append(out, counts)
		}
	}
	return out
}

func TestFlushWhenDrained(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	tr, _ := runScript(t, tab, []step{
		{change: upd(1, "key1", "value--1"), buffered: 64},
		{change: upd(1, "key2", "value--2"), buffered: 32},
		{change: upd(1, "key3", "value--3"), buffered: 0},
		{change: upd(1, "key4", "value--4"), buffered: 0},
	}, senderConfig{FlushInterval: time.Hour}, nil)
	if got, want := recordCounts(t, tab, tr), [][]int{{3}, {1}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("batches of record counts %v, want %v", got, want)
	}
}

func TestFlushWhenBatchFull(t *testing.T) {
	const valueSize = 1400 // one change per datagram
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, valueSize, nil))
	value := string(make([]byte, valueSize))
	var steps []step
	for i := range sendBatch + 3 {
		steps = append(steps, step{change: upd(1, key(i), value), buffered: 1 << 20})
	}
	tr, _ := runScript(t, tab, steps, senderConfig{FlushInterval: time.Hour}, nil)
	got := recordCounts(t, tab, tr)
	if len(got) != 2 || len(got[0]) != sendBatch || len(got[1]) != 3 {
		t.Errorf("batches of sizes %v, want one of %d then the rest at shutdown", got, sendBatch)
	}
}

// While the source never drains, the sender looks at the clock every
// clockEvery changes and flushes once the oldest pending change is older
// than the flush interval.
func TestFlushAfterInterval(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	const interval = time.Millisecond
	var script []step
	for i := range clockEvery + 1 {
		st := step{change: upd(1, fmt.Sprintf("k%03d", i), "value--1"), buffered: 1 << 20}
		if i == 1 {
			st.sleep = 2 * interval // the first change is now older than the interval
		}
		script = append(script, st)
	}
	tr, _ := runScript(t, tab, script, senderConfig{FlushInterval: interval}, nil)
	if got, want := recordCounts(t, tab, tr), [][]int{{clockEvery}, {1}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("batches of record counts %v, want %v", got, want)
	}
}

// The sender polls the source every flush interval while changes flow and
// sleeps until the next announce once they stop. The active window is set
// per run so that the outcome does not depend on the machine's speed.
func TestReadDeadlines(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	const interval = 100 * time.Microsecond
	script := []step{
		{timeout: true},
		{change: upd(1, "key1", "value--1")},
		{timeout: true},
	}
	for _, tc := range []struct {
		name   string
		window time.Duration
		want   []string
	}{
		// start, timeout before any change, first change, timeout after it
		{"within the active window", time.Hour, []string{"idle", "idle", "poll", "poll"}},
		{"after the active window", time.Nanosecond, []string{"idle", "idle", "poll", "idle"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, src := runScript(t, tab, script, senderConfig{FlushInterval: interval, AnnounceInterval: time.Hour},
				func(s *sender) { s.activeWindow = tc.window })
			kinds := make([]string, len(src.deadlines))
			for i, d := range src.deadlines {
				switch ahead := d.deadline.Sub(d.at); {
				case ahead <= interval:
					kinds[i] = "poll"
				case ahead > relayPoll/2 && ahead <= relayPoll:
					kinds[i] = "idle" // until the relay is looked at again
				default:
					kinds[i] = fmt.Sprint(ahead)
				}
			}
			if !slices.Equal(kinds, tc.want) {
				t.Errorf("deadlines %v, want %v", kinds, tc.want)
			}
		})
	}
}

func TestAnnounce(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil), testMap("nat", 2, 16, 32, nil))
	tr, _ := runScript(t, tab, []step{
		{change: upd(1, "key1", "value--1")},
		{change: upd(1, "key2", "value--2")},
		{timeout: true, sleep: 20 * time.Millisecond},
	}, senderConfig{AnnounceInterval: 10 * time.Millisecond}, nil)
	var seqs []uint64
	for _, b := range tr.sent() {
		for _, d := range b {
			var h wire.Header
			if err := h.Unmarshal(d); err != nil {
				t.Fatal(err)
			}
			if h.Kind != wire.KindAnnounce {
				continue
			}
			seqs = append(seqs, h.Seq)
			descs := parseDescriptors(t, d[wire.HeaderSize:], h.Count)
			if len(descs) != 2 || !reflect.DeepEqual(descs[0], tab.maps[0].Desc) || !reflect.DeepEqual(descs[1], tab.maps[1].Desc) {
				t.Errorf("announced %+v, want the table's descriptors", descs)
			}
		}
	}
	// One at start-up before any change, the last once the interval passed
	// after both changes (a slow machine may add one in between).
	if len(seqs) < 2 || seqs[0] != 0 || seqs[len(seqs)-1] != 2 || !slices.IsSorted(seqs) {
		t.Errorf("announce sequence numbers %v, want 0 first and 2 last", seqs)
	}
}

func TestAnnounceSplitsDescriptors(t *testing.T) {
	var maps []Map
	for i := range 50 {
		maps = append(maps, testMap(fmt.Sprintf("map_%02d_padded", i), ebpf.MapID(i+1), 4, 4, nil))
	}
	const payload = 576 - 28
	tab := mustTable(t, payload, maps...)
	dgrams, counts := buildAnnounces(tab)
	total := 0
	for i, d := range dgrams {
		if len(d) > payload {
			t.Errorf("announce %d: %d bytes, more than %d", i, len(d), payload)
		}
		descs := parseDescriptors(t, d[wire.HeaderSize:], counts[i])
		for _, desc := range descs {
			if !reflect.DeepEqual(desc, maps[total].Desc) {
				t.Fatalf("descriptor %d: %+v, want %+v", total, desc, maps[total].Desc)
			}
			total++
		}
	}
	if total != len(maps) {
		t.Errorf("%d descriptors announced, want %d", total, len(maps))
	}
}

func TestTableRefusesOversizedMap(t *testing.T) {
	_, err := NewTable([]Map{testMap("big", 1, 512, 1<<20, nil)}, testPayload)
	if err == nil {
		t.Fatal("a 1 MiB value fits 255 fragments of a 1472-byte payload?")
	}
	for _, want := range []string{`"big"`, "255", "1472", "MTU"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

// cycleSource returns the same changes over and over without allocating.
type cycleSource struct {
	changes []loader.Change
	i       int
}

func (c *cycleSource) Read(ch *loader.Change) error {
	*ch = c.changes[c.i%len(c.changes)]
	c.i++
	return nil
}
func (c *cycleSource) SetDeadline(time.Time)      {}
func (c *cycleSource) Buffered() int              { return 1 }
func (c *cycleSource) Overflows() (uint64, error) { return 0, nil }

func newCycle(n int) *cycleSource {
	src := &cycleSource{}
	for i := range n {
		if i%5 == 4 {
			src.changes = append(src.changes, del(1, key(i/2)))
		} else {
			src.changes = append(src.changes, upd(1, key(i/2), "value-"+key(i)[2:]))
		}
	}
	return src
}

// Read, coalesce, encode and keeping sealed datagrams for resends allocate
// nothing per change once warm. The resend buffer is small, so it wraps
// and evicts all through the test.
func TestSenderAllocs(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil), testMap("nat", 2, 4, 8, nil))
	src := newCycle(1000)
	resend, err := newResendBuffer(16*testPayload, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := newTestSender(t, tab, src, nopTransport{}, senderConfig{Resend: resend})
	now := time.Now()
	step := func() {
		if err := s.src.Read(&s.ch); err != nil {
			t.Fatal(err)
		}
		s.add(&s.ch, now)
	}
	for range 10000 {
		step()
	}
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	if a := testing.AllocsPerRun(10000, step); a != 0 {
		t.Errorf("%v allocations per change, want 0", a)
	}
	if a := testing.AllocsPerRun(100, s.flush); a != 0 {
		t.Errorf("%v allocations per flush, want 0", a)
	}
	if _, last, ok := resend.held(); !ok || last != s.header.Seq {
		t.Errorf("resend buffer ends at %d (held %v), want the last sealed %d", last, ok, s.header.Seq)
	}
}

func BenchmarkCoalesceEncode(b *testing.B) {
	tab := mustTable(b, testPayload, testMap("flows", 1, 4, 8, nil))
	src := newCycle(4096)
	s, _ := newTestSender(b, tab, src, nopTransport{}, senderConfig{})
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		_ = s.src.Read(&s.ch)
		s.add(&s.ch, now)
	}
	s.flush()
}

// The sender polls for as long as the capture's wake-up contract asks.
func TestSenderPollsForThePollWindow(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	s, _ := newTestSender(t, tab, &scriptSource{}, newFakeTransport(), senderConfig{})
	if s.activeWindow != loader.PollWindow {
		t.Errorf("sender polls for %v after the last change, the capture needs %v", s.activeWindow, loader.PollWindow)
	}
}

// The changes queued in the capture ahead of the ones it lost were made
// before them, however late they are read: a version recorded for one of
// them says nothing of what the map holds. So the loss is acted on, the
// versions made suspect and the peers told to resync, only once the ring
// has drained. Acting at once, a version stamped after the check for a
// change made before the loss counted as trustworthy, the snapshot sent
// it with the lost write's value, and a peer holding the change's value
// under that version kept it for good (TestMergeJoinUnderLoad, 2,545
// keys).
func TestLossActedOnOnceDrained(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	src := &scriptSource{buffered: 100}
	resend, err := newResendBuffer(1<<20, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := newTestSender(t, tab, src, nopTransport{}, senderConfig{Resend: resend})
	src.overflows = 7
	now := time.Now()
	s.checkOverflows(now)
	seq := s.header.Seq
	// Read after the check, queued before the loss.
	v, ok := stampOne(s, &tab.maps[0], ops.Update, []byte("key1"), []byte("value--1"), now)
	if !ok {
		t.Fatal("a change was not stamped")
	}
	if suspect := suspectBefore(s.know); suspect != 0 || s.header.Seq != seq {
		t.Fatalf("acted on the loss before the ring drained: suspect before %v, seq %d -> %d", suspect, seq, s.header.Seq)
	}
	s.setDrained(time.Now())
	if suspect := suspectBefore(s.know); suspect <= v.Stamp {
		t.Fatalf("suspect before %v, not after the version %v of a change read before the drain", suspect, v.Stamp)
	}
	if _, ok := resend.copyOut(seq+1, nil); s.header.Seq != seq+1 || ok {
		t.Fatalf("seq %d after the drain, want %d skipped as lost", s.header.Seq, seq+1)
	}
}

// A stopping sender's last datagram is an announce, so that the peers
// learn its run's last sequence number even if its last change datagram
// was lost, and ask the node's next run for a resync (found by the
// simulator with clean stops).
func TestSenderAnnouncesLastAtStop(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	tr := newFakeTransport()
	s, _ := newTestSender(t, tab, &scriptSource{steps: []step{{change: upd(1, "key1", "value-01")}}}, tr, senderConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Run(ctx); err != nil {
		t.Fatalf("run after the context ended: %v", err)
	}
	batches := tr.sent()
	if len(batches) < 3 {
		t.Fatalf("%d batches sent, want the first announce, the change, then the last announce", len(batches))
	}
	var h wire.Header
	last := batches[len(batches)-1]
	if err := h.Unmarshal(last[len(last)-1]); err != nil || h.Kind != wire.KindAnnounce || h.Seq != 1 {
		t.Fatalf("last datagram %+v (%v), want an announce of datagram 1", h, err)
	}
}

// An entry a resync sends back was read from the map with the version
// known of it. If the capture lost changes before that read and the
// sender finds the loss only after, the map may have held a lost local
// write over another node's version. So the sender looks for a loss
// before it takes relayed entries, and sends those recorded before the
// loss stamped anew as this node's writes. Taken first, the local value
// went out as node 5's write (simulated overflows, seed 4224).
func TestRelayedAfterLossRestamped(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	src := &scriptSource{}
	tr := newFakeTransport()
	relay := new(relayQueue)
	s, _ := newTestSender(t, tab, src, tr, senderConfig{Relay: relay})
	now := time.Now()
	s.checkOverflows(now)
	theirs := knowledge.Version{Stamp: s.clock.At(now), Origin: 5}
	h := s.know.Lock()
	h.Set(h.Put(0, []byte("key1")), 0, []byte("key1"), theirs, false, true, now)
	h.Unlock()
	relay.add(0, ops.Update, theirs, []byte("key1"), []byte("lostmine"))
	src.overflows = 3 // lost before the read above, found after it
	if _, err := s.took(os.ErrDeadlineExceeded); err != nil {
		t.Fatal(err)
	}
	var got []knowledge.Version
	for _, batch := range tr.sent() {
		for _, d := range batch {
			got = append(got, sentVersions(t, tab, d, "key1")...)
		}
	}
	if len(got) != 1 || got[0].Origin != 7 || !got[0].Newer(theirs) {
		t.Fatalf("key1 sent at %+v after a loss; want once, as a new write of node 7 newer than node 5's %+v", got, theirs)
	}
}

// sentVersions is the versions of key's records in d, if it is a change
// datagram.
func sentVersions(t testing.TB, tab *Table, d []byte, key string) []knowledge.Version {
	t.Helper()
	var h wire.Header
	if err := h.Unmarshal(d); err != nil || h.Kind != wire.KindChanges {
		return nil
	}
	var vs []knowledge.Version
	var secs wire.Sections
	secs.Reset(d[wire.HeaderSize:], h.Count)
	for sec, err := secs.Next(); err == nil; sec, err = secs.Next() {
		var recs wire.Records
		recs.Reset(sec, tab.maps[0].keySize, tab.maps[0].valueSize, secs.Base(), h.Node)
		for r, err := recs.Next(); err == nil; r, err = recs.Next() {
			if string(r.Key) == key {
				vs = append(vs, knowledge.Version{Stamp: hlc.Stamp(r.Stamp), Origin: r.Origin})
			}
		}
	}
	return vs
}

// sizedSource is a scripted source that says how large its ring is, as
// the capture does.
type sizedSource struct {
	*scriptSource
	size int
}

func (s sizedSource) Size() int { return s.size }

// Flow control: while a peer asks for a datagram about to leave the
// resend buffer, the sender waits, as long as half its ring has room, and
// no longer than the request is fresh; with the ring half full it reads on
// at once, since waiting longer would overflow the ring.
func TestSenderHoldsBackForAPeer(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	src := sizedSource{&scriptSource{}, 1 << 20}
	resend, err := newResendBuffer(64*testPayload, testPayload)
	if err != nil {
		t.Fatal(err)
	}
	clk := &fixedTime{now: time.Date(2041, 3, 4, 5, 6, 7, 0, time.UTC)}
	s, stats := newTestSender(t, tab, src, nopTransport{}, senderConfig{Resend: resend, Time: clk})
	d := make([]byte, testPayload)
	for seq := uint64(1); seq <= 64; seq++ {
		resend.add(seq, d)
	}
	s.header.Seq = 64
	first, _, _ := resend.held()
	start := clk.now
	resend.asked(peerNode, first, start)
	s.holdBack()
	if waited := clk.now.Sub(start); waited < needFresh || waited > needFresh+2*holdBackStep || stats.HeldBack.Load() != 1 {
		t.Errorf("waited %v (held_back %d) for a peer asking for the oldest datagram, want the request's freshness, %v, once",
			waited, stats.HeldBack.Load(), needFresh)
	}
	src.buffered = src.size / 2
	s.header.Seq++
	resend.add(s.header.Seq, d)
	first, _, _ = resend.held()
	start = clk.now
	resend.asked(peerNode, first, start)
	s.holdBack()
	if clk.now != start {
		t.Errorf("waited %v with the ring half full", clk.now.Sub(start))
	}
}

// A relayed write whose version is no longer the one known of its key was
// superseded by a later write, which goes on its own: the relayed value,
// read from the map, may be that later write (a local one not yet read
// from the capture), and sent at the old version it claimed to be node
// 5's. Values too large for one datagram, sent as fragments, are not
// coalesced with the pending later write, so it went out (simulated
// 3000-byte values, seed 7495).
func TestSupersededRelayedDropped(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("flows", 1, 4, 8, nil))
	tr := newFakeTransport()
	relay := new(relayQueue)
	s, _ := newTestSender(t, tab, &scriptSource{}, tr, senderConfig{Relay: relay})
	now := time.Now()
	theirs := knowledge.Version{Stamp: s.clock.At(now), Origin: 5}
	relay.add(0, ops.Update, theirs, []byte("key1"), []byte("newlocal"))
	mine := knowledge.Version{Stamp: s.clock.At(now), Origin: 7}
	h := s.know.Lock()
	h.Set(h.Put(0, []byte("key1")), 0, []byte("key1"), mine, false, false, now) // the local write, captured since
	h.Unlock()
	if _, err := s.took(os.ErrDeadlineExceeded); err != nil {
		t.Fatal(err)
	}
	for _, batch := range tr.sent() {
		for _, d := range batch {
			if vs := sentVersions(t, tab, d, "key1"); len(vs) > 0 {
				t.Fatalf("a superseded relayed write was sent at %+v", vs)
			}
		}
	}
}

// distinctSource writes n distinct 16-byte keys with 64-byte values, over
// and over, without allocating: a writer of a large map, each of whose
// changes finds its key in the knowledge far from the last ones.
type distinctSource struct {
	n, i       int
	key, value []byte
}

func (d *distinctSource) Read(ch *loader.Change) error {
	// An odd multiplier spreads the counter over the key's bits.
	binary.LittleEndian.PutUint64(d.key, uint64(d.i%d.n)*0x9e3779b97f4a7c15)
	d.i++
	*ch = loader.Change{MapID: 1, Op: ops.Update, Key: d.key, Value: d.value}
	return nil
}
func (d *distinctSource) SetDeadline(time.Time)      {}
func (d *distinctSource) Buffered() int              { return 1 }
func (d *distinctSource) Overflows() (uint64, error) { return 0, nil }

// BenchmarkSenderDistinctKeys is the sender's cost per change, from the
// source's read to the datagram handed to the transport, of a writer of
// 1M distinct keys (16 B / 64 B, the perf harness's small profile) that
// the knowledge already holds: the recording of each change's version
// then waits for memory, since the 1M entries far exceed the cache.
func BenchmarkSenderDistinctKeys(b *testing.B) {
	const keys = 1 << 20
	tab := mustTable(b, testPayload, testMap("flows", 1, 16, 64, nil))
	resend, err := newResendBuffer(16<<20, testPayload)
	if err != nil {
		b.Fatal(err)
	}
	src := &distinctSource{n: keys, key: make([]byte, 16), value: make([]byte, 64)}
	s, _ := newTestSender(b, tab, src, nopTransport{}, senderConfig{Resend: resend})
	s.polling = true
	step := func() {
		_ = s.src.Read(&s.ch)
		if _, err := s.took(nil); err != nil {
			b.Fatal(err)
		}
	}
	for range keys {
		step()
	}
	b.ReportAllocs()
	// CPU time as well: on a busy machine the time taken says more of
	// the other processes than of this one.
	var r0, r1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &r0)
	for b.Loop() {
		step()
	}
	s.flush()
	_ = unix.Getrusage(unix.RUSAGE_SELF, &r1)
	b.ReportMetric(float64((rusageCPU(&r1)-rusageCPU(&r0)).Nanoseconds())/float64(b.N), "cpu-ns/op")
}
