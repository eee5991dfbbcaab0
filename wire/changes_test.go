package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// change is one record with the map it belongs to.
type change struct {
	fp         uint32
	op         ops.Op
	stamp      uint64
	origin     uint32
	key, value []byte
	frag       wire.Fragment // places a fragment's chunk (value) in the whole value; Count 0 for a whole record
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

// decoded is a whole changes or snapshot datagram, decoded.
type decoded struct {
	h        wire.Header
	base     uint64
	changes  []change
	sections []int // the record count of each section, known maps or not
}

// decodeAll decodes a whole changes or snapshot datagram. Sections of maps
// not in known are skipped as a receiver would skip them.
func decodeAll(d []byte, known sizes) (decoded, error) {
	var (
		out  decoded
		secs wire.Sections
		recs wire.Records
	)
	if err := out.h.Unmarshal(d); err != nil {
		return out, err
	}
	if out.h.Kind != wire.KindChanges && out.h.Kind != wire.KindSnapshot {
		return out, fmt.Errorf("kind %d, want changes or snapshot", out.h.Kind)
	}
	secs.Reset(d[wire.HeaderSize:], out.h.Count)
	out.base = secs.Base()
	for {
		sec, err := secs.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out.sections = append(out.sections, int(sec.Count))
		size, ok := known[sec.Map]
		if !ok {
			continue
		}
		recs.Reset(sec, size[0], size[1], out.base, out.h.Node)
		for {
			r, err := recs.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return out, err
			}
			out.changes = append(out.changes, change{sec.Map, r.Op, r.Stamp, r.Origin, r.Key, r.Value, r.Fragment})
		}
	}
}

// checkedWriter is a [wire.ChangeWriter] whose every Append is checked
// against what [wire.StampSize] says it costs: a caller that accounts
// bytes with it must land on the writer's length exactly.
type checkedWriter struct {
	w       wire.ChangeWriter
	node    uint32
	base    uint64
	fp      uint32
	open    bool // a section is open
	section int  // record bytes in it
}

func (c *checkedWriter) reset(buf []byte, node uint32, base uint64) {
	*c = checkedWriter{node: node, base: base}
	c.w.Reset(buf, node, base)
}

// append appends ch and fails the test unless the writer grew by exactly
// the record's size, plus a section header if the record opened one, or
// not at all when it refused the record.
func (c *checkedWriter) append(t testing.TB, ch change) bool {
	t.Helper()
	size := 1 + wire.StampSize(c.node, ch.origin, c.base, ch.stamp) + len(ch.key)
	if ch.op == ops.Update {
		size += len(ch.value)
	}
	if ch.frag.Count != 0 {
		size += wire.FragmentHeaderSize
	}
	opens := !c.open || c.fp != ch.fp || c.section+size > 0xffff
	growth := size
	if opens {
		growth += wire.SectionHeaderSize
	}
	n := c.w.Len()
	if !c.appendRecord(ch) {
		if c.w.Len() != n {
			t.Fatalf("a refused Append of %+v grew the datagram from %d to %d bytes", ch, n, c.w.Len())
		}
		return false
	}
	if got := c.w.Len() - n; got != growth {
		t.Fatalf("Append of %+v (stamp part %d bytes, opening a section %v) grew the datagram by %d bytes, want %d",
			ch, wire.StampSize(c.node, ch.origin, c.base, ch.stamp), opens, got, growth)
	}
	if opens {
		c.open, c.fp, c.section = true, ch.fp, 0
	}
	c.section += size
	return true
}

// appendRecord appends ch, a fragment with AppendFragment: its chunk is
// placed in a value of valueSize bytes, where its offset says, the rest
// of which AppendFragment must not write.
func (c *checkedWriter) appendRecord(ch change) bool {
	if ch.frag.Count == 0 {
		return c.w.Append(ch.fp, ch.op, ch.stamp, ch.origin, ch.key, ch.value)
	}
	value := make([]byte, ch.frag.Size)
	copy(value[ch.frag.Offset:], ch.value)
	return c.w.AppendFragment(ch.fp, ch.stamp, ch.origin, ch.key, value, ch.frag.Index, ch.frag.Count)
}

// encodeAll appends every change to a datagram of size bytes from h.Node
// with the given base stamp, and fails the test if one does not fit.
func encodeAll(t testing.TB, size int, h wire.Header, base uint64, changes []change) []byte {
	t.Helper()
	var w checkedWriter
	w.reset(make([]byte, size), h.Node, base)
	for i, c := range changes {
		if !w.append(t, c) {
			t.Fatalf("Append of change %d (key %d, value %d bytes) to a %d-byte datagram holding %d: does not fit",
				i, len(c.key), len(c.value), size, w.w.Len())
		}
	}
	if w.w.Count() != len(changes) {
		t.Fatalf("Count() = %d after %d appends", w.w.Count(), len(changes))
	}
	return w.w.Finish(h)
}

