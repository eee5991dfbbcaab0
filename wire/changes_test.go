package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"testing"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// change is one record with the map it belongs to.
type change struct {
	fp         uint32
	op         ops.Op
	key, value []byte
}

// sizes gives the key and value size of each map a test decodes.
type sizes map[uint32][2]int

func sizesOf(ds ...wire.Descriptor) sizes {
	s := sizes{}
	for _, d := range ds {
		s[d.Fingerprint()] = [2]int{int(d.KeySize), int(d.ValueSize)}
	}
	return s
}

// pattern returns n bytes that differ between seeds, so misplaced bytes
// show up in comparisons.
func pattern(n int, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seed*131 + i*7 + 1)
	}
	return b
}

// decodeAll decodes a whole changes datagram: its header, its records and
// the record count of each section. Sections of maps not in known are
// skipped as a receiver would skip them.
func decodeAll(d []byte, known sizes) (wire.Header, []change, []int, error) {
	var h wire.Header
	if err := h.Unmarshal(d); err != nil {
		return h, nil, nil, err
	}
	if h.Kind != wire.KindChanges {
		return h, nil, nil, fmt.Errorf("kind %d, want changes", h.Kind)
	}
	var (
		changes  []change
		sections []int
		secs     wire.Sections
		recs     wire.Records
	)
	secs.Reset(d[wire.HeaderSize:], h.Count)
	for {
		sec, err := secs.Next()
		if err == io.EOF {
			return h, changes, sections, nil
		}
		if err != nil {
			return h, nil, nil, err
		}
		sections = append(sections, int(sec.Count))
		size, ok := known[sec.Map]
		if !ok {
			continue
		}
		recs.Reset(sec, size[0], size[1])
		for {
			r, err := recs.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return h, nil, nil, err
			}
			changes = append(changes, change{sec.Map, r.Op, r.Key, r.Value})
		}
	}
}

// encodeAll appends every change to a datagram of size bytes and fails
// the test if one does not fit.
func encodeAll(t testing.TB, size int, h wire.Header, changes []change) []byte {
	t.Helper()
	var w wire.ChangeWriter
	w.Reset(make([]byte, size))
	for i, c := range changes {
		if !w.Append(c.fp, c.op, c.key, c.value) {
			t.Fatalf("Append of change %d (key %d, value %d bytes) to a %d-byte datagram holding %d: does not fit",
				i, len(c.key), len(c.value), size, w.Len())
		}
	}
	if w.Count() != len(changes) {
		t.Fatalf("Count() = %d after %d appends", w.Count(), len(changes))
	}
	return w.Finish(h)
}

