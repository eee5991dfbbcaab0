package wire_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/udpmapsync/udpmapsync/wire"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []wire.Header{
		{Kind: wire.KindChanges},
		{Kind: wire.KindChanges, Flags: wire.FlagRetransmit, Count: 0xffff, Node: 0xffffffff, Epoch: 1<<64 - 1, Seq: 1<<64 - 1},
		{Kind: wire.KindAnnounce, Flags: wire.FlagReady, Count: 3, Node: 0x0a000001, Epoch: 1700000000, Seq: 42},
		{Kind: wire.KindSyncAck, Count: 2, Seq: wire.SyncSeq(0xffffffff, 7)},
		{Sealed: true, Kind: wire.KindNack, Count: 1, Node: 9, Epoch: 3, Seq: 0},
	} {
		prefix := []byte{0xaa, 0xbb}
		b, err := h.AppendTo(prefix)
		if err != nil || len(b) != len(prefix)+wire.HeaderSize || !bytes.Equal(b[:2], prefix) {
			t.Fatalf("AppendTo(%x) of %+v = %x, %v; want the prefix and %d bytes", prefix, h, b, err, wire.HeaderSize)
		}
		var got wire.Header
		if err := got.Unmarshal(b[len(prefix):]); err != nil {
			t.Fatalf("Unmarshal(AppendTo(%+v)): %v", h, err)
		}
		if got != h {
			t.Errorf("round trip: got %+v, want %+v", got, h)
		}
	}
}

// TestHeaderAppendToInPlace checks the idiom of the doc comment: a header
// appended to d[:0] overwrites the start of d and nothing else.
func TestHeaderAppendToInPlace(t *testing.T) {
	d := bytes.Repeat([]byte{0xee}, wire.HeaderSize+5)
	h := wire.Header{Kind: wire.KindChanges, Count: 1, Node: 2, Epoch: 3, Seq: 4}
	b, err := h.AppendTo(d[:0])
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != wire.HeaderSize || &b[0] != &d[0] {
		t.Fatalf("AppendTo(d[:0]) returned %d bytes at a new address, want d's first %d", len(b), wire.HeaderSize)
	}
	if !bytes.Equal(d[wire.HeaderSize:], bytes.Repeat([]byte{0xee}, 5)) {
		t.Errorf("AppendTo(d[:0]) wrote past the header: % x", d[wire.HeaderSize:])
	}
	var got wire.Header
	if err := got.Unmarshal(d); err != nil || got != h {
		t.Errorf("header written in place decodes as %+v, %v; want %+v", got, err, h)
	}
}

// TestHeaderAppendToRefusesWhatUnmarshalRefuses checks every kind and
// flags byte: AppendTo writes a header exactly when Unmarshal takes it
// back, and returns Unmarshal's error otherwise.
func TestHeaderAppendToRefusesWhatUnmarshalRefuses(t *testing.T) {
	valid, err := (&wire.Header{Kind: wire.KindChanges, Seq: 1}).AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	for kind := range 256 {
		for flags := range 256 {
			raw := append([]byte(nil), valid...)
			raw[3], raw[4] = byte(kind), byte(flags)
			want := new(wire.Header).Unmarshal(raw)
			h := wire.Header{Kind: wire.Kind(kind), Flags: uint8(flags), Seq: 1}
			b, err := h.AppendTo([]byte{1})
			if !errors.Is(err, want) {
				t.Fatalf("kind %d flags %#x: AppendTo = %v, Unmarshal = %v", kind, flags, err, want)
			}
			switch {
			case err != nil && len(b) != 1:
				t.Fatalf("kind %d flags %#x: AppendTo appended %d bytes with %v", kind, flags, len(b)-1, err)
			case err == nil && !bytes.Equal(b[1:], raw):
				t.Fatalf("kind %d flags %#x: AppendTo = %x, want %x", kind, flags, b[1:], raw)
			}
		}
	}
	for _, tc := range []struct {
		h    wire.Header
		want error
	}{
		{wire.Header{}, wire.ErrBadKind},
		{wire.Header{Kind: 14}, wire.ErrBadKind},
		{wire.Header{Kind: wire.KindChanges, Flags: wire.FlagReady}, wire.ErrBadFlags},
		{wire.Header{Kind: wire.KindAnnounce, Flags: wire.FlagRetransmit}, wire.ErrBadFlags},
		{wire.Header{Kind: wire.KindSnapshot, Flags: wire.FlagRetransmit}, wire.ErrBadFlags},
		{wire.Header{Kind: wire.KindNack, Flags: 0x80}, wire.ErrBadFlags},
	} {
		if _, err := tc.h.AppendTo(nil); !errors.Is(err, tc.want) {
			t.Errorf("AppendTo(%+v) = %v, want %v", tc.h, err, tc.want)
		}
	}
}

