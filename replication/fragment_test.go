package replication

// Records larger than a datagram: the sender and the snapshot server cut
// them into fragment records, the receiver puts them together (see
// "Fragments" in wire/FORMAT.md). The netns tests run the same between
// daemons on the real kernel.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// bigValue is the value of key i, version ver, of size bytes: different
// in every byte position, so a chunk in the wrong place shows.
func bigValue(size, i, ver int) string {
	b := make([]byte, size)
	for j := range b {
		b[j] = byte(j*7 + j>>8 + i*31 + ver*131 + 1)
	}
	copy(b, fmt.Sprintf("%d.%d.", i, ver))
	return string(b)
}

func bigKey(prefix byte, i int) string { return string([]byte{prefix, 0, byte(i >> 8), byte(i)}) }

// Values of 4 KiB and 16 KiB replicate at a 1500-byte MTU through a late
// join's resync and a live change stream, with a tenth of the change and
// snapshot datagrams lost: every lost fragment's datagram is repaired
// like any other, and no record is applied before it is whole.
func TestFragmentsReplicateOverLoss(t *testing.T) {
	for _, size := range []uint32{4096, 16384} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			var n memNet
			n.valueSize = size
			var seed atomic.Uint64
			n.drop = func(d []byte) bool {
				k := wire.Kind(d[3])
				// A cheap deterministic-enough draw: the test needs loss, not
				// a particular pattern.
				return (k == wire.KindChanges || k == wire.KindSnapshot) && seed.Add(0x9e3779b97f4a7c15)>>60 < 2
			}
			a := startMemNode(t, &n, 1, nil)
			a.waitReady(t)
			for i := range 100 {
				a.write(bigKey('a', i), bigValue(int(size), i, 1), false)
			}
			waitCount(t, "a's changes sent", &a.stats.ChangesSent, 100)
			b := startMemNode(t, &n, 2, map[string]string{bigKey('b', 0): bigValue(int(size), 0, 9)})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := range 100 {
					a.write(bigKey('a', i%50), bigValue(int(size), i, 2), false)
					if i%10 == 0 {
						a.write(bigKey('a', 90+i/10), "", false)
					}
				}
			}()
			b.waitReady(t)
			<-done
			// And now that b follows a's change stream: about 150
			// datagrams, a tenth lost.
			for i := range 50 {
				a.write(bigKey('a', i), bigValue(int(size), i, 3), false)
			}
			waitSame(t, a, b)
			sa, sb := a.stats.Snapshot(), b.stats.Snapshot()
			if sa.FragmentsSent == 0 || sb.RecordsReassembled == 0 {
				t.Errorf("a sent %d fragments, b put %d records together; want both", sa.FragmentsSent, sb.RecordsReassembled)
			}
			if sb.ResyncsReceived == 0 || sb.Repaired == 0 {
				t.Errorf("b took %d resyncs and %d repaired datagrams; want the late join's resync and lost fragments repaired", sb.ResyncsReceived, sb.Repaired)
			}
			if sb.FragmentsMalformed+sb.FragmentsInconsistent+sb.FragmentsRefused != 0 {
				t.Errorf("b dropped fragments of an honest peer: %+v", sb)
			}
			if got := a.flows.snapshot()[bigKey('b', 0)]; got != bigValue(int(size), 0, 9) {
				t.Errorf("b's own big entry did not go back to a whole: %d bytes", len(got))
			}
		})
	}
}