func TestChangesRoundTrip(t *testing.T) {
	small := wire.Descriptor{Name: "small", Type: 1, KeySize: 4, ValueSize: 8, MaxEntries: 16}
	odd := wire.Descriptor{Name: "odd", Type: 1, KeySize: 13, ValueSize: 37, MaxEntries: 16}
	big := wire.Descriptor{Name: "big", Type: 1, KeySize: 512, ValueSize: 4096, MaxEntries: 16}
	known := sizesOf(small, odd, big)
	// gen makes n changes of d, updates unless every del-th is a delete.
	gen := func(d wire.Descriptor, n, del, seed int) []change {
		var cs []change
		for i := range n {
			c := change{d.Fingerprint(), ops.Update, pattern(int(d.KeySize), seed+i), pattern(int(d.ValueSize), seed+i+1000)}
			if del > 0 && i%del == del-1 {
				c.op, c.value = ops.Delete, nil
			}
			cs = append(cs, c)
		}
		return cs
	}
	cat := func(parts ...[]change) []change {
		var cs []change
		for _, p := range parts {
			cs = append(cs, p...)
		}
		return cs
	}
	tests := []struct {
		name     string
		size     int
		changes  []change
		sections []int
	}{
		{"no records", 1400, nil, nil},
		{"4/8 one update", 1400, gen(small, 1, 0, 1), []int{1}},
		{"4/8 one delete", 1400, gen(small, 1, 1, 2), []int{1}},
		{"4/8 mixed ops", 1400, gen(small, 20, 3, 3), []int{20}},
		{"13/37 mixed ops", 1400, gen(odd, 25, 2, 4), []int{25}},
		{"13/37 deletes only", 1400, gen(odd, 50, 1, 5), []int{50}},
		{"512/4096 updates", 64 << 10, gen(big, 14, 0, 6), []int{14}},
		// 16 records make 57360 bytes, the 18th would pass 65535.
		{"512/4096 mixed, two sections", 128 << 10, gen(big, 20, 4, 7), []int{17, 3}},
		{"several sections", 1400, cat(gen(small, 3, 2, 8), gen(odd, 2, 0, 9), gen(small, 1, 0, 10)), []int{3, 2, 1}},
		{"every size", 64 << 10, cat(gen(big, 2, 2, 11), gen(small, 5, 2, 12), gen(odd, 4, 3, 13), gen(big, 1, 0, 14)), []int{2, 5, 4, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := wire.Header{Kind: wire.KindAnnounce, Count: 999, Node: 3, Epoch: 4, Seq: 5}
			d := encodeAll(t, tt.size, in, tt.changes)
			h, got, sections, err := decodeAll(d, known)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			want := wire.Header{Kind: wire.KindChanges, Count: uint16(len(tt.changes)), Node: 3, Epoch: 4, Seq: 5}
			if h != want {
				t.Errorf("header = %+v, want %+v", h, want)
			}
			if !reflect.DeepEqual(sections, tt.sections) {
				t.Errorf("section record counts = %v, want %v", sections, tt.sections)
			}
			if len(got) != len(tt.changes) {
				t.Fatalf("decoded %d records, want %d", len(got), len(tt.changes))
			}
			for i := range got {
				if !reflect.DeepEqual(got[i], tt.changes[i]) {
					t.Errorf("record %d = %+v, want %+v", i, got[i], tt.changes[i])
				}
			}
		})
	}
}

// TestChangeWriterFull checks that Append refuses exactly what does not
// fit and leaves the buffer untouched when it does.
func TestChangeWriterFull(t *testing.T) {
	const a, b = 0xaaaaaaaa, 0xbbbbbbbb
	key, value := pattern(4, 1), pattern(8, 2)
	update := 1 + len(key) + len(value) // 13
	del := 1 + len(key)                 // 5
	first := wire.HeaderSize + wire.SectionHeaderSize + update

	type step struct {
		fp uint32
		op ops.Op
		ok bool
	}
	tests := []struct {
		name  string
		size  int
		steps []step
	}{
		{"exact fit", first, []step{{a, ops.Update, true}, {a, ops.Delete, false}}},
		{"one byte short", first - 1, []step{{a, ops.Update, false}, {a, ops.Delete, true}, {a, ops.Delete, true}, {a, ops.Delete, false}}},
		{"same section exact fit", first + update, []step{{a, ops.Update, true}, {a, ops.Update, true}, {a, ops.Delete, false}}},
		{"new section one byte short", first + wire.SectionHeaderSize + del - 1, []step{{a, ops.Update, true}, {b, ops.Delete, false}, {a, ops.Delete, true}}},
		{"new section exact fit", first + wire.SectionHeaderSize + del, []step{{a, ops.Update, true}, {b, ops.Delete, true}, {b, ops.Delete, false}}},
		{"header only", wire.HeaderSize, []step{{a, ops.Delete, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := bytes.Repeat([]byte{0xee}, tt.size+16)
			var w wire.ChangeWriter
			w.Reset(buf[:tt.size])
			var want []change
			for i, s := range tt.steps {
				c := change{s.fp, s.op, key, value}
				if s.op == ops.Delete {
					c.value = nil
				}
				before := append([]byte(nil), buf...)
				n, count := w.Len(), w.Count()
				if ok := w.Append(c.fp, c.op, c.key, c.value); ok != s.ok {
					t.Fatalf("step %d: Append = %v at %d of %d bytes, want %v", i, ok, n, tt.size, s.ok)
				}
				if !s.ok {
					if w.Len() != n || w.Count() != count || !bytes.Equal(buf, before) {
						t.Fatalf("step %d: refused Append changed the writer or its buffer", i)
					}
					continue
				}
				want = append(want, c)
			}
			d := w.Finish(wire.Header{Seq: 1})
			if !bytes.Equal(buf[tt.size:], bytes.Repeat([]byte{0xee}, 16)) {
				t.Error("the writer wrote past the end of its buffer")
			}
			_, got, _, err := decodeAll(d, sizes{a: {4, 8}, b: {4, 8}})
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if len(got) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got, want)) {
				t.Errorf("decoded %+v, want %+v", got, want)
			}
		})
	}
}