// checkRoundTrip decodes d and compares it with what encodeAll was given.
func checkRoundTrip(t *testing.T, d []byte, known sizes, h wire.Header, base uint64, changes []change, sections []int) {
	t.Helper()
	got, err := decodeAll(d, known)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if h.Kind != wire.KindSnapshot {
		h.Kind = wire.KindChanges
	}
	h.Count = uint16(len(changes))
	if got.h != h || got.base != base {
		t.Errorf("header %+v, base %#x; want %+v, %#x", got.h, got.base, h, base)
	}
	if sections != nil && !reflect.DeepEqual(got.sections, sections) {
		t.Errorf("section record counts = %v, want %v", got.sections, sections)
	}
	if len(got.changes) != len(changes) {
		t.Fatalf("decoded %d records, want %d", len(got.changes), len(changes))
	}
	for i := range changes {
		if !reflect.DeepEqual(got.changes[i], changes[i]) {
			t.Errorf("record %d = %+v, want %+v", i, got.changes[i], changes[i])
		}
	}
}

// The node and base stamp of most test datagrams, and another node whose
// records they relay. The base is a stamp of 2023-11-14 with counter 4.
const (
	testNode  = 3
	otherNode = 9
	testBase  = 1700000000123<<16 | 4
)

func TestChangesRoundTrip(t *testing.T) {
	small := wire.Descriptor{Name: "small", Type: 1, KeySize: 4, ValueSize: 8, MaxEntries: 16}
	odd := wire.Descriptor{Name: "odd", Type: 1, KeySize: 13, ValueSize: 37, MaxEntries: 16}
	big := wire.Descriptor{Name: "big", Type: 1, KeySize: 512, ValueSize: 4096, MaxEntries: 16}
	known := sizesOf(small, odd, big)
	// gen makes n changes of d, updates unless every del-th is a delete.
	// Every rel-th is relayed from another node, older than the base;
	// the others are the test node's own, a step of stamp apart.
	gen := func(d wire.Descriptor, n, del, rel int, step uint64, seed int) []change {
		var cs []change
		for i := range n {
			c := change{d.Fingerprint(), ops.Update, testBase + uint64(i)*step, testNode,
				pattern(int(d.KeySize), seed+i), pattern(int(d.ValueSize), seed+i+1000), wire.Fragment{}}
			if del > 0 && i%del == del-1 {
				c.op, c.value = ops.Delete, nil
			}
			if rel > 0 && i%rel == rel-1 {
				c.stamp, c.origin = testBase-uint64(i+1), otherNode
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
		{"4/8 one update", 1400, gen(small, 1, 0, 0, 1, 1), []int{1}},
		{"4/8 one delete", 1400, gen(small, 1, 1, 0, 1, 2), []int{1}},
		{"4/8 one relayed", 1400, gen(small, 1, 0, 1, 1, 2), []int{1}},
		{"4/8 mixed ops", 1400, gen(small, 20, 3, 0, 1, 3), []int{20}},
		{"4/8 mixed ops and forms", 1400, gen(small, 20, 3, 4, 1, 3), []int{20}},
		{"4/8 offsets of 3 bytes", 1400, gen(small, 20, 3, 0, 1<<16, 3), []int{20}},
		{"4/8 offsets of 10 bytes", 1400, gen(small, 3, 0, 0, 1<<63, 3), []int{3}},
		{"13/37 mixed ops", 1400, gen(odd, 25, 2, 5, 100, 4), []int{25}},
		{"13/37 deletes only", 1400, gen(odd, 50, 1, 0, 1, 5), []int{50}},
		{"512/4096 updates", 64 << 10, gen(big, 14, 0, 0, 1, 6), []int{14}},
		// Four times three updates of 4610 bytes and a relayed delete of
		// 525 make 57420 bytes; one more update fits, a second would pass
		// 65535.
		{"512/4096 mixed, two sections", 128 << 10, gen(big, 20, 4, 4, 1, 7), []int{17, 3}},
		{"several sections", 1400, cat(gen(small, 3, 2, 2, 1, 8), gen(odd, 2, 0, 0, 1, 9), gen(small, 1, 0, 0, 1, 10)), []int{3, 2, 1}},
		{"every size", 64 << 10, cat(gen(big, 2, 2, 0, 1, 11), gen(small, 5, 2, 3, 1, 12), gen(odd, 4, 3, 0, 1, 13), gen(big, 1, 0, 1, 1, 14)), []int{2, 5, 4, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := wire.Header{Kind: wire.KindAnnounce, Count: 999, Node: testNode, Epoch: 4, Seq: 5}
			d := encodeAll(t, tt.size, in, testBase, tt.changes)
			checkRoundTrip(t, d, known, in, testBase, tt.changes, tt.sections)
		})
	}
}

// TestChangesRandomStamps round-trips records of random versions, bases
// and nodes, the edges of each drawn often: each record must come back
// with its stamp and origin, in the form Append chose for it.
func TestChangesRandomStamps(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 3))
	edges := []uint64{0, 1, 127, 128, 1<<16 - 1, 1 << 16, 1<<63 - 1, 1 << 63, 1<<64 - 2, 1<<64 - 1}
	u64 := func() uint64 {
		if rng.IntN(3) == 0 {
			return edges[rng.IntN(len(edges))]
		}
		return rng.Uint64()
	}
	known := sizes{1: {4, 8}, 2: {1, 0}, 3: {13, 37}}
	for i := range 2000 {
		node := uint32(1 + rng.IntN(3))
		base := u64()
		var changes []change
		for j := range rng.IntN(40) {
			fp := uint32(1 + rng.IntN(3))
			c := change{fp: fp, op: ops.Update, key: pattern(known[fp][0], i+j), value: pattern(known[fp][1], i-j)}
			if rng.IntN(3) == 0 {
				c.op, c.value = ops.Delete, nil
			}
			switch rng.IntN(6) {
			case 0: // unstamped
			case 1: // another node's
				c.stamp, c.origin = max(1, u64()), uint32(1+rng.IntN(4))
			case 2: // our own, any stamp
				c.stamp, c.origin = max(1, u64()), node
			default: // our own, near the base
				c.stamp, c.origin = base+uint64(rng.IntN(1<<rng.IntN(24))), node
				if c.stamp == 0 || c.stamp < base {
					c.stamp = base
				}
				if c.stamp == 0 {
					c.stamp = 1
				}
			}
			changes = append(changes, c)
		}
		h := wire.Header{Kind: wire.KindSnapshot, Node: node, Epoch: 2, Seq: wire.SyncSeq(1, uint32(i))}
		if rng.IntN(2) == 0 {
			h.Kind, h.Seq = wire.KindChanges, uint64(1+i)
		}
		d := encodeAll(t, 4096, h, base, changes)
		checkRoundTrip(t, d, known, h, base, changes, nil)
		// The forms on the wire: walk the records by their sizes.
		at := wire.HeaderSize + wire.StampBaseSize
		var fp uint32
		for j, c := range changes {
			if j == 0 || c.fp != fp {
				at, fp = at+wire.SectionHeaderSize, c.fp
			}
			rel := d[at]&wire.RecordRelayed != 0
			wantRel := c.origin != node || c.stamp < base || c.stamp == 0
			if rel != wantRel || wire.StampSize(node, c.origin, base, c.stamp) == wire.RelayedStampSize != wantRel {
				t.Fatalf("datagram %d record %d %+v (node %d, base %#x): relayed %v, want %v", i, j, c, node, base, rel, wantRel)
			}
			at += 1 + wire.StampSize(node, c.origin, base, c.stamp) + len(c.key) + len(c.value)
		}
		if at != len(d) {
			t.Fatalf("datagram %d: records add up to %d bytes, datagram is %d", i, at, len(d))
		}
	}
}