// TestTableFragments checks how many fragments NewTable plans for a map,
// and that it refuses a map whose values would take more than 255.
func TestTableFragments(t *testing.T) {
	tab := mustTable(t, testPayload, testMap("small", 1, 4, 1400, nil), testMap("big", 2, 4, 4096, nil),
		testMap("huge", 3, 512, 16384, nil))
	for _, tc := range []struct {
		id   int
		want int
	}{{1, 0}, {2, 3}, {3, 19}} {
		if got := tab.maps[tc.id-1].fragments; got != tc.want {
			t.Errorf("map %s: %d fragments, want %d", tab.maps[tc.id-1].Desc.Name, got, tc.want)
		}
	}
	if got, want := tab.largestFragmented(), 16384+512+partialOverhead; got != want {
		t.Errorf("largestFragmented() = %d, want %d", got, want)
	}
	if _, err := NewNode(Config{Node: 1, Table: tab, Source: &chanSource{}, Transport: nopTransport{}, ReassemblyBytes: 60000}); err == nil ||
		!strings.Contains(err.Error(), "reassembly memory") {
		t.Errorf("NewNode with a quarter of 60000 bytes for 16 KiB records: %v, want ErrReassemblySize", err)
	}
}

// reassemblyFixture is a reassembly with small bounds and a fake clock.
type reassemblyFixture struct {
	r     reassembly
	stats *Stats
	logs  *logBuffer
	now   time.Time
}

func newReassemblyFixture(limit int) *reassemblyFixture {
	f := &reassemblyFixture{stats: new(Stats), logs: new(logBuffer), now: time.Unix(1700000000, 0)}
	lim := &limiter{time: SystemTime{}}
	f.r = newReassembly(limit, f.stats, slog.New(slog.NewTextHandler(f.logs, nil)), lim)
	return f
}

// frag is fragment index of count of a value of size bytes of key k at
// stamp.
func frag(k string, stamp uint64, value []byte, index, count int) wire.Record {
	lo, hi, ok := wire.FragmentRange(len(value), index, count)
	if !ok {
		panic("bad fragment in a test")
	}
	return wire.Record{Op: ops.Update, Stamp: stamp, Origin: 5, Key: []byte(k), Value: value[lo:hi],
		Fragment: wire.Fragment{Index: index, Count: count, Offset: lo, Size: len(value)}}
}

func (f *reassemblyFixture) add(node uint32, snapshot bool, rec wire.Record) (fragmentOutcome, []byte) {
	return f.r.add(node, snapshot, 77, &rec, f.now)
}