func TestChangeWriterEmpty(t *testing.T) {
	var w wire.ChangeWriter
	w.Reset(make([]byte, 100))
	d := w.Finish(wire.Header{Node: 1, Epoch: 2, Seq: 3})
	if len(d) != wire.HeaderSize || w.Len() != wire.HeaderSize || w.Count() != 0 {
		t.Fatalf("empty datagram is %d bytes (Len %d, Count %d), want a bare header", len(d), w.Len(), w.Count())
	}
	h, got, sections, err := decodeAll(d, nil)
	if err != nil || len(got) != 0 || len(sections) != 0 || h.Count != 0 {
		t.Fatalf("decode of an empty datagram = %+v, %v, %v, %v", h, got, sections, err)
	}
}

// TestChangeWriterMisuse checks the writer's answers to mistakes of its
// caller rather than of the network.
func TestChangeWriterMisuse(t *testing.T) {
	var w wire.ChangeWriter
	if w.Append(1, ops.Delete, []byte{1}, nil) {
		t.Error("Append on a writer without a buffer succeeded")
	}
	w.Reset(make([]byte, 1<<17))
	if w.Append(1, ops.Update, make([]byte, 1<<15), make([]byte, 1<<15)) {
		t.Error("Append of a record longer than a section can hold succeeded")
	}
	if !w.Append(1, ops.Update, make([]byte, 1<<15), make([]byte, 1<<15-2)) {
		t.Error("Append of a record exactly as long as a section can hold failed")
	}
	mustPanic(t, "Append with op 3", func() { w.Append(1, 3, []byte{1}, nil) })
	var h wire.Header
	if err := h.Unmarshal(w.Finish(wire.Header{Kind: wire.KindAnnounce, Flags: wire.FlagRetransmit, Seq: 1})); err != nil || h.Flags != wire.FlagRetransmit {
		t.Errorf("Finish with FlagRetransmit wrote %+v, %v", h, err)
	}
	mustPanic(t, "Finish with FlagReady", func() { w.Finish(wire.Header{Flags: wire.FlagReady}) })
	mustPanic(t, "Finish of a snapshot with FlagRetransmit", func() {
		w.Finish(wire.Header{Kind: wire.KindSnapshot, Flags: wire.FlagRetransmit})
	})
	mustPanic(t, "Reset with a short buffer", func() { w.Reset(make([]byte, wire.HeaderSize-1)) })
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
}

