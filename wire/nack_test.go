package wire_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/udpmapsync/udpmapsync/wire"
)

func nackOf(node uint32, epoch uint64, ranges ...wire.Range) wire.Nack {
	n := wire.Nack{Node: node, Epoch: epoch, N: len(ranges)}
	copy(n.Ranges[:], ranges)
	return n
}

func TestNackRoundTrip(t *testing.T) {
	want := nackOf(0x0a000001, 1700000000, wire.Range{First: 3, Last: 3}, wire.Range{First: 5, Last: 9})
	b, err := want.AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != wire.NackFixedSize+2*wire.NackRangeSize {
		t.Fatalf("encoded %d bytes, want %d", len(b), wire.NackFixedSize+2*wire.NackRangeSize)
	}
	var got wire.Nack
	if err := got.Unmarshal(b, 2); err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
}

func TestNackAdd(t *testing.T) {
	var n wire.Nack
	n.Add(2, 4)
	n.Add(5, 7) // touches: merged
	n.Add(9, 9)
	if want := nackOf(0, 0, wire.Range{First: 2, Last: 7}, wire.Range{First: 9, Last: 9}); n != want {
		t.Fatalf("got %+v, want %+v", n, want)
	}
	for i := range wire.MaxNackRanges - 2 {
		if !n.Add(uint64(20+2*i), uint64(20+2*i)) {
			t.Fatalf("range %d refused before the Nack is full", i+3)
		}
	}
	if n.Add(1000, 1000) {
		t.Errorf("range accepted past MaxNackRanges")
	}
	if !n.Add(uint64(20+2*(wire.MaxNackRanges-3)+1), 500) {
		t.Errorf("a range touching the last one was refused although it merges")
	}
}

func TestNackErrors(t *testing.T) {
	src := nackOf(1, 2, wire.Range{First: 1, Last: 1}, wire.Range{First: 3, Last: 4})
	valid, err := src.AppendTo(nil)
	if err != nil {
		t.Fatal(err)
	}
	with := func(off int, v byte) []byte {
		b := append([]byte(nil), valid...)
		b[off] = v
		return b
	}
	const r1 = wire.NackFixedSize + wire.NackRangeSize // second range
	tests := []struct {
		name  string
		b     []byte
		count uint16
		want  error
	}{
		{"empty", nil, 2, wire.ErrShortBuffer},
		{"fixed part cut", valid[:wire.NackFixedSize-1], 2, wire.ErrShortBuffer},
		{"range cut", valid[:len(valid)-1], 2, wire.ErrShortBuffer},
		{"trailing byte", append(append([]byte(nil), valid...), 0), 2, wire.ErrBadLength},
		{"header count differs", valid, 3, wire.ErrBadCount},
		{"no ranges", with(12, 0)[:wire.NackFixedSize], 0, wire.ErrBadCount},
		{"too many ranges", with(12, wire.MaxNackRanges+1), wire.MaxNackRanges + 1, wire.ErrBadCount},
		{"first is 0", with(wire.NackFixedSize+7, 0), 2, wire.ErrBadRange},
		{"last before first", with(r1+15, 2), 2, wire.ErrBadRange},
		{"overlaps previous", with(r1+7, 1), 2, wire.ErrBadRange},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := wire.Nack{Node: 99}
			if err := got.Unmarshal(tt.b, tt.count); !errors.Is(err, tt.want) {
				t.Fatalf("Unmarshal: %v, want %v", err, tt.want)
			}
			if got != (wire.Nack{Node: 99}) {
				t.Errorf("Unmarshal changed the Nack on error: %+v", got)
			}
		})
	}
	for _, tc := range []struct {
		name string
		n    wire.Nack
		want error
	}{
		{"no ranges", nackOf(1, 2), wire.ErrBadCount},
		{"last before first", nackOf(1, 2, wire.Range{First: 4, Last: 3}), wire.ErrBadRange},
		{"first is 0", nackOf(1, 2, wire.Range{First: 0, Last: 3}), wire.ErrBadRange},
		{"overlaps previous", nackOf(1, 2, wire.Range{First: 1, Last: 3}, wire.Range{First: 3, Last: 4}), wire.ErrBadRange},
		{"past MaxSeq", nackOf(1, 2, wire.Range{First: 1, Last: wire.MaxSeq + 1}), wire.ErrBadRange},
		{"all past MaxSeq", nackOf(1, 2, wire.Range{First: wire.MaxSeq + 1, Last: 1<<64 - 1}), wire.ErrBadRange},
	} {
		if b, err := tc.n.AppendTo([]byte{7}); !errors.Is(err, tc.want) || len(b) != 1 {
			t.Errorf("%s: AppendTo = %x, %v; want nothing appended, %v", tc.name, b, err, tc.want)
		}
	}
}

// TestNackMaxSeq checks the bound on ranges: up to MaxSeq, not past it.
func TestNackMaxSeq(t *testing.T) {
	ok := nackOf(1, 2, wire.Range{First: 5, Last: 9}, wire.Range{First: wire.MaxSeq, Last: wire.MaxSeq})
	b, err := ok.AppendTo(nil)
	if err != nil {
		t.Fatalf("AppendTo of a range ending at MaxSeq: %v", err)
	}
	var got wire.Nack
	if err := got.Unmarshal(b, 2); err != nil || got != ok {
		t.Fatalf("Unmarshal(AppendTo(%+v)) = %+v, %v", ok, got, err)
	}
	for _, last := range []uint64{wire.MaxSeq + 1, 1<<64 - 1} {
		past := append([]byte(nil), b...)
		binary.BigEndian.PutUint64(past[len(past)-8:], last)
		got := wire.Nack{Node: 99}
		if err := got.Unmarshal(past, 2); !errors.Is(err, wire.ErrBadRange) || got != (wire.Nack{Node: 99}) {
			t.Errorf("Unmarshal of a range ending at %#x = %+v, %v; want unchanged, ErrBadRange", last, got, err)
		}
	}
}

func TestNackAllocs(t *testing.T) {
	n := nackOf(1, 2, wire.Range{First: 1, Last: 10}, wire.Range{First: 12, Last: 40})
	buf := make([]byte, 0, 512)
	var got wire.Nack
	allocs := testing.AllocsPerRun(100, func() {
		b, err := n.AppendTo(buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := got.Unmarshal(b, uint16(n.N)); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("nack encode and decode: %v allocations, want 0", allocs)
	}
}
