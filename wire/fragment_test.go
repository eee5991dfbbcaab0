package wire_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

func TestFragmentRange(t *testing.T) {
	tests := []struct {
		size, index, count int
		lo, hi             int
		ok                 bool
	}{
		{4096, 0, 3, 0, 1366, true},
		{4096, 2, 3, 2732, 4096, true},
		{37, 36, 37, 36, 37, true}, // one byte a chunk
		{37, 0, 25, 0, 0, false},   // chunks of 2: the 25th would start at 48
		{37, 0, 38, 0, 0, false},   // more chunks than bytes
		{10, 0, 1, 0, 0, false},    // one fragment is a whole record
		{10, 0, 0, 0, 0, false},    // no fragments
		{10, 2, 2, 0, 0, false},    // index past the count
		{10, -1, 2, 0, 0, false},   // a negative index
		{1 << 20, 254, 255, 254 * 4113, 1 << 20, true},
		{1 << 20, 0, 256, 0, 0, false}, // over MaxFragments
		{0, 0, 2, 0, 0, false},
	}
	for _, tt := range tests {
		lo, hi, ok := wire.FragmentRange(tt.size, tt.index, tt.count)
		if ok != tt.ok || ok && (lo != tt.lo || hi != tt.hi) {
			t.Errorf("FragmentRange(%d, %d, %d) = %d, %d, %v; want %d, %d, %v",
				tt.size, tt.index, tt.count, lo, hi, ok, tt.lo, tt.hi, tt.ok)
		}
	}
	// Every valid count covers the value with its chunks exactly once.
	for size := 1; size <= 300; size++ {
		for count := 2; count <= wire.MaxFragments; count++ {
			next := 0
			for i := range count {
				lo, hi, ok := wire.FragmentRange(size, i, count)
				if !ok {
					if i != 0 {
						t.Fatalf("FragmentRange(%d, %d, %d) refused after index 0 was taken", size, i, count)
					}
					break
				}
				if lo != next || hi <= lo {
					t.Fatalf("FragmentRange(%d, %d, %d) = [%d, %d), want it to start at %d and hold a byte", size, i, count, lo, hi, next)
				}
				next = hi
			}
			if next != 0 && next != size {
				t.Fatalf("the %d fragments of %d bytes cover %d", count, size, next)
			}
		}
	}
}

func TestFragmentCount(t *testing.T) {
	tests := []struct{ size, room, want int }{
		{4096, 1409, 3},
		{4096, 4096, 2}, // fits, but a fragment is never alone
		{100, 1, 0},     // would take 100 fragments: fine; see below
		{16384, 1000, 17},
		{1 << 20, 1000, 0}, // over MaxFragments
		{4096, 0, 0},
	}
	tests[2].want = 100
	for _, tt := range tests {
		got := wire.FragmentCount(tt.size, tt.room)
		if got != tt.want {
			t.Errorf("FragmentCount(%d, %d) = %d, want %d", tt.size, tt.room, got, tt.want)
		}
		if got > 0 {
			if _, hi, _ := wire.FragmentRange(tt.size, 0, got); hi > tt.room {
				t.Errorf("FragmentCount(%d, %d) = %d: chunks of %d bytes", tt.size, tt.room, got, hi)
			}
		}
	}
}

// TestFragmentsRoundTrip splits 4 KiB and 16 KiB values of maps with the
// largest keys over datagrams of a 1500-byte MTU, a fragment a datagram,
// and puts them together again from the decoded records, in reverse
// order.
func TestFragmentsRoundTrip(t *testing.T) {
	const payload = 1472
	for _, d := range []wire.Descriptor{
		{Name: "big", Type: 1, KeySize: 4, ValueSize: 4096, MaxEntries: 16},
		{Name: "huge", Type: 1, KeySize: 512, ValueSize: 16384, MaxEntries: 16},
	} {
		fp, known := d.Fingerprint(), sizesOf(d)
		key, value := pattern(int(d.KeySize), 1), pattern(int(d.ValueSize), 2)
		count := wire.FragmentCount(len(value), wire.FragmentRoom(payload, len(key)))
		if count == 0 {
			t.Fatalf("%s: no fragment count for a %d-byte payload", d.Name, payload)
		}
		got := make([]byte, len(value))
		for i := count - 1; i >= 0; i-- {
			var w wire.ChangeWriter
			w.Reset(make([]byte, payload), 7, testBase)
			// Relayed: the longest stamp part, which FragmentRoom allows for.
			if !w.AppendFragment(fp, testBase-1, 7, key, value, i, count) {
				t.Fatalf("%s: fragment %d of %d does not fit %d bytes", d.Name, i, count, payload)
			}
			dec, err := decodeAll(w.Finish(wire.Header{Node: 7, Seq: 1}), known)
			if err != nil {
				t.Fatalf("%s: fragment %d: %v", d.Name, i, err)
			}
			c := dec.changes[0]
			if c.op != ops.Update || c.stamp != testBase-1 || c.origin != 7 || !bytes.Equal(c.key, key) ||
				c.frag.Index != i || c.frag.Count != count || c.frag.Size != len(value) {
				t.Fatalf("%s: fragment %d of %d decodes as %+v", d.Name, i, count, c)
			}
			copy(got[c.frag.Offset:], c.value)
		}
		if !bytes.Equal(got, value) {
			t.Errorf("%s: the %d fragments do not put the value together again", d.Name, count)
		}
	}
}

// TestFragmentDecodeErrors edits the index and count of a fragment of a
// 37-byte value, and cuts it, at the ends of their ranges.
func TestFragmentDecodeErrors(t *testing.T) {
	key, value := pattern(13, 1), pattern(37, 2)
	fp, known := fuzzOdd.Fingerprint(), sizesOf(fuzzOdd)
	var w wire.ChangeWriter
	w.Reset(make([]byte, 200), 7, testBase)
	w.AppendFragment(fp, testBase, 7, key, value, 1, 3)
	valid := bytes.Clone(w.Finish(wire.Header{Node: 7, Seq: 1}))
	const at = wire.HeaderSize + wire.StampBaseSize + wire.SectionHeaderSize + 1 + 1 + 13 // index, count
	if _, err := decodeAll(valid, known); err != nil {
		t.Fatalf("valid fragment: %v", err)
	}
	put := func(b ...byte) []byte {
		d := bytes.Clone(valid)
		copy(d[at:], b)
		return d
	}
	tests := []struct {
		name string
		d    []byte
		want error
	}{
		{"index = count", put(3, 3), wire.ErrBadFragment},
		{"index 255 of 255", put(255, 255), wire.ErrBadFragment},
		{"count 0", put(0, 0), wire.ErrBadFragment},
		{"count 1", put(0, 1), wire.ErrBadFragment},
		{"count 38 for 37 bytes", put(1, 38), wire.ErrBadFragment},
		{"count 25: an empty last chunk", put(1, 25), wire.ErrBadFragment},
		{"chunk longer than its count says", put(1, 4), wire.ErrBadLength}, // 10 bytes, 13 sent
		{"chunk shorter than its count says", put(1, 2), wire.ErrBadLength},
		{"cut in the index", valid[:at], wire.ErrShortBuffer},
		{"cut in the chunk", valid[:len(valid)-1], wire.ErrShortBuffer},
	}
	for _, tt := range tests {
		if _, err := decodeAll(tt.d, known); !errors.Is(err, tt.want) {
			t.Errorf("%s: decode: %v, want %v", tt.name, err, tt.want)
		}
	}
}
