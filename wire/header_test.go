package wire_test

import (
	"errors"
	"testing"

	"github.com/udpmapsync/udpmapsync/wire"
)

func TestHeaderRoundTrip(t *testing.T) {
	for _, h := range []wire.Header{
		{Kind: wire.KindChanges},
		{Kind: wire.KindChanges, Count: 0xffff, Node: 0xffffffff, Epoch: 1<<64 - 1, Seq: 1<<64 - 1},
		{Kind: wire.KindAnnounce, Count: 3, Node: 0x0a000001, Epoch: 1700000000, Seq: 42},
	} {
		b := make([]byte, wire.HeaderSize+3)
		n, err := h.MarshalTo(b)
		if err != nil || n != wire.HeaderSize {
			t.Fatalf("MarshalTo(%+v) = %d, %v; want %d, nil", h, n, err, wire.HeaderSize)
		}
		var got wire.Header
		if err := got.Unmarshal(b); err != nil {
			t.Fatalf("Unmarshal(MarshalTo(%+v)): %v", h, err)
		}
		if got != h {
			t.Errorf("round trip: got %+v, want %+v", got, h)
		}
	}
}

func TestHeaderMarshalShortBuffer(t *testing.T) {
	h := wire.Header{Kind: wire.KindChanges, Seq: 1}
	b := make([]byte, wire.HeaderSize-1)
	if n, err := h.MarshalTo(b); n != 0 || !errors.Is(err, wire.ErrShortBuffer) {
		t.Fatalf("MarshalTo into %d bytes = %d, %v; want 0, ErrShortBuffer", len(b), n, err)
	}
	for i, c := range b {
		if c != 0 {
			t.Fatalf("MarshalTo wrote byte %d of a buffer that is too short", i)
		}
	}
}

func TestHeaderUnmarshalErrors(t *testing.T) {
	valid := make([]byte, wire.HeaderSize)
	h := wire.Header{Kind: wire.KindAnnounce, Count: 1, Node: 7, Epoch: 8, Seq: 9}
	if _, err := h.MarshalTo(valid); err != nil {
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
		{"version 2", with(2, 2), wire.ErrBadVersion},
		{"kind 0", with(3, 0), wire.ErrBadKind},
		{"kind 10", with(3, 10), wire.ErrBadKind},
		{"retransmit flag on an announce", with(4, wire.FlagRetransmit), wire.ErrBadFlags},
		{"kind 255", with(3, 255), wire.ErrBadKind},
		{"flags", with(4, 0x80), wire.ErrBadFlags},
		{"seal", with(5, 32), wire.ErrBadSeal},
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

func TestHeaderAllocs(t *testing.T) {
	b := make([]byte, wire.HeaderSize)
	h := wire.Header{Kind: wire.KindChanges, Count: 5, Node: 1, Epoch: 2, Seq: 3}
	var got wire.Header
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := h.MarshalTo(b); err != nil {
			t.Fatal(err)
		}
		if err := got.Unmarshal(b); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("header marshal and unmarshal: %v allocations, want 0", allocs)
	}
}
