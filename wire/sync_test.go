package wire_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

func TestSyncStartRoundTrip(t *testing.T) {
	for _, s := range []wire.SyncStart{
		{Status: wire.SyncOK, AsOf: 1<<64 - 1, Entries: 1<<64 - 1, Stamp: 1<<64 - 1, Since: 1<<64 - 1},
		{Status: wire.SyncOK, AsOf: 5, Stamp: 9, Since: 8},
		{Status: wire.SyncNotReady},
		{Status: wire.SyncBusy, AsOf: 3, Entries: 1_000_000, Stamp: 7},
		{Status: wire.SyncPartial, AsOf: 9, Stamp: 1},
	} {
		b, err := s.AppendTo([]byte{9})
		if err != nil || len(b) != 1+wire.SyncStartSize || b[0] != 9 {
			t.Fatalf("AppendTo(%+v) = %x, %v; want the prefix and %d bytes", s, b, err, wire.SyncStartSize)
		}
		b = b[1:]
		var got wire.SyncStart
		if err := got.Unmarshal(b); err != nil || got != s {
			t.Errorf("Unmarshal(AppendTo(%+v)) = %+v, %v", s, got, err)
		}
	}
}

// A delta request names the first datagram the requester lacks, any
// number but 0, in exactly 8 bytes.
func TestSyncDelta(t *testing.T) {
	for _, from := range []uint64{1, 2, 1<<64 - 1} {
		b := wire.AppendSyncDelta(nil, from)
		if got, err := wire.SyncDelta(b); len(b) != wire.SyncDeltaSize || got != from || err != nil {
			t.Errorf("SyncDelta(AppendSyncDelta(%d)) = %d, %v (%d bytes)", from, got, err, len(b))
		}
	}
	for _, tc := range []struct {
		name string
		body []byte
		want error
	}{
		{"zero", wire.AppendSyncDelta(nil, 0), wire.ErrBadLength},
		{"short", wire.AppendSyncDelta(nil, 1)[:7], wire.ErrShortBuffer},
		{"long", append(wire.AppendSyncDelta(nil, 1), 0), wire.ErrBadLength},
	} {
		if _, err := wire.SyncDelta(tc.body); !errors.Is(err, tc.want) {
			t.Errorf("%s: SyncDelta = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestSyncStartRejects(t *testing.T) {
	ok, err := (&wire.SyncStart{AsOf: 1}).AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), ok...)
	bad[0] = wire.SyncPartial + 1
	for _, tc := range []struct {
		name string
		body []byte
		want error
	}{
		{"short", ok[:wire.SyncStartSize-1], wire.ErrShortBuffer},
		{"long", append(append([]byte(nil), ok...), 0), wire.ErrBadLength},
		{"status", bad, wire.ErrBadStatus},
	} {
		s := wire.SyncStart{Status: 9}
		if err := s.Unmarshal(tc.body); !errors.Is(err, tc.want) {
			t.Errorf("%s: Unmarshal = %v, want %v", tc.name, err, tc.want)
		}
		if s.Status != 9 {
			t.Errorf("%s: a refused body changed the SyncStart: %+v", tc.name, s)
		}
	}
}

// TestSyncStartAppendToRefusesWhatUnmarshalRefuses checks every status.
func TestSyncStartAppendToRefusesWhatUnmarshalRefuses(t *testing.T) {
	for status := range 256 {
		s := wire.SyncStart{Status: uint8(status), AsOf: 5}
		b, err := s.AppendTo([]byte{1})
		raw := make([]byte, wire.SyncStartSize)
		raw[0] = uint8(status)
		want := new(wire.SyncStart).Unmarshal(raw)
		if !errors.Is(err, want) {
			t.Fatalf("status %d: AppendTo = %v, Unmarshal = %v", status, err, want)
		}
		if err != nil && len(b) != 1 {
			t.Fatalf("status %d: AppendTo appended %d bytes with %v", status, len(b)-1, err)
		}
		if status <= int(wire.SyncPartial) && err != nil || status > int(wire.SyncPartial) && !errors.Is(err, wire.ErrBadStatus) {
			t.Errorf("status %d: AppendTo = %v", status, err)
		}
	}
}

func TestSyncStartAllocs(t *testing.T) {
	s := wire.SyncStart{Status: wire.SyncOK, AsOf: 1}
	buf := make([]byte, 0, wire.SyncStartSize)
	var got wire.SyncStart
	allocs := testing.AllocsPerRun(100, func() {
		b, err := s.AppendTo(buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := got.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("sync start encode and decode: %v allocations, want 0", allocs)
	}
}

func TestSyncSeq(t *testing.T) {
	seq := wire.SyncSeq(0xdeadbeef, 42)
	if id, n := wire.SplitSyncSeq(seq); id != 0xdeadbeef || n != 42 {
		t.Fatalf("SplitSyncSeq(SyncSeq(0xdeadbeef, 42)) = %#x, %d", id, n)
	}
}

// Each flag is valid on its own kind of datagram only.
func TestHeaderFlagsPerKind(t *testing.T) {
	for _, tc := range []struct {
		kind  wire.Kind
		flags uint8
		ok    bool
	}{
		{wire.KindChanges, wire.FlagRetransmit, true},
		{wire.KindChanges, wire.FlagReady, false},
		{wire.KindAnnounce, wire.FlagReady, true},
		{wire.KindAnnounce, wire.FlagRetransmit, false},
		{wire.KindSnapshot, wire.FlagRetransmit, false},
		{wire.KindSyncAck, 0, true},
	} {
		h := wire.Header{Kind: tc.kind}
		b, err := h.AppendTo(nil)
		if err != nil {
			t.Fatal(err)
		}
		b[4] = tc.flags
		err = new(wire.Header).Unmarshal(b)
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, wire.ErrBadFlags) {
			t.Errorf("kind %d flags %#x: Unmarshal = %v, want ok=%v", tc.kind, tc.flags, err, tc.ok)
		}
		h.Flags = tc.flags
		_, err = h.AppendTo(nil)
		if tc.ok && err != nil || !tc.ok && !errors.Is(err, wire.ErrBadFlags) {
			t.Errorf("kind %d flags %#x: AppendTo = %v, want ok=%v", tc.kind, tc.flags, err, tc.ok)
		}
	}
}

// A snapshot datagram has the body of a change datagram, and carries
// unstamped entries and stamped deletes besides stamped entries.
func TestChangeWriterSnapshot(t *testing.T) {
	var w wire.ChangeWriter
	w.Reset(make([]byte, 200), 4, 1<<16)
	w.Append(1, ops.Update, 0, 0, []byte{1}, []byte{2})
	w.Append(1, ops.Update, 1<<16|1, 4, []byte{2}, []byte{3})
	w.Append(1, ops.Delete, 5, 2, []byte{3}, nil)
	h := wire.Header{Kind: wire.KindSnapshot, Node: 4, Seq: wire.SyncSeq(1, 1)}
	got, err := decodeAll(w.Finish(h), sizes{1: {1, 1}})
	h.Count = 3
	want := []change{
		{1, ops.Update, 0, 0, []byte{1}, []byte{2}, wire.Fragment{}},
		{1, ops.Update, 1<<16 | 1, 4, []byte{2}, []byte{3}, wire.Fragment{}},
		{1, ops.Delete, 5, 2, []byte{3}, nil, wire.Fragment{}},
	}
	if err != nil || got.h != h || got.base != 1<<16 || !reflect.DeepEqual(got.changes, want) {
		t.Fatalf("snapshot = %+v, %v; want header %+v and records %+v", got, err, h, want)
	}
	// 1 + 12 + 1 + 1, 1 + 1 + 1 + 1 and 1 + 12 + 1 bytes.
	if w.Len() != wire.HeaderSize+wire.StampBaseSize+wire.SectionHeaderSize+15+4+14 {
		t.Errorf("snapshot is %d bytes", w.Len())
	}
}