// Fragments repeated, out of order, interleaved with another record's,
// with forged counts, beyond the bounds and never completed: each is
// counted, none completes a record but with the right bytes, and the
// memory held goes back to 0.
func TestReassemblyHostile(t *testing.T) {
	v1, v2 := []byte(bigValue(4096, 1, 1)), []byte(bigValue(4096, 2, 1))
	f := newReassemblyFixture(4 * (4096 + 4 + partialOverhead) * 2) // two records a node
	// Out of order, interleaved with another record (a snapshot's), and
	// repeated.
	steps := []struct {
		rec  wire.Record
		want fragmentOutcome
	}{
		{frag("k001", 10, v1, 2, 3), fragmentHeld},
		{frag("k002", 10, v2, 0, 3), fragmentHeld},
		{frag("k001", 10, v1, 2, 3), fragmentDropped}, // repeated
		{frag("k001", 10, v1, 0, 4), fragmentDropped}, // another count
		{frag("k001", 10, v1, 0, 3), fragmentHeld},
		{frag("k002", 10, v2, 2, 3), fragmentHeld},
		{frag("k001", 10, v1, 1, 3), fragmentCompleted},
	}
	for i, s := range steps {
		out, value := f.add(3, true, s.rec)
		if out != s.want {
			t.Fatalf("step %d: %v, want %v", i, out, s.want)
		}
		if out == fragmentCompleted && !bytes.Equal(value, v1) {
			t.Fatalf("step %d: completed with other bytes", i)
		}
	}
	st := f.stats.Snapshot()
	if st.FragmentsDuplicate != 1 || st.FragmentsInconsistent != 1 || st.RecordsReassembled != 1 {
		t.Errorf("duplicate %d, inconsistent %d, reassembled %d; want 1 each", st.FragmentsDuplicate, st.FragmentsInconsistent, st.RecordsReassembled)
	}
	// The same record in the change stream is another partial: a chunk of
	// a snapshot never completes a streamed record.
	if out, _ := f.add(3, false, frag("k002", 10, v2, 1, 3)); out != fragmentHeld {
		t.Errorf("a streamed chunk of a record a snapshot is bringing: %v, want held apart", out)
	}
	// Node 3 holds two partials, its share: a third is refused; node 4
	// still has its own share.
	if out, _ := f.add(3, true, frag("k003", 10, v1, 0, 3)); out != fragmentDropped || f.stats.FragmentsRefused.Load() != 1 {
		t.Errorf("a third record of one node: %v, %d refused; want refused", out, f.stats.FragmentsRefused.Load())
	}
	if out, _ := f.add(4, true, frag("k003", 10, v1, 0, 3)); out != fragmentHeld {
		t.Errorf("another node's record: %v, want held", out)
	}
	// A stream moving on to another record abandons the one before.
	if out, _ := f.add(3, false, frag("k004", 11, v1, 0, 3)); out != fragmentHeld || f.stats.FragmentsAbandoned.Load() != 1 {
		t.Errorf("the stream's next record: %v, %d abandoned; want held, 1", out, f.stats.FragmentsAbandoned.Load())
	}
	// Never completed: expired by the timers after the timeout, not
	// before.
	f.r.onTimers(f.now.Add(reassemblyTimeout - time.Millisecond))
	if got := f.stats.FragmentsExpired.Load(); got != 0 {
		t.Errorf("%d records expired before their time", got)
	}
	f.now = f.now.Add(reassemblyTimeout + reassemblyTimeout/4)
	if out, _ := f.add(5, true, frag("k005", 10, v1, 0, 3)); out != fragmentHeld {
		t.Errorf("after the timeout: %v, want held", out)
	}
	f.r.onTimers(f.now)
	if got := f.stats.FragmentsExpired.Load(); got != 3 {
		t.Errorf("%d records expired, want the 3 left incomplete", got)
	}
	f.r.forget(5, true)
	if f.r.held != 0 || len(f.r.partials) != 0 || len(f.r.byNode) != 0 || len(f.r.streams) != 0 || f.stats.ReassemblyBytes.Load() != 0 {
		t.Errorf("after every record expired or was forgotten: %d bytes, %d partials, %d nodes, %d streams, gauge %d; want none",
			f.r.held, len(f.r.partials), len(f.r.byNode), len(f.r.streams), f.stats.ReassemblyBytes.Load())
	}
	// One line a second for all bad fragments: the first.
	if logs := f.logs.String(); !strings.Contains(logs, "already held") || strings.Count(logs, "\n") != 1 {
		t.Errorf("log does not say, once, why the first fragment was dropped:\n%s", logs)
	}
}

// The bounds hold whatever a flood of forged fragments says: never more
// than the limit in all, nor a node's share.
func TestReassemblyBounded(t *testing.T) {
	const limit = 1 << 20
	f := newReassemblyFixture(limit)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20000 {
		size := 2 + rng.IntN(8192)
		count := 2 + rng.IntN(min(size-1, wire.MaxFragments-1))
		if _, _, ok := wire.FragmentRange(size, 0, count); !ok {
			continue
		}
		value := make([]byte, size)
		f.add(uint32(1+rng.IntN(8)), rng.IntN(2) == 0, frag(fmt.Sprint(rng.IntN(50)), uint64(1+rng.IntN(3)), value, rng.IntN(count), count))
		if f.r.held > limit {
			t.Fatalf("fragment %d: %d bytes held, over the %d limit", i, f.r.held, limit)
		}
		for node, b := range f.r.byNode {
			if b > limit/reassemblyPeerShare {
				t.Fatalf("fragment %d: node %d holds %d bytes, over its share", i, node, b)
			}
		}
	}
	if f.stats.FragmentsRefused.Load() == 0 {
		t.Error("a flood of fragments never reached the bound")
	}
}