func TestStampSize(t *testing.T) {
	const b = testBase
	for _, tc := range []struct {
		node, origin uint32
		base, stamp  uint64
		want         int
	}{
		{1, 1, b, b, 1},
		{1, 1, b, b + 127, 1},
		{1, 1, b, b + 128, 2},
		{1, 1, b, b + 1<<14 - 1, 2},
		{1, 1, b, b + 1<<14, 3},
		{1, 1, b, b + 1<<16, 3}, // the next millisecond
		{1, 1, b, b + 1<<21 - 1, 3},
		{1, 1, b, b + 1<<21, 4},
		{1, 1, 0, 1<<64 - 1, 10},
		{1, 1, 1<<64 - 1, 1<<64 - 1, 1},
		{1, 1, b, b - 1, wire.RelayedStampSize}, // older than the base
		{1, 2, b, b, wire.RelayedStampSize},     // another node's
		{1, 0, b, 0, wire.RelayedStampSize},     // unstamped
		{0, 0, 0, 0, wire.RelayedStampSize},
		{1, 1, 0, 0, wire.RelayedStampSize}, // not valid, but never an offset of 0 from base 0
	} {
		if got := wire.StampSize(tc.node, tc.origin, tc.base, tc.stamp); got != tc.want {
			t.Errorf("StampSize(%d, %d, %#x, %#x) = %d, want %d", tc.node, tc.origin, tc.base, tc.stamp, got, tc.want)
		}
	}
}