// TestSectionSplit checks where the writer opens new sections of the same
// map: when the 16-bit section length would overflow.
func TestSectionSplit(t *testing.T) {
	tests := []struct {
		name     string
		key      int
		value    int
		n        int
		sections []int
	}{
		// 13107 deletes of 4-byte keys are exactly 65535 bytes.
		{"5-byte records", 4, 0, 13107*2 + 1, []int{13107, 13107, 1}},
		// 655 updates make 65500 bytes; the 656th would pass 65535.
		{"100-byte records", 3, 96, 656, []int{655, 1}},
		// 21845 3-byte records fill a section exactly, and three sections
		// hold the 65535 records the header can count.
		{"record count limit", 2, 0, 65535, []int{21845, 21845, 21845}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := ops.Delete
			if tt.value > 0 {
				op = ops.Update
			}
			var w wire.ChangeWriter
			w.Reset(make([]byte, 4<<20))
			key, value := make([]byte, tt.key), make([]byte, tt.value)
			for i := range tt.n {
				binary.BigEndian.PutUint16(key, uint16(i))
				if !w.Append(7, op, key, value) {
					t.Fatalf("Append %d failed with %d bytes used", i, w.Len())
				}
			}
			if tt.n == 65535 && w.Append(7, op, key, value) {
				t.Fatal("Append of a 65536th record succeeded")
			}
			_, got, sections, err := decodeAll(w.Finish(wire.Header{}), sizes{7: {tt.key, tt.value}})
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(sections, tt.sections) {
				t.Errorf("section record counts = %v, want %v", sections, tt.sections)
			}
			for i, c := range got {
				if binary.BigEndian.Uint16(c.key) != uint16(i) {
					t.Fatalf("record %d has key %x: records out of order", i, c.key)
				}
			}
		})
	}
}

// validChanges is a datagram with a section of map 1 (4-byte keys, 8-byte
// values) and one of map 2 (2-byte keys and values), for the error tests
// to corrupt. The constants below are the offsets of its parts.
func validChanges(t testing.TB) []byte {
	return encodeAll(t, 1400, wire.Header{Node: 1, Seq: 1}, []change{
		{1, ops.Update, []byte{10, 0, 0, 2}, []byte{0, 0, 0, 0, 0, 0, 0, 5}},
		{1, ops.Delete, []byte{10, 0, 0, 3}, nil},
		{2, ops.Update, []byte{0, 7}, []byte{0x1f, 0x90}},
	})
}

const (
	sec1        = wire.HeaderSize               // first section header
	sec1Records = sec1 + wire.SectionHeaderSize // 1+4+8 then 1+4 bytes
	sec2        = sec1Records + 13 + 5          // second section header
	sec2Records = sec2 + wire.SectionHeaderSize // 1+2+2 bytes
	validLen    = sec2Records + 5
)

var validSizes = sizes{1: {4, 8}, 2: {2, 2}}

func TestChangesDecodeErrors(t *testing.T) {
	valid := validChanges(t)
	if len(valid) != validLen {
		t.Fatalf("valid datagram is %d bytes, want %d", len(valid), validLen)
	}
	// edit returns a copy of valid changed by f.
	edit := func(f func(b []byte) []byte) []byte {
		return f(append([]byte(nil), valid...))
	}
	put16 := func(off int, v uint16) []byte {
		return edit(func(b []byte) []byte { binary.BigEndian.PutUint16(b[off:], v); return b })
	}
	tests := []struct {
		name  string
		d     []byte
		known sizes
		want  error
	}{
		{"header count too high", put16(6, 4), validSizes, wire.ErrBadCount},
		{"header count too low", put16(6, 2), validSizes, wire.ErrBadCount},
		{"header count 0", put16(6, 0), validSizes, wire.ErrBadCount},
		{"section count 0", put16(sec2+4, 0), validSizes, wire.ErrBadCount},
		{"section count past header count", put16(sec1+4, 4), validSizes, wire.ErrBadCount},
		{"section length past the end", put16(sec2+6, 6), validSizes, wire.ErrShortBuffer},
		{"section length 65535", put16(sec1+6, 0xffff), validSizes, wire.ErrShortBuffer},
		{"section header cut", valid[:sec2+7], validSizes, wire.ErrShortBuffer},
		{"body ends before the count", valid[:sec2], validSizes, wire.ErrBadCount},
		{"trailing byte", append(valid[:validLen:validLen], 0), validSizes, wire.ErrBadCount},
		{"trailing section", append(valid[:validLen:validLen], 0, 0, 0, 2, 0, 1, 0, 5), validSizes, wire.ErrBadCount},
		{"op 0", edit(func(b []byte) []byte { b[sec1Records] = 0; return b }), validSizes, wire.ErrBadOp},
		{"op 3", edit(func(b []byte) []byte { b[sec1Records+13] = 3; return b }), validSizes, wire.ErrBadOp},
		{"op 255", edit(func(b []byte) []byte { b[sec2Records] = 255; return b }), validSizes, wire.ErrBadOp},
		// Records carry no length of their own: a wrong op or size shifts
		// the next record, whose op is then a value byte, here 0.
		{"update turned delete", edit(func(b []byte) []byte { b[sec1Records] = 2; return b }), validSizes, wire.ErrBadOp},
		{"delete turned update", edit(func(b []byte) []byte { b[sec1Records+13] = 1; return b }), validSizes, wire.ErrBadLength},
		{"section count 1 leaves bytes", edit(func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[sec1+4:], 1)
			binary.BigEndian.PutUint16(b[6:], 2)
			return b
		}), validSizes, wire.ErrBadLength},
		{"value size larger than sent, shifted", valid, sizes{1: {4, 10}, 2: {2, 2}}, wire.ErrBadOp},
		{"key size larger than sent", valid, sizes{1: {4, 8}, 2: {3, 2}}, wire.ErrBadLength},
		{"key size smaller than sent", valid, sizes{1: {4, 8}, 2: {1, 2}}, wire.ErrBadLength},
		{"value size larger than sent", valid, sizes{1: {4, 8}, 2: {2, 3}}, wire.ErrBadLength},
		{"value size smaller than sent", valid, sizes{1: {4, 8}, 2: {2, 1}}, wire.ErrBadLength},
		{"bad magic", put16(0, 0x7570), validSizes, wire.ErrBadMagic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, _, err := decodeAll(tt.d, tt.known); !errors.Is(err, tt.want) {
				t.Errorf("decode: %v, want %v", err, tt.want)
			}
		})
	}
}