// FuzzReassembly feeds the reassembly fragments of a few records from a
// few nodes, in any order, with any index and count and with time passing:
// a record completes only with its own bytes, and the bounds and the
// accounting hold after every fragment.
func FuzzReassembly(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 3, 0, 0, 0, 0, 1, 3, 0, 0, 0, 0, 2, 3, 0})
	f.Add([]byte{1, 1, 2, 0, 2, 0, 1, 1, 2, 1, 2, 255, 2, 0, 1, 0, 255, 9})
	f.Fuzz(func(t *testing.T, ops []byte) {
		const size, limit = 700, 4 * 2 * (700 + 1 + partialOverhead)
		fx := newReassemblyFixture(limit)
		value := func(k, stamp byte) []byte { return []byte(bigValue(size, int(k), int(stamp))) }
		for ; len(ops) >= 6; ops = ops[6:] {
			node, snapshot, k, stamp := uint32(1+ops[0]%3), ops[0]&4 != 0, ops[1]%4, 1+ops[2]%2
			index, count := int(ops[3]), int(ops[4])
			fx.now = fx.now.Add(time.Duration(ops[5]) * 200 * time.Millisecond)
			lo, hi, ok := wire.FragmentRange(size, index, count)
			if !ok {
				continue // refused by the decoder
			}
			v := value(k, stamp)
			rec := wire.Record{Op: 1, Stamp: uint64(stamp), Origin: 5, Key: []byte{k}, Value: v[lo:hi],
				Fragment: wire.Fragment{Index: index, Count: count, Offset: lo, Size: size}}
			out, got := fx.r.add(node, snapshot, 77, &rec, fx.now)
			if out == fragmentCompleted && !bytes.Equal(got, v) {
				t.Fatalf("record %d@%d completed with other bytes", k, stamp)
			}
			sum := 0
			for n, b := range fx.r.byNode {
				if b > limit/reassemblyPeerShare || b <= 0 {
					t.Fatalf("node %d holds %d bytes", n, b)
				}
				sum += b
			}
			if fx.r.held > limit || sum != fx.r.held || uint64(fx.r.held) != fx.stats.ReassemblyBytes.Load() {
				t.Fatalf("held %d, nodes' sum %d, gauge %d, limit %d", fx.r.held, sum, fx.stats.ReassemblyBytes.Load(), limit)
			}
		}
	})
}