// TestChangeWriterFull checks that Append refuses exactly what does not
// fit and leaves the buffer untouched when it does.
func TestChangeWriterFull(t *testing.T) {
	const a, b = 0xaaaaaaaa, 0xbbbbbbbb
	key, value := pattern(4, 1), pattern(8, 2)
	update := 1 + 1 + len(key) + len(value) // 14, with a 1-byte offset
	del := 1 + 1 + len(key)                 // 6
	relayedDel := del - 1 + wire.RelayedStampSize
	first := wire.HeaderSize + wire.StampBaseSize + wire.SectionHeaderSize + update

	type step struct {
		fp      uint32
		op      ops.Op
		relayed bool
		ok      bool
	}
	tests := []struct {
		name  string
		size  int
		steps []step
	}{
		{"exact fit", first, []step{{a, ops.Update, false, true}, {a, ops.Delete, false, false}}},
		{"one byte short", first - 1, []step{{a, ops.Update, false, false}, {a, ops.Delete, false, true}, {a, ops.Delete, false, true}, {a, ops.Delete, false, false}}},
		{"same section exact fit", first + update, []step{{a, ops.Update, false, true}, {a, ops.Update, false, true}, {a, ops.Delete, false, false}}},
		{"new section one byte short", first + wire.SectionHeaderSize + del - 1, []step{{a, ops.Update, false, true}, {b, ops.Delete, false, false}, {a, ops.Delete, false, true}}},
		{"new section exact fit", first + wire.SectionHeaderSize + del, []step{{a, ops.Update, false, true}, {b, ops.Delete, false, true}, {b, ops.Delete, false, false}}},
		{"relayed one byte short", first + relayedDel - 1, []step{{a, ops.Update, false, true}, {a, ops.Delete, true, false}, {a, ops.Delete, false, true}}},
		{"relayed exact fit", first + relayedDel, []step{{a, ops.Update, false, true}, {a, ops.Delete, true, true}, {a, ops.Delete, false, false}}},
		{"header and base only", wire.HeaderSize + wire.StampBaseSize, []step{{a, ops.Delete, false, false}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := bytes.Repeat([]byte{0xee}, tt.size+16)
			var w checkedWriter
			w.reset(buf[:tt.size], testNode, testBase)
			var want []change
			for i, s := range tt.steps {
				c := change{s.fp, s.op, testBase + uint64(i), testNode, key, value, wire.Fragment{}}
				if s.relayed {
					c.origin = otherNode
				}
				if s.op == ops.Delete {
					c.value = nil
				}
				before := append([]byte(nil), buf...)
				n, count := w.w.Len(), w.w.Count()
				if ok := w.append(t, c); ok != s.ok {
					t.Fatalf("step %d: Append = %v at %d of %d bytes, want %v", i, ok, n, tt.size, s.ok)
				}
				if !s.ok {
					if w.w.Len() != n || w.w.Count() != count || !bytes.Equal(buf, before) {
						t.Fatalf("step %d: refused Append changed the writer or its buffer", i)
					}
					continue
				}
				want = append(want, c)
			}
			d := w.w.Finish(wire.Header{Node: testNode, Seq: 1})
			if !bytes.Equal(buf[tt.size:], bytes.Repeat([]byte{0xee}, 16)) {
				t.Error("the writer wrote past the end of its buffer")
			}
			got, err := decodeAll(d, sizes{a: {4, 8}, b: {4, 8}})
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if len(got.changes) != len(want) || (len(want) > 0 && !reflect.DeepEqual(got.changes, want)) {
				t.Errorf("decoded %+v, want %+v", got.changes, want)
			}
		})
	}
}

func TestChangeWriterEmpty(t *testing.T) {
	var w wire.ChangeWriter
	w.Reset(make([]byte, 100), 1, testBase)
	d := w.Finish(wire.Header{Node: 1, Epoch: 2, Seq: 3})
	if len(d) != wire.HeaderSize+wire.StampBaseSize || w.Len() != len(d) || w.Count() != 0 {
		t.Fatalf("empty datagram is %d bytes (Len %d, Count %d), want a header and a base stamp", len(d), w.Len(), w.Count())
	}
	got, err := decodeAll(d, nil)
	if err != nil || len(got.changes) != 0 || len(got.sections) != 0 || got.h.Count != 0 || got.base != testBase {
		t.Fatalf("decode of an empty datagram = %+v, %v", got, err)
	}
}