// TestChangesTruncated checks that no prefix of a valid datagram decodes,
// whatever the receiver knows of its maps.
func TestChangesTruncated(t *testing.T) {
	valid := validChanges(t)
	for _, known := range []sizes{validSizes, nil} {
		for n := range len(valid) {
			if _, _, _, err := decodeAll(valid[:n], known); err == nil {
				t.Errorf("the first %d of %d bytes decode (known maps %v)", n, len(valid), known)
			}
		}
	}
}

// TestIteratorsStickyErrors checks that the iterators keep failing after an
// error, so a caller that loops on Next cannot read past bad input.
func TestIteratorsStickyErrors(t *testing.T) {
	valid := validChanges(t)
	var secs wire.Sections
	secs.Reset(valid[wire.HeaderSize:sec2+3], 3)
	if _, err := secs.Next(); err != nil {
		t.Fatalf("first section: %v", err)
	}
	for range 3 {
		if sec, err := secs.Next(); !errors.Is(err, wire.ErrShortBuffer) || sec.Data != nil {
			t.Fatalf("Sections.Next after a cut = %+v, %v; want ErrShortBuffer again", sec, err)
		}
	}
	secs.Reset(valid[wire.HeaderSize:], 3)
	sec, err := secs.Next()
	if err != nil {
		t.Fatal(err)
	}
	bad := sec
	bad.Data = append([]byte(nil), sec.Data...)
	bad.Data[0] = 9
	var recs wire.Records
	recs.Reset(bad, 4, 8)
	for range 3 {
		if r, err := recs.Next(); !errors.Is(err, wire.ErrBadOp) || r.Key != nil {
			t.Fatalf("Records.Next after a bad op = %+v, %v; want ErrBadOp again", r, err)
		}
	}
	recs.Reset(sec, 4, 8)
	for range 2 {
		if _, err := recs.Next(); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := recs.Next(); err != io.EOF {
			t.Fatalf("Records.Next at the end: %v, want io.EOF", err)
		}
	}
}