// A snapshot datagram whose fragment would pass the reassembly bound is
// refused whole, before anything of it is taken, so that the serving node
// sends it again; a change stream's such fragment is dropped alone, and
// the rest of its datagram applied.
func TestFragmentRefusedBeyondBound(t *testing.T) {
	big, small := newFakeTarget(4, 4096), newFakeTarget(4, 8)
	tab := mustTable(t, testPayload, testMap("big", 1, 4, 4096, big), testMap("small", 2, 4, 8, small))
	stats, clock := new(Stats), hlc.New(nil, 0)
	lim := &limiter{time: SystemTime{}}
	// One record of the big map a node: its share is a quarter.
	a := newApplier(tab, newKnowledge(tab, DefaultTombstoneHorizon, clock, ourNode, stats, time.Now()), clock, stats,
		slog.New(slog.DiscardHandler), lim, 4*(4096+4+partialOverhead))
	bigFP, smallFP := tab.byID(1).fp, tab.byID(2).fp
	stamp := uint64(clock.Now())
	// datagram holds fragment index of 3 of key k's value, and an update of
	// the small map.
	datagram := func(k string, index int) ([]byte, uint16) {
		var w wire.ChangeWriter
		w.Reset(make([]byte, testPayload), peerNode, stamp)
		w.AppendFragment(bigFP, stamp, peerNode, []byte(k), []byte(bigValue(4096, int(k[3]), 1)), index, 3)
		w.Append(smallFP, ops.Update, stamp, peerNode, []byte(k), []byte("12345678"))
		d := w.Finish(wire.Header{Node: peerNode, Seq: 1})
		return d[wire.HeaderSize:], uint16(w.Count())
	}
	// Two new records in one datagram, each within the share alone, not
	// together.
	var w wire.ChangeWriter
	w.Reset(make([]byte, testPayload), peerNode, stamp)
	for _, k := range []string{"keyA", "keyB"} {
		w.AppendFragment(bigFP, stamp, peerNode, []byte(k), []byte(bigValue(4096, 0, 1)), 0, 10)
	}
	two := w.Finish(wire.Header{Node: peerNode, Seq: 1})
	if n, err := a.collect(peerNode, two[wire.HeaderSize:], uint16(w.Count()), true); !errors.Is(err, errFragmentsRefused) || n != 0 {
		t.Fatalf("two records past the peer's share together: %d taken, %v; want the datagram refused", n, err)
	}
	if a.reasm.held != 0 {
		t.Fatalf("a refused datagram left %d bytes held", a.reasm.held)
	}
	stats.FragmentsRefused.Store(0)
	body, count := datagram("key1", 0)
	if n, err := a.collect(peerNode, body, count, true); err != nil || n != 1 {
		t.Fatalf("first fragment of a snapshot: %d taken, %v; want the small record, no error", n, err)
	}
	body, count = datagram("key2", 0)
	if n, err := a.collect(peerNode, body, count, true); !errors.Is(err, errFragmentsRefused) || n != 0 {
		t.Fatalf("a second record past the peer's share: %d taken, %v; want the datagram refused", n, err)
	}
	body, count = datagram("key3", 0)
	if n, err := a.collect(peerNode, body, count, false); err != nil || n != 1 {
		t.Fatalf("a streamed record past the peer's share: %d taken, %v; want the small record, the fragment dropped", n, err)
	}
	if got := stats.FragmentsRefused.Load(); got != 2 {
		t.Errorf("%d fragments refused, want 2", got)
	}
	for i := 1; i < 3; i++ {
		body, count = datagram("key1", i)
		if _, err := a.collect(peerNode, body, count, true); err != nil {
			t.Fatalf("fragment %d of the held record: %v", i, err)
		}
	}
	a.applyRuns()
	if got := big.snapshot()["key1"]; got != bigValue(4096, '1', 1) {
		t.Errorf("key1 holds %d bytes, not the record put together", len(got))
	}
	if _, ok := big.snapshot()["key2"]; ok || len(big.snapshot()) != 1 {
		t.Errorf("the big map holds %d entries, want key1 alone", len(big.snapshot()))
	}
	if got := len(small.snapshot()); got != 2 {
		t.Errorf("the small map holds %d entries, want those of the two datagrams taken", got)
	}
}

// A clock field across the boundary of two chunks, and a local field,
// of a value sent in fragments: the sender translates the whole value
// before it cuts it, the receiver the whole record once it is put
// together, so the field arrives as the time it named and the local
// bytes stay the receiver's.
func TestFragmentsTranslateFields(t *testing.T) {
	const size, at, local = 4096, 1362, 3000 // 3 chunks of 1366 bytes: the field spans the first two
	opts := mapopt.Options{
		Clocks: []mapopt.Clock{{Field: mapopt.Field{Name: "exp", Offset: at, Size: 8}, Kind: mapopt.MonoNS}},
		Local:  []mapopt.Field{{Name: "ifindex", Offset: local, Size: 4}},
	}
	n := memNet{valueSize: size, opts: map[uint32]mapopt.Options{1: opts, 2: opts}}
	a := startMemNode(t, &n, 1, nil)
	a.waitReady(t)
	b := startMemNode(t, &n, 2, nil)
	b.waitReady(t)
	v := []byte(bigValue(size, 1, 1))
	expiry := monoClock{}.read().mono + int64(time.Minute)
	binary.NativeEndian.PutUint64(v[at:], uint64(expiry))
	binary.NativeEndian.PutUint32(v[local:], 7)
	a.write(bigKey('a', 1), string(v), false)
	var got string
	for deadline := time.Now().Add(10 * time.Second); got == "" && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		got = b.flows.snapshot()[bigKey('a', 1)]
	}
	if got == "" {
		t.Fatalf("the value did not arrive; logs:\n%s\n%s", a.logs, b.logs)
	}
	if d := int64(binary.NativeEndian.Uint64([]byte(got[at:]))) - expiry; d < -int64(time.Second) || d > int64(time.Second) {
		t.Errorf("the clock field across two chunks arrived %v off the time it named", time.Duration(d))
	}
	if l := binary.NativeEndian.Uint32([]byte(got[local:])); l != 0 {
		t.Errorf("the local field arrived as %d, want the receiver's own 0", l)
	}
	want := []byte(string(v))
	copy(want[at:at+8], got[at:at+8])
	copy(want[local:local+4], []byte{0, 0, 0, 0})
	if got != string(want) {
		t.Error("bytes outside the fields changed on the way")
	}
}