// TestChangeWriterMisuse checks the writer's answers to mistakes of its
// caller rather than of the network.
func TestChangeWriterMisuse(t *testing.T) {
	var w wire.ChangeWriter
	if w.Append(1, ops.Delete, 5, 1, []byte{1}, nil) {
		t.Error("Append on a writer without a buffer succeeded")
	}
	w.Reset(make([]byte, 1<<18), 1, testBase)
	if w.Append(1, ops.Update, testBase, 1, make([]byte, 1<<15), make([]byte, 1<<15)) {
		t.Error("Append of a record longer than a section can hold succeeded")
	}
	// 1 + 1 + 32768 + 32765 = 65535.
	if !w.Append(1, ops.Update, testBase, 1, make([]byte, 1<<15), make([]byte, 1<<15-3)) {
		t.Error("Append of a record exactly as long as a section can hold failed")
	}
	if w.Append(2, ops.Update, testBase, 2, make([]byte, 1<<15), make([]byte, 1<<15-3)) {
		t.Error("Append of a relayed record 11 bytes longer than a section can hold succeeded")
	}
	if !w.Append(2, ops.Update, testBase, 2, make([]byte, 1<<15), make([]byte, 1<<15-14)) {
		t.Error("Append of a relayed record exactly as long as a section can hold failed")
	}
	mustPanic(t, "Append with op 3", func() { w.Append(1, 3, 5, 1, []byte{1}, nil) })
	mustPanic(t, "Append with op 0x81", func() { w.Append(1, 0x81, 5, 1, []byte{1}, nil) })
	mustPanic(t, "Append of stamp 0 with an origin", func() { w.Append(1, ops.Delete, 0, 1, []byte{1}, nil) })
	mustPanic(t, "Append of a stamp without an origin", func() { w.Append(1, ops.Delete, 5, 0, []byte{1}, nil) })
	if w.Count() != 2 {
		t.Errorf("Count() = %d after the panics, want 2", w.Count())
	}
	var h wire.Header
	if err := h.Unmarshal(w.Finish(wire.Header{Kind: wire.KindAnnounce, Flags: wire.FlagRetransmit, Seq: 1})); err != nil || h.Flags != wire.FlagRetransmit {
		t.Errorf("Finish with FlagRetransmit wrote %+v, %v", h, err)
	}
	mustPanic(t, "Finish with FlagReady", func() { w.Finish(wire.Header{Flags: wire.FlagReady}) })
	mustPanic(t, "Finish of a snapshot with FlagRetransmit", func() {
		w.Finish(wire.Header{Kind: wire.KindSnapshot, Flags: wire.FlagRetransmit})
	})
	mustPanic(t, "Reset with a buffer too short for the base", func() {
		w.Reset(make([]byte, wire.HeaderSize+wire.StampBaseSize-1), 1, 0)
	})
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
		relayed  bool
		n        int
		sections []int
	}{
		// 13107 deletes of 3-byte keys, with 1-byte offsets, are exactly
		// 65535 bytes.
		{"5-byte records", 3, 0, false, 13107*2 + 1, []int{13107, 13107, 1}},
		// 655 updates make 65500 bytes; the 656th would pass 65535.
		{"100-byte records", 3, 95, false, 656, []int{655, 1}},
		// 4369 relayed deletes of 2-byte keys are exactly 65535 bytes.
		{"15-byte relayed records", 2, 0, true, 4369*2 + 1, []int{4369, 4369, 1}},
		// 21845 3-byte records fill a section exactly, and three sections
		// hold the 65535 records the header can count.
		{"record count limit", 1, 0, false, 65535, []int{21845, 21845, 21845}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			op := ops.Delete
			if tt.value > 0 {
				op = ops.Update
			}
			origin := uint32(testNode)
			if tt.relayed {
				origin = otherNode
			}
			var w wire.ChangeWriter
			w.Reset(make([]byte, 4<<20), testNode, testBase)
			key, value := make([]byte, tt.key), make([]byte, tt.value)
			for i := range tt.n {
				putIndex(key, i)
				if !w.Append(7, op, testBase, origin, key, value) {
					t.Fatalf("Append %d failed with %d bytes used", i, w.Len())
				}
			}
			if tt.n == 65535 && w.Append(7, op, testBase, origin, key, value) {
				t.Fatal("Append of a 65536th record succeeded")
			}
			got, err := decodeAll(w.Finish(wire.Header{Node: testNode, Seq: 1}), sizes{7: {tt.key, tt.value}})
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(got.sections, tt.sections) {
				t.Errorf("section record counts = %v, want %v", got.sections, tt.sections)
			}
			for i, c := range got.changes {
				putIndex(key, i)
				if !bytes.Equal(c.key, key) || c.stamp != testBase || c.origin != origin {
					t.Fatalf("record %d is %+v: records out of order or stamps lost", i, c)
				}
			}
		})
	}
}

// putIndex writes the low bytes of i into key, the last byte lowest.
func putIndex(key []byte, i int) {
	for j := len(key) - 1; j >= 0; j-- {
		key[j] = byte(i)
		i >>= 8
	}
}

// validChanges is a datagram of node 1 with base stamp validBase: a
// section of map 1 (4-byte keys, 8-byte values) with an update at the
// base, in the offset form, and a delete relayed from node 2, then a
// section of map 2 (2-byte keys and values) with an update at base+1. The
// error tests corrupt it; the constants below are the offsets of its
// parts.
func validChanges(t testing.TB) []byte {
	return encodeAll(t, 1400, wire.Header{Node: 1, Seq: 1}, validBase, []change{
		{1, ops.Update, validBase, 1, []byte{10, 0, 0, 2}, []byte{0, 0, 0, 0, 0, 0, 0, 5}, wire.Fragment{}},
		{1, ops.Delete, validRelayed, 2, []byte{10, 0, 0, 3}, nil, wire.Fragment{}},
		{2, ops.Update, validBase + 1, 1, []byte{0, 7}, []byte{0x1f, 0x90}, wire.Fragment{}},
	})
}