// TestDecodedSlicesAlias checks that records point into the datagram with
// their capacity capped, so appending to a key cannot overwrite the value.
func TestDecodedSlicesAlias(t *testing.T) {
	valid := validChanges(t)
	var secs wire.Sections
	secs.Reset(valid[wire.HeaderSize:], 3)
	sec, _ := secs.Next()
	var recs wire.Records
	recs.Reset(sec, 4, 8)
	r, err := recs.Next()
	if err != nil {
		t.Fatal(err)
	}
	if &r.Key[0] != &valid[sec1Records+1] || &r.Value[0] != &valid[sec1Records+5] {
		t.Error("record slices do not alias the datagram")
	}
	if cap(r.Key) != 4 || cap(r.Value) != 8 || cap(sec.Data) != 18 {
		t.Errorf("capacities key %d value %d section %d, want 4, 8, 18", cap(r.Key), cap(r.Value), cap(sec.Data))
	}
	if r, _ = recs.Next(); r.Op != ops.Delete || r.Value != nil {
		t.Errorf("delete record = %+v, want a nil value", r)
	}
}

// The benchmark and allocation datagrams: records of 16-byte keys and
// 64-byte values filling 1400 bytes, the payload of a typical path.
const (
	benchPayload = 1400
	benchKey     = 16
	benchValue   = 64
	benchFP      = 0x01020304
)

var (
	benchKeys   = pattern(benchKey, 1)
	benchValues = pattern(benchValue, 2)
)

// fill appends as many benchmark updates as fit.
func fill(w *wire.ChangeWriter) {
	for w.Append(benchFP, ops.Update, benchKeys, benchValues) {
	}
}

// decodeCount decodes a datagram of benchmark records the way a receiver
// does and returns how many records it held.
func decodeCount(d []byte, secs *wire.Sections, recs *wire.Records) (int, error) {
	var h wire.Header
	if err := h.Unmarshal(d); err != nil {
		return 0, err
	}
	n := 0
	secs.Reset(d[wire.HeaderSize:], h.Count)
	for {
		sec, err := secs.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		recs.Reset(sec, benchKey, benchValue)
		for {
			_, err := recs.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return n, err
			}
			n++
		}
	}
}

func TestChangesAllocs(t *testing.T) {
	buf := make([]byte, benchPayload)
	var w wire.ChangeWriter
	h := wire.Header{Node: 1, Epoch: 2, Seq: 3}
	allocs := testing.AllocsPerRun(100, func() {
		w.Reset(buf)
		fill(&w)
		w.Finish(h)
	})
	if allocs != 0 {
		t.Errorf("encoding a full datagram: %v allocations, want 0", allocs)
	}
	if w.Count() < 10 {
		t.Fatalf("the datagram holds only %d records", w.Count())
	}
	d := w.Finish(h)
	var (
		secs wire.Sections
		recs wire.Records
		n    int
		err  error
	)
	allocs = testing.AllocsPerRun(100, func() {
		n, err = decodeCount(d, &secs, &recs)
	})
	if err != nil || n != w.Count() {
		t.Fatalf("decoded %d records, %v; want %d", n, err, w.Count())
	}
	if allocs != 0 {
		t.Errorf("decoding a full datagram: %v allocations, want 0", allocs)
	}
}

func BenchmarkEncode(b *testing.B) {
	buf := make([]byte, benchPayload)
	var w wire.ChangeWriter
	h := wire.Header{Node: 1, Epoch: 2}
	w.Reset(buf)
	fill(&w)
	b.SetBytes(int64(w.Len()))
	b.ReportAllocs()
	for b.Loop() {
		w.Reset(buf)
		fill(&w)
		h.Seq++
		w.Finish(h)
	}
}

func BenchmarkDecode(b *testing.B) {
	var w wire.ChangeWriter
	w.Reset(make([]byte, benchPayload))
	fill(&w)
	d := w.Finish(wire.Header{Node: 1, Epoch: 2, Seq: 3})
	var (
		secs wire.Sections
		recs wire.Records
	)
	b.SetBytes(int64(len(d)))
	b.ReportAllocs()
	for b.Loop() {
		if n, err := decodeCount(d, &secs, &recs); err != nil || n != w.Count() {
			b.Fatalf("decoded %d records, %v; want %d", n, err, w.Count())
		}
	}
}