// fragmentDatagram is change datagram seq of peerNode holding the
// fragments indexes of 2 of an update of flows key k, for the fuzzer's
// seeds: an 8-byte value in two chunks of 4, as the format allows.
func (f *receiverFixture) fragmentDatagram(t testing.TB, seq uint64, k string, indexes ...int) []byte {
	var b changesBuilder
	b.start()
	stamp := uint64(testClock.Now())
	for _, i := range indexes {
		if !b.w.AppendFragment(f.fpFlow, stamp, testWriter, []byte(k), []byte("12345678"), i, 2) {
			t.Fatal("test datagram full")
		}
	}
	return b.finish(peerNode, 1, seq)
}

// A record of a change stream whose first fragment is refused for lack of
// reassembly memory is a gap given up: its later fragments are dropped
// too, counted, and a delta resync from the refused fragment's datagram
// on is asked for. It was dropped and nothing else, so the record stayed
// lost until its key was written again or a digest round found it.
func TestRefusedRecordIsRepaired(t *testing.T) {
	f := newReceiverFixture(t)
	t0 := time.Now()
	f.handleAt(t0, peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.n.client.ready.become("test", 1)
	f.n.apply.reasm.peerLimit = partialOverhead // less than any record costs
	stamp := uint64(testClock.Now())
	for i := range 2 { // the record's two chunks, in datagrams 2 and 3
		var b changesBuilder
		b.start()
		b.w.AppendFragment(f.fpFlow, stamp, testWriter, []byte("big1"), []byte("12345678"), i, 2)
		f.handleAt(t0, peerA, b.finish(peerNode, 1, uint64(2+i)))
	}
	p := f.n.peers.byNode[peerNode]
	s := f.stats.Snapshot()
	if s.RecordsRefused != 1 || s.FragmentsRefused != 2 || len(f.n.apply.reasm.partials) != 0 {
		t.Fatalf("records_refused %d, fragments_refused %d, %d partials; want 1, 2 and none", s.RecordsRefused, s.FragmentsRefused, len(f.n.apply.reasm.partials))
	}
	if !p.needSync || p.stream.lostFrom != 2 || s.ResyncNeeded != 1 {
		t.Fatalf("need sync %v, lost from %d, resync_needed %d; want a resync owed from datagram 2", p.needSync, p.stream.lostFrom, s.ResyncNeeded)
	}
	if !strings.Contains(f.logs.String(), "reassembly-memory") {
		t.Errorf("no log line names --reassembly-memory:\n%s", f.logs)
	}
	f.n.client.begin(p, t0)
	if f.n.client.delta != 2 {
		t.Errorf("resync asked from %d, want a delta from datagram 2", f.n.client.delta)
	}
	// The delta's answer, as of datagram 3, brings what was lost.
	at := uint64(f.n.client.clock.Now())
	f.handleAt(t0, peerA, f.syncStart(wire.SyncStart{AsOf: 3, Stamp: at, Since: at}))
	if p.stream.lostFrom != 0 {
		t.Errorf("after a snapshot as of datagram 3, lost from %d, want 0", p.stream.lostFrom)
	}
}