const (
	validBase    = testBase
	validRelayed = testBase - 5<<16 // node 2's delete, 5 ms before the base

	baseAt      = wire.HeaderSize               // the base stamp
	sec1        = baseAt + wire.StampBaseSize   // first section header
	sec1Records = sec1 + wire.SectionHeaderSize // 1+1+4+8 then 1+12+4 bytes
	sec2        = sec1Records + 14 + 17         // second section header
	sec2Records = sec2 + wire.SectionHeaderSize // 1+1+2+2 bytes
	validLen    = sec2Records + 6
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
	put := func(off int, v ...byte) []byte {
		return edit(func(b []byte) []byte { copy(b[off:], v); return b })
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
		{"section length past the end", put16(sec2+6, 7), validSizes, wire.ErrShortBuffer},
		{"section length 65535", put16(sec1+6, 0xffff), validSizes, wire.ErrShortBuffer},
		{"section header cut", valid[:sec2+7], validSizes, wire.ErrShortBuffer},
		{"body ends before the count", valid[:sec2], validSizes, wire.ErrBadCount},
		{"trailing byte", append(valid[:validLen:validLen], 0), validSizes, wire.ErrBadCount},
		{"trailing section", append(valid[:validLen:validLen], 0, 0, 0, 2, 0, 1, 0, 6), validSizes, wire.ErrBadCount},
		{"op 0", put(sec1Records, 0), validSizes, wire.ErrBadOp},
		{"op 3", put(sec1Records+14, 3), validSizes, wire.ErrBadOp},
		{"op 255", put(sec2Records, 255), validSizes, wire.ErrBadOp},
		{"relayed op 0", put(sec1Records, wire.RecordRelayed), validSizes, wire.ErrBadOp},
		{"relayed op 3", put(sec1Records+14, wire.RecordRelayed|3), validSizes, wire.ErrBadOp},
		{"op bit 5", put(sec2Records, 0x20|byte(ops.Update)), validSizes, wire.ErrBadOp},
		{"fragment of a delete", put(sec1Records+14, wire.RecordRelayed|wire.RecordFragment|byte(ops.Delete)), validSizes, wire.ErrBadFragment},
		{"op bit 2 of a relayed record", put(sec1Records+14, wire.RecordRelayed|4|byte(ops.Delete)), validSizes, wire.ErrBadOp},
		// Records carry no length of their own: a wrong op, form or size
		// shifts the next record, whose op is then another byte.
		{"update turned delete", put(sec1Records, byte(ops.Delete)), validSizes, wire.ErrBadOp}, // the value's 0
		{"delete turned update", put(sec1Records+14, wire.RecordRelayed|1), validSizes, wire.ErrBadLength},
		{"offset turned relayed", put(sec1Records, wire.RecordRelayed|1), validSizes, wire.ErrBadStamp}, // stamp 0x000a0000_02000000, origin 0
		{"relayed turned offset", put(sec1Records+14, byte(ops.Delete)), validSizes, wire.ErrBadLength}, // offset 1, then 15 bytes past the count
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
		// The stamps.
		{"relayed stamp 0 with an origin", put(sec1Records+15, 0, 0, 0, 0, 0, 0, 0, 0), validSizes, wire.ErrBadStamp},
		{"relayed stamp without an origin", put(sec1Records+23, 0, 0, 0, 0), validSizes, wire.ErrBadStamp},
		{"offset of 0 from base 0", put(baseAt, 0, 0, 0, 0, 0, 0, 0, 0), validSizes, wire.ErrBadStamp},
		{"base+offset overflows", put(baseAt, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff), validSizes, wire.ErrBadStamp},
		{"offset form from node 0", put(8, 0, 0, 0, 0), validSizes, wire.ErrBadStamp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := decodeAll(tt.d, tt.known); !errors.Is(err, tt.want) {
				t.Errorf("decode: %v, want %v", err, tt.want)
			}
		})
	}
}

// rawChanges is a changes datagram of node with the base stamp base and
// one section of map 2 (2-byte keys and values) holding one record, recs,
// written by hand.
func rawChanges(node uint32, base uint64, rec ...byte) []byte {
	h := wire.Header{Kind: wire.KindChanges, Count: 1, Node: node, Seq: 1}
	d, _ := h.AppendTo(nil)
	d = binary.BigEndian.AppendUint64(d, base)
	d = binary.BigEndian.AppendUint32(d, 2)
	d = binary.BigEndian.AppendUint16(d, 1)
	d = binary.BigEndian.AppendUint16(d, uint16(len(rec)))
	return append(d, rec...)
}

