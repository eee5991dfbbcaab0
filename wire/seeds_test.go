package wire_test

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

var updateSeeds = flag.Bool("update-seeds", false, "rewrite the generated seeds in testdata/fuzz")

// TestFuzzSeeds keeps the generated part of the fuzz corpus in step with
// the format: each seed below must be in testdata/fuzz as this test
// writes it, so a change of the format cannot leave the fuzzers starting
// from datagrams that fail at the header. Run with -update-seeds to
// rewrite them. Other files there (crashers the fuzzers found) are left
// alone.
func TestFuzzSeeds(t *testing.T) {
	for target, seeds := range fuzzSeeds(t) {
		for name, values := range seeds {
			var b bytes.Buffer
			b.WriteString("go test fuzz v1\n")
			for _, v := range values {
				switch v := v.(type) {
				case []byte:
					fmt.Fprintf(&b, "[]byte(%q)\n", v)
				default:
					fmt.Fprintf(&b, "%T(%v)\n", v, v)
				}
			}
			path := filepath.Join("testdata", "fuzz", target, name)
			if *updateSeeds {
				if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, b.Bytes()) {
				t.Errorf("%s is not the generated seed (%v): run go test ./wire -run TestFuzzSeeds -update-seeds", path, err)
			}
		}
	}
}