func TestHeaderUnmarshalErrors(t *testing.T) {
	h := wire.Header{Kind: wire.KindAnnounce, Count: 1, Node: 7, Epoch: 8, Seq: 9}
	valid, err := h.AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	with := func(off int, v byte) []byte {
		b := append([]byte(nil), valid...)
		b[off] = v
		return b
	}
	tests := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, wire.ErrShortBuffer},
		{"one byte short", valid[:wire.HeaderSize-1], wire.ErrShortBuffer},
		{"magic first byte", with(0, 0x55), wire.ErrBadMagic},
		{"magic second byte", with(1, 0x6e), wire.ErrBadMagic},
		{"version 0", with(2, 0), wire.ErrBadVersion},
		{"version 1", with(2, 1), wire.ErrBadVersion},
		{"version 2, without stamps", with(2, 2), wire.ErrBadVersion},
		{"version 3, without descriptor fields", with(2, 3), wire.ErrBadVersion},
		{"version 4, without fragments", with(2, 4), wire.ErrBadVersion},
		{"version 6", with(2, 6), wire.ErrBadVersion},
		{"kind 0", with(3, 0), wire.ErrBadKind},
		{"kind 14", with(3, 14), wire.ErrBadKind},
		{"retransmit flag on an announce", with(4, wire.FlagRetransmit), wire.ErrBadFlags},
		{"kind 255", with(3, 255), wire.ErrBadKind},
		{"flags", with(4, 0x80), wire.ErrBadFlags},
		{"seal", with(5, 32), wire.ErrBadSeal},
		{"seal one short", with(5, wire.SealSize-1), wire.ErrBadSeal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := wire.Header{Node: 1234}
			if err := got.Unmarshal(tt.b); !errors.Is(err, tt.want) {
				t.Fatalf("Unmarshal: %v, want %v", err, tt.want)
			}
			if got != (wire.Header{Node: 1234}) {
				t.Errorf("Unmarshal changed the header on error: %+v", got)
			}
		})
	}
	// Every shorter prefix fails too.
	for n := range wire.HeaderSize {
		var got wire.Header
		if err := got.Unmarshal(valid[:n]); !errors.Is(err, wire.ErrShortBuffer) {
			t.Errorf("Unmarshal of %d bytes: %v, want ErrShortBuffer", n, err)
		}
	}
}

// TestHeaderSeq checks that Unmarshal takes any sequence number, which the
// sync kinds need, and CheckSeq refuses those no sender of changes and
// announces uses.
func TestHeaderSeq(t *testing.T) {
	for _, tc := range []struct {
		kind wire.Kind
		seq  uint64
		want error
	}{
		{wire.KindChanges, 0, wire.ErrBadSeq},
		{wire.KindChanges, 1, nil},
		{wire.KindChanges, wire.MaxSeq, nil},
		{wire.KindChanges, wire.MaxSeq + 1, wire.ErrBadSeq},
		{wire.KindChanges, 1<<64 - 1, wire.ErrBadSeq},
		{wire.KindAnnounce, 0, nil},
		{wire.KindAnnounce, wire.MaxSeq, nil},
		{wire.KindAnnounce, wire.MaxSeq + 1, wire.ErrBadSeq},
		{wire.KindNack, 0, nil},
		{wire.KindGone, 1<<64 - 1, nil},
		{wire.KindSyncRequest, wire.SyncSeq(0xffffffff, 0), nil},
		{wire.KindSyncStart, 0, nil},
		{wire.KindSnapshot, wire.SyncSeq(0xffffffff, 0xffffffff), nil},
		{wire.KindSyncEnd, wire.SyncSeq(1<<31, 0), nil},
		{wire.KindSyncAck, 1<<64 - 1, nil},
	} {
		h := wire.Header{Kind: tc.kind, Seq: tc.seq}
		b, err := h.AppendTo(nil)
		if err != nil {
			t.Fatalf("AppendTo(%+v): %v", h, err)
		}
		var got wire.Header
		if err := got.Unmarshal(b); err != nil || got != h {
			t.Fatalf("Unmarshal(AppendTo(%+v)) = %+v, %v", h, got, err)
		}
		if err := got.CheckSeq(); err != tc.want {
			t.Errorf("kind %d seq %#x: CheckSeq = %v, want %v", tc.kind, tc.seq, err, tc.want)
		}
	}
	if wire.MaxSeq != 1<<62 {
		t.Errorf("MaxSeq = %#x, want 1<<62", wire.MaxSeq)
	}
}

func TestHeaderAllocs(t *testing.T) {
	b := make([]byte, wire.HeaderSize)
	h := wire.Header{Kind: wire.KindChanges, Count: 5, Node: 1, Epoch: 2, Seq: 3}
	var got wire.Header
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := h.AppendTo(b[:0]); err != nil {
			t.Fatal(err)
		}
		if err := got.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
		if err := got.CheckSeq(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("header encode and decode: %v allocations, want 0", allocs)
	}
}