// TestChangesStamps checks the decoding of each kind of stamp part, valid
// or not, in a record written by hand: a delete of map 2's key 0x0007.
func TestChangesStamps(t *testing.T) {
	del := byte(ops.Delete)
	rel := del | wire.RecordRelayed
	key := []byte{0, 7}
	rec := func(head ...byte) []byte { return append(head, key...) }
	relayed := func(stamp uint64, origin uint32) []byte {
		b := binary.BigEndian.AppendUint64([]byte{rel}, stamp)
		return rec(binary.BigEndian.AppendUint32(b, origin)...)
	}
	const maxStamp = 1<<64 - 1
	tests := []struct {
		name   string
		d      []byte
		want   error
		stamp  uint64
		origin uint32
	}{
		{"offset 0", rawChanges(1, testBase, rec(del, 0)...), nil, testBase, 1},
		{"offset 127", rawChanges(1, testBase, rec(del, 0x7f)...), nil, testBase + 127, 1},
		{"offset 128", rawChanges(1, testBase, rec(del, 0x80, 0x01)...), nil, testBase + 128, 1},
		{"offset of the next millisecond", rawChanges(1, testBase, rec(del, 0x80, 0x80, 0x04)...), nil, testBase + 1<<16, 1},
		{"offset 1 from base 0", rawChanges(1, 0, rec(del, 1)...), nil, 1, 1},
		{"largest offset from base 0", rawChanges(1, 0, rec(del, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)...), nil, maxStamp, 1},
		{"offset 0 from the largest base", rawChanges(1, maxStamp, rec(del, 0)...), nil, maxStamp, 1},
		{"relayed", rawChanges(1, testBase, relayed(5, 2)...), nil, 5, 2},
		{"relayed largest", rawChanges(1, testBase, relayed(maxStamp, 0xffffffff)...), nil, maxStamp, 0xffffffff},
		{"relayed own, after the base", rawChanges(1, testBase, relayed(testBase+1, 1)...), nil, testBase + 1, 1},
		{"unstamped", rawChanges(1, testBase, relayed(0, 0)...), nil, 0, 0},
		{"unstamped from node 0", rawChanges(0, 0, relayed(0, 0)...), nil, 0, 0},
		{"relayed from node 0", rawChanges(0, 0, relayed(5, 2)...), nil, 5, 2},

		{"offset 0 not in the shortest form", rawChanges(1, testBase, rec(del, 0x80, 0x00)...), wire.ErrBadStamp, 0, 0},
		{"offset 127 not in the shortest form", rawChanges(1, testBase, rec(del, 0xff, 0x80, 0x00)...), wire.ErrBadStamp, 0, 0},
		{"offset of 10 bytes past 64 bits", rawChanges(1, 0, rec(del, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02)...), wire.ErrBadStamp, 0, 0},
		{"offset of 11 bytes", rawChanges(1, 0, rec(del, 0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00)...), wire.ErrBadStamp, 0, 0},
		{"offset cut off", rawChanges(1, testBase, del, 0x80), wire.ErrBadLength, 0, 0},
		{"offset cut off after 10 bytes", rawChanges(1, testBase, del, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80), wire.ErrBadStamp, 0, 0},
		{"base+offset overflows", rawChanges(1, maxStamp, rec(del, 1)...), wire.ErrBadStamp, 0, 0},
		{"base+offset overflows to 0", rawChanges(1, 1<<63, rec(del, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01)...), wire.ErrBadStamp, 0, 0},
		{"offset 0 from base 0", rawChanges(1, 0, rec(del, 0)...), wire.ErrBadStamp, 0, 0},
		{"offset form from node 0", rawChanges(0, testBase, rec(del, 0)...), wire.ErrBadStamp, 0, 0},
		{"relayed stamp 0 with an origin", rawChanges(1, testBase, relayed(0, 2)...), wire.ErrBadStamp, 0, 0},
		{"relayed stamp 0 with the node as origin", rawChanges(1, testBase, relayed(0, 1)...), wire.ErrBadStamp, 0, 0},
		{"relayed stamp without an origin", rawChanges(1, testBase, relayed(5, 0)...), wire.ErrBadStamp, 0, 0},
		{"relayed cut off", rawChanges(1, testBase, relayed(5, 2)[:12]...), wire.ErrBadLength, 0, 0},
		{"body without a base", rawChanges(1, testBase)[:wire.HeaderSize+wire.StampBaseSize-1], wire.ErrShortBuffer, 0, 0},
		{"empty body", rawChanges(1, testBase)[:wire.HeaderSize], wire.ErrShortBuffer, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeAll(tt.d, validSizes)
			if !errors.Is(err, tt.want) {
				t.Fatalf("decode: %v, want %v", err, tt.want)
			}
			if err != nil {
				return
			}
			want := []change{{2, ops.Delete, tt.stamp, tt.origin, key, nil, wire.Fragment{}}}
			if !reflect.DeepEqual(got.changes, want) {
				t.Fatalf("decoded %+v, want %+v", got.changes, want)
			}
			// A record re-encodes to its bytes unless it was relayed
			// where the offset form would do, which is shorter.
			var w checkedWriter
			w.reset(make([]byte, len(tt.d)), got.h.Node, got.base)
			if !w.append(t, want[0]) {
				t.Fatal("the record does not fit again")
			}
			again := w.w.Finish(got.h)
			if tt.name != "relayed own, after the base" && !bytes.Equal(again, tt.d) {
				t.Errorf("re-encoded as\n%x, decoded from\n%x", again, tt.d)
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
			if _, err := decodeAll(valid[:n], known); err == nil {
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
	secs.Reset(valid[wire.HeaderSize:sec1-1], 0)
	for range 2 {
		if sec, err := secs.Next(); !errors.Is(err, wire.ErrShortBuffer) || sec.Data != nil || secs.Base() != 0 {
			t.Fatalf("Sections.Next of a body without a base = %+v, %v, base %#x; want ErrShortBuffer", sec, err, secs.Base())
		}
	}
	secs.Reset(valid[wire.HeaderSize:], 3)
	if secs.Base() != validBase {
		t.Fatalf("Base() = %#x, want %#x", secs.Base(), uint64(validBase))
	}
	sec, err := secs.Next()
	if err != nil {
		t.Fatal(err)
	}
	var recs wire.Records
	for _, tc := range []struct {
		name string
		good int // records that decode before the bad one
		edit func(b []byte)
		want error
	}{
		{"op 9", 0, func(b []byte) { b[0] = 9 }, wire.ErrBadOp},
		{"offset not in the shortest form", 0, func(b []byte) { b[1], b[2] = 0x80, 0 }, wire.ErrBadStamp},
		{"relayed stamp 0 with an origin", 1, func(b []byte) { clear(b[15:23]) }, wire.ErrBadStamp},
	} {
		bad := sec
		bad.Data = append([]byte(nil), sec.Data...)
		tc.edit(bad.Data)
		recs.Reset(bad, 4, 8, validBase, 1)
		for range tc.good {
			if _, err := recs.Next(); err != nil {
				t.Fatalf("%s: %v before the bad record", tc.name, err)
			}
		}
		for range 3 {
			if r, err := recs.Next(); !errors.Is(err, tc.want) || r.Key != nil {
				t.Fatalf("%s: Records.Next = %+v, %v; want %v again", tc.name, r, err, tc.want)
			}
		}
	}
	recs.Reset(sec, 4, 8, validBase, 1)
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
	recs.Reset(sec, 4, 8, secs.Base(), 1)
	r, err := recs.Next()
	if err != nil {
		t.Fatal(err)
	}
	if &r.Key[0] != &valid[sec1Records+2] || &r.Value[0] != &valid[sec1Records+6] {
		t.Error("record slices do not alias the datagram")
	}
	if cap(r.Key) != 4 || cap(r.Value) != 8 || cap(sec.Data) != 31 {
		t.Errorf("capacities key %d value %d section %d, want 4, 8, 31", cap(r.Key), cap(r.Value), cap(sec.Data))
	}
	if r.Stamp != validBase || r.Origin != 1 {
		t.Errorf("offset record version = %#x, %d; want %#x, 1", r.Stamp, r.Origin, uint64(validBase))
	}
	if r, _ = recs.Next(); r.Op != ops.Delete || r.Value != nil || &r.Key[0] != &valid[sec1Records+14+13] {
		t.Errorf("delete record = %+v, want a nil value and the key after the stamp and origin", r)
	}
	if r.Stamp != validRelayed || r.Origin != 2 {
		t.Errorf("relayed record version = %#x, %d; want %#x, 2", r.Stamp, r.Origin, uint64(validRelayed))
	}
}

// The benchmark and allocation datagrams: records of 16-byte keys and
// 64-byte values filling 1400 bytes, the payload of a typical path, each
// a stamp after the last, from the base on.
const (
	benchPayload = 1400
	benchKey     = 16
	benchValue   = 64
	benchFP      = 0x01020304
	benchNode    = 1
)

var (
	benchKeys   = pattern(benchKey, 1)
	benchValues = pattern(benchValue, 2)
)

// fill appends as many benchmark updates as fit.
func fill(w *wire.ChangeWriter) {
	for s := uint64(testBase); w.Append(benchFP, ops.Update, s, benchNode, benchKeys, benchValues); s++ {
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
		recs.Reset(sec, benchKey, benchValue, secs.Base(), h.Node)
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
	h := wire.Header{Node: benchNode, Epoch: 2, Seq: 3}
	allocs := testing.AllocsPerRun(100, func() {
		w.Reset(buf, benchNode, testBase)
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
	allocs = testing.AllocsPerRun(100, func() {
		for i := range 100 {
			n += wire.StampSize(benchNode, uint32(i%3), testBase, testBase+uint64(i))
		}
	})
	if allocs != 0 {
		t.Errorf("StampSize: %v allocations, want 0", allocs)
	}
}

func BenchmarkEncode(b *testing.B) {
	buf := make([]byte, benchPayload)
	var w wire.ChangeWriter
	h := wire.Header{Node: benchNode, Epoch: 2}
	w.Reset(buf, benchNode, testBase)
	fill(&w)
	b.SetBytes(int64(w.Len()))
	b.ReportAllocs()
	for b.Loop() {
		w.Reset(buf, benchNode, testBase)
		fill(&w)
		h.Seq++
		w.Finish(h)
	}
}

func BenchmarkDecode(b *testing.B) {
	var w wire.ChangeWriter
	w.Reset(make([]byte, benchPayload), benchNode, testBase)
	fill(&w)
	d := w.Finish(wire.Header{Node: benchNode, Epoch: 2, Seq: 3})
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