// fuzzSeeds returns the generated seeds: for each fuzz target, the
// arguments of each named seed.
func fuzzSeeds(t *testing.T) map[string]map[string][]any {
	h := wire.Header{Node: 0x0a000001, Epoch: 1700000000, Seq: 42}
	const base = 1700000000123<<16 | 4
	fl, po, odd, tiny := flows.Fingerprint(), ports.Fingerprint(), fuzzOdd.Fingerprint(), fuzzTiny.Fingerprint()
	k := func(b ...byte) []byte { return b }
	golden := encodeAll(t, 1400, h, base, []change{
		{fl, ops.Update, base, h.Node, k(10, 0, 0, 2), k(0, 0, 0, 0, 0, 0, 0, 5), wire.Fragment{}},
		{fl, ops.Delete, base + 1, h.Node, k(10, 0, 0, 3), nil, wire.Fragment{}},
		{fl, ops.Update, 1700000000124 << 16, h.Node, k(10, 0, 0, 4), k(0, 0, 0, 0, 0, 0, 0, 6), wire.Fragment{}},
		{po, ops.Update, 1700000000120<<16 | 2, 0x0a000002, k(0, 0, 0, 7), k(0x1f, 0x90), wire.Fragment{}},
	})
	// Offsets of the golden datagram's parts, see FORMAT.md.
	const (
		goldenFirstOp  = 0x2c
		goldenFirstOff = 0x2d
		goldenRelayed  = 0x58
	)
	edit := func(d []byte, at int, b ...byte) []byte {
		d = bytes.Clone(d)
		copy(d[at:], b)
		return d
	}
	g := wire.Digest{Bucket: wire.Bucket{Map: fl, Depth: 1, Prefix: 63}, Round: 9, Stamp: base}
	for i := range g.Children {
		g.Children[i] = wire.DigestChild{Sum: uint64(i) * 0x9e3779b97f4a7c15, Newest: base - uint64(i)}
	}
	digest, _ := g.AppendTo(nil)
	diff, _ := (&wire.DigestDiff{Bucket: g.Bucket, Round: 9, Differ: 1<<63 | 5}).AppendTo(nil)
	filter, _ := (&wire.BucketFilter{Bucket: wire.Bucket{Map: fl, Depth: 2, Prefix: 4095}, Children: 1}).AppendTo(nil)
	retransmit := h
	retransmit.Flags, retransmit.Seq = wire.FlagRetransmit, 7
	snapshot := wire.Header{Kind: wire.KindSnapshot, Node: 2, Epoch: 3, Seq: wire.SyncSeq(5, 1)}
	mixed := encodeAll(t, 1400, snapshot, 1<<16, []change{
		{odd, ops.Update, 0, 0, pattern(13, 1), pattern(37, 2), wire.Fragment{}},
		{odd, ops.Delete, 3<<16 | 9, 7, pattern(13, 3), nil, wire.Fragment{}},
		{odd, ops.Update, 1<<16 | 200, 2, pattern(13, 4), pattern(37, 5), wire.Fragment{}},
		{tiny, ops.Update, 1 << 16, 2, k(1), k(2), wire.Fragment{}},
		{tiny, ops.Delete, 1<<16 | 1, 2, k(2), nil, wire.Fragment{}},
		{0xdeadbeef, ops.Update, 9, 9, pattern(3, 6), pattern(4, 7), wire.Fragment{}}, // a map the fuzzer does not know
		{po, ops.Update, 1<<64 - 1, 2, k(0, 0, 0, 8), k(0, 1), wire.Fragment{}},
	})
	split := encodeAll(t, 1400, h, base, []change{
		{fl, ops.Update, base, h.Node, k(10, 0, 0, 2), k(0, 0, 0, 0, 0, 0, 0, 5), wire.Fragment{}},
		{po, ops.Update, base + 1, h.Node, k(0, 0, 0, 7), k(0x1f, 0x90), wire.Fragment{}},
		{fl, ops.Delete, base + 2, h.Node, k(10, 0, 0, 3), nil, wire.Fragment{}},
		{fl, ops.Update, base - 1, h.Node, k(10, 0, 0, 2), k(0, 0, 0, 0, 0, 0, 0, 6), wire.Fragment{}}, // older than the base: relayed
	})
	// frag is fragment index of count of an update of odd to value.
	frag := func(stamp uint64, origin uint32, key, value []byte, index, count int) change {
		lo, hi, _ := wire.FragmentRange(len(value), index, count)
		return change{odd, ops.Update, stamp, origin, key, value[lo:hi], wire.Fragment{Index: index, Count: count, Offset: lo, Size: len(value)}}
	}
	fragments := encodeAll(t, 1400, h, base, []change{
		frag(base, h.Node, pattern(13, 8), pattern(37, 9), 2, 3),
		{tiny, ops.Update, base + 1, h.Node, k(3), k(4), wire.Fragment{}},
		frag(base, h.Node, pattern(13, 8), pattern(37, 9), 0, 3),
		frag(base-5, 3, pattern(13, 10), pattern(37, 11), 36, 37),
	})
	// Offsets in fragments: its first record's op, and its index and
	// count after the one-byte offset and the 13-byte key.
	const (
		fragmentsOp    = wire.HeaderSize + wire.StampBaseSize + wire.SectionHeaderSize
		fragmentsIndex = fragmentsOp + 1 + 1 + 13
	)
	// one is a datagram of a single delete of a tiny key with the stamp
	// part rec, written by hand.
	one := func(node uint32, base uint64, op byte, rec ...byte) []byte {
		hh := wire.Header{Kind: wire.KindChanges, Count: 1, Node: node, Epoch: 1, Seq: 1}
		d, _ := hh.AppendTo(nil)
		d = binary.BigEndian.AppendUint64(d, base)
		d = binary.BigEndian.AppendUint32(d, tiny)
		d = binary.BigEndian.AppendUint16(d, 1)
		d = binary.BigEndian.AppendUint16(d, uint16(2+len(rec)))
		d = append(d, op)
		d = append(d, rec...)
		return append(d, 0x42)
	}
	del := byte(ops.Delete)
	rel := del | wire.RecordRelayed
	relayed := func(stamp uint64, origin uint32) []byte {
		return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, stamp), origin)
	}
	empty := encodeAll(t, 100, wire.Header{Node: 2, Epoch: 3, Seq: 5}, 0, nil)
	changes := map[string][]any{
		"golden":     {golden},
		"empty":      {empty},
		"no-base":    {empty[:wire.HeaderSize+4]},
		"truncated":  {golden[:len(golden)-1]},
		"retransmit": {encodeAll(t, 1400, retransmit, base, []change{{fl, ops.Update, base + 300, h.Node, k(10, 0, 0, 2), k(0, 0, 0, 0, 0, 0, 0, 5), wire.Fragment{}}})},
		"mixed":      {mixed},
		"split":      {split},
		"bad-op":     {edit(golden, goldenFirstOp, 3)},
		"op-bit":     {edit(golden, goldenFirstOp, 0x20|byte(ops.Update))},
		"fragments":  {fragments},
		// A fragment of a delete, index past count, a count of 1, and a
		// count that leaves the last chunk of a 37-byte value empty.
		"fragment-delete":    {edit(fragments, fragmentsOp, wire.RecordFragment|byte(ops.Delete))},
		"fragment-index":     {edit(fragments, fragmentsIndex, 3, 3)},
		"fragment-one":       {edit(fragments, fragmentsIndex, 0, 1)},
		"fragment-count":     {edit(fragments, fragmentsIndex, 2, 25)},
		"fragment-truncated": {fragments[:fragmentsIndex+1]},
		"relayed-op":         {edit(golden, goldenRelayed, wire.RecordRelayed|3)},
		// A 10-byte offset, and the same over 64 bits, and an 11-byte one.
		"long-offset":     {one(1, 0, del, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)},
		"offset-64-bits":  {one(1, 0, del, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02)},
		"offset-11-bytes": {one(1, 0, del, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00)},
		"offset-overflow": {one(1, 1<<64-1, del, 1)},
		"zero-stamp":      {one(1, 0, del, 0)},
		"node-zero":       {one(0, 5, del, 0)},
		"unstamped":       {one(1, 5, rel, relayed(0, 0)...)},
		"stamp-0-origin":  {one(1, 5, rel, relayed(0, 2)...)},
		"stamp-no-origin": {one(1, 5, rel, relayed(7, 0)...)},
		"relayed-cut":     {one(1, 5, rel, relayed(7, 2)[:11]...)},
		"short-record":    {one(1, 5, del)}, // offset 0x42, and no key
	}
	// The overlong offset: the golden's first offset, 0, as 0x80 0x00,
	// one byte longer, with the section's and no other length grown.
	ov := append(bytes.Clone(golden[:goldenFirstOff]), 0x80, 0x00)
	ov = append(ov, golden[goldenFirstOff+1:]...)
	binary.BigEndian.PutUint16(ov[0x2a:], binary.BigEndian.Uint16(golden[0x2a:])+1)
	changes["overlong-offset"] = []any{ov}

	announce := func(hh wire.Header, ds ...wire.Descriptor) []byte {
		hh.Kind, hh.Count = wire.KindAnnounce, uint16(len(ds))
		d, err := hh.AppendTo(nil)
		if err != nil {
			t.Fatal(err)
		}
		return appendAll(t, d, ds...)
	}
	goldenAnnounce := announce(h, flows, ports, ct)
	ready := h
	ready.Flags, ready.Seq = wire.FlagReady, 0
	hdr := func(kind wire.Kind, flags uint8, seq uint64) []byte {
		hh := wire.Header{Kind: kind, Node: 0x0a000001, Epoch: 1700000000, Seq: seq}
		d, _ := hh.AppendTo(nil)
		d[4] = flags
		return d
	}
	sealed := bytes.Clone(golden)
	sealed[5] = wire.SealSize
	badSeal := bytes.Clone(golden)
	badSeal[5] = 16
	v2 := bytes.Clone(golden)
	v2[2] = 2

	syncStart := func(status uint8, asOf uint64) []byte {
		b := binary.BigEndian.AppendUint64([]byte{status}, asOf)
		b = binary.BigEndian.AppendUint64(b, 1000)                     // entries
		return binary.BigEndian.AppendUint64(b, 0x0190_0000_0000_0001) // stamp
	}
	cookie := func(kind wire.Kind) []byte {
		hh := wire.Cookie{Slot: 0x1234, Tag: 0x0123456789abcdef}.Header(kind, 0x0a000001, 1700000000)
		d, err := hh.AppendTo(nil)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	return map[string]map[string][]any{
		"FuzzChanges": changes,
		"FuzzHeader": {
			"changes":        {golden[:wire.HeaderSize]},
			"announce":       {goldenAnnounce},
			"ready-announce": {announce(ready)},
			"retransmit":     {hdr(wire.KindChanges, wire.FlagRetransmit, 7)},
			"seal":           {sealed},
			"bad-seal":       {badSeal},
			"bad-magic":      {edit(golden, 1, 0)},
			"version-2":      {v2},
			"seq-past-max":   {hdr(wire.KindChanges, 0, wire.MaxSeq+1)},
			"seq-zero":       {hdr(wire.KindChanges, 0, 0)},
			"short":          {golden[:wire.HeaderSize-1]},
			"snapshot-flag":  {hdr(wire.KindSnapshot, wire.FlagRetransmit, wire.SyncSeq(1, 1))},
			"sync-ack":       {hdr(wire.KindSyncAck, 0, 1<<64-1)},
		},
		"FuzzDescriptors": {
			"golden":       {goldenAnnounce},
			"none":         {announce(h)},
			"ready":        {announce(ready, flows)},
			"longest-name": {announce(h, longest)},
			"bad-name":     {edit(goldenAnnounce, wire.HeaderSize+wire.DescriptorSize, 0x7f)},
			"bad-field":    {edit(goldenAnnounce, len(goldenAnnounce)-2*wire.FieldSize, 7)},
			"count-high":   {edit(goldenAnnounce, 6, 0, 4)},
			"trailing":     {append(bytes.Clone(goldenAnnounce), 0)},
			"version-2":    {edit(goldenAnnounce, 2, 2)},
		},
		"FuzzCookie": {
			"cookie":    {cookie(wire.KindCookie)},
			"echo":      {cookie(wire.KindCookieEcho)},
			"with-body": {append(cookie(wire.KindCookie), 0)},
			"flag":      {edit(cookie(wire.KindCookieEcho), 4, wire.FlagReady)},
			"sealed":    {edit(cookie(wire.KindCookie), 5, wire.SealSize)},
			"kind-14":   {edit(cookie(wire.KindCookie), 3, 14)},
			"sync-ask":  {hdr(wire.KindSyncRequest, 0, wire.SyncSeq(1, 0))},
			"short":     {cookie(wire.KindCookie)[:wire.HeaderSize-1]},
		},
		"FuzzSyncStart": {
			"ok":         {syncStart(wire.SyncOK, 42)},
			"not-ready":  {syncStart(wire.SyncNotReady, 0)},
			"busy":       {syncStart(wire.SyncBusy, 1<<64-1)},
			"bad-status": {syncStart(3, 42)},
			"short":      {syncStart(wire.SyncOK, 42)[:wire.SyncStartSize-1]},
			"long":       {append(syncStart(wire.SyncOK, 42), 0)},
			// Version 2's body, with the applied field: 8 bytes too long.
			"version-2": {binary.BigEndian.AppendUint64(syncStart(wire.SyncOK, 42), 7)},
		},
		"FuzzDigest": {
			"digest":        {uint8(0), digest},
			"digest-deep":   {uint8(0), edit(digest, 4, 2, 0, 0, 0x0f, 0xff)},
			"digest-leaf":   {uint8(0), edit(digest, 4, 3)},
			"digest-prefix": {uint8(0), edit(digest, 5, 0, 0, 0, 1)},
			"digest-short":  {uint8(0), digest[:wire.DigestSize-1]},
			"diff":          {uint8(1), diff},
			"diff-long":     {uint8(1), append(bytes.Clone(diff), 0)},
			"filter":        {uint8(2), filter},
			"filter-empty":  {uint8(2), edit(filter, wire.BucketSize, 0, 0, 0, 0, 0, 0, 0, 0)},
			"filter-deep":   {uint8(2), edit(filter, 4, 2, 0, 0, 0x10, 0)},
		},
	}
}
