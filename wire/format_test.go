package wire_test

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// goldenBytes reads the example datagram that follows the marker
// "<!-- golden name -->" in FORMAT.md: the rows of its table are
// "offset | hex bytes | field", and each offset must be where the previous
// rows end, so the table cannot drift from the bytes it lists.
func goldenBytes(t *testing.T, name string) []byte {
	t.Helper()
	f, err := os.Open("FORMAT.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		b     []byte
		state int // 0 before the marker, 1 before the block, 2 in it
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case state == 0 && line == "<!-- golden "+name+" -->":
			state = 1
		case state == 1 && strings.HasPrefix(line, "```"):
			state = 2
		case state == 2 && strings.HasPrefix(line, "```"):
			return b
		case state == 2:
			cols := strings.Split(line, "|")
			if len(cols) != 3 {
				t.Fatalf("FORMAT.md %s: row %q does not have three columns", name, line)
			}
			off, err := strconv.ParseUint(strings.TrimSpace(cols[0]), 16, 32)
			if err != nil {
				continue // the column titles
			}
			if int(off) != len(b) {
				t.Fatalf("FORMAT.md %s: row %q is at offset %#x, want %#x", name, line, off, len(b))
			}
			row, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(cols[1]), " ", ""))
			if err != nil || len(row) == 0 {
				t.Fatalf("FORMAT.md %s: row %q: bad hex bytes: %v", name, line, err)
			}
			b = append(b, row...)
		}
	}
	t.Fatalf("FORMAT.md has no complete golden %s example", name)
	return nil
}

// TestGolden checks the examples in FORMAT.md against the encoders, and
// decodes them back.
func TestGolden(t *testing.T) {
	h := wire.Header{Node: 0x0a000001, Epoch: 1700000000, Seq: 42}

	t.Run("changes", func(t *testing.T) {
		// Stamps of 2023-11-14T22:13:20.120Z to .124Z: milliseconds << 16
		// | counter.
		base := uint64(1700000000123<<16 | 4)
		want := []change{
			{flows.Fingerprint(), ops.Update, base, h.Node, []byte{10, 0, 0, 2}, []byte{0, 0, 0, 0, 0, 0, 0, 5}, wire.Fragment{}},
			{flows.Fingerprint(), ops.Delete, base + 1, h.Node, []byte{10, 0, 0, 3}, nil, wire.Fragment{}},
			{flows.Fingerprint(), ops.Update, 1700000000124 << 16, h.Node, []byte{10, 0, 0, 4}, []byte{0, 0, 0, 0, 0, 0, 0, 6}, wire.Fragment{}},
			{ports.Fingerprint(), ops.Update, 1700000000120<<16 | 2, 0x0a000002, []byte{0, 0, 0, 7}, []byte{0x1f, 0x90}, wire.Fragment{}},
		}
		d := encodeAll(t, 1400, h, base, want)
		golden := goldenBytes(t, "changes")
		if !bytes.Equal(d, golden) {
			t.Fatalf("encoded\n%s\nFORMAT.md has\n%s", hex.Dump(d), hex.Dump(golden))
		}
		got, err := decodeAll(golden, sizesOf(flows, ports))
		h.Kind, h.Count = wire.KindChanges, 4
		if err != nil || got.h != h || got.h.CheckSeq() != nil || got.base != base || !reflect.DeepEqual(got.changes, want) {
			t.Fatalf("decoding the golden changes = %+v, %v", got, err)
		}
	})

	t.Run("fragment", func(t *testing.T) {
		base := uint64(1700000000123<<16 | 4)
		value := []byte{0, 0, 0, 0, 0, 0, 0, 5}
		h := h
		h.Seq = 43
		var w wire.ChangeWriter
		w.Reset(make([]byte, 1400), h.Node, base)
		if !w.AppendFragment(flows.Fingerprint(), base, h.Node, []byte{10, 0, 0, 2}, value, 1, 2) {
			t.Fatal("the fragment does not fit 1400 bytes")
		}
		d := w.Finish(h)
		golden := goldenBytes(t, "fragment")
		if !bytes.Equal(d, golden) {
			t.Fatalf("encoded\n%s\nFORMAT.md has\n%s", hex.Dump(d), hex.Dump(golden))
		}
		got, err := decodeAll(golden, sizesOf(flows))
		want := []change{{flows.Fingerprint(), ops.Update, base, h.Node, []byte{10, 0, 0, 2}, value[4:],
			wire.Fragment{Index: 1, Count: 2, Offset: 4, Size: 8}}}
		if err != nil || got.base != base || !reflect.DeepEqual(got.changes, want) {
			t.Fatalf("decoding the golden fragment = %+v, %v; want %+v", got, err, want)
		}
	})

	t.Run("announce", func(t *testing.T) {
		want := []wire.Descriptor{flows, ports, ct}
		h := wire.Header{Kind: wire.KindAnnounce, Count: 3, Node: h.Node, Epoch: h.Epoch, Seq: h.Seq}
		d, err := h.AppendTo(nil)
		if err != nil {
			t.Fatal(err)
		}
		d = appendAll(t, d, want...)
		golden := goldenBytes(t, "announce")
		if !bytes.Equal(d, golden) {
			t.Fatalf("encoded\n%s\nFORMAT.md has\n%s", hex.Dump(d), hex.Dump(golden))
		}
		var got wire.Header
		if err := got.Unmarshal(golden); err != nil || got != h || got.CheckSeq() != nil {
			t.Fatalf("golden announce header = %+v, %v; want %+v", got, err, h)
		}
		descs, err := parseAll(golden[wire.HeaderSize:], got.Count)
		if err != nil || !reflect.DeepEqual(descs, want) {
			t.Fatalf("golden announce descriptors = %+v, %v; want %+v", descs, err, want)
		}
	})

	t.Run("cookie", func(t *testing.T) {
		want := wire.Cookie{Slot: 0x71c4, Tag: 0x3a5f09e2c6d1b874}
		h := want.Header(wire.KindCookie, h.Node, h.Epoch)
		d, err := h.AppendTo(nil)
		if err != nil {
			t.Fatal(err)
		}
		golden := goldenBytes(t, "cookie")
		if !bytes.Equal(d, golden) {
			t.Fatalf("encoded\n%s\nFORMAT.md has\n%s", hex.Dump(d), hex.Dump(golden))
		}
		var got wire.Header
		var c wire.Cookie
		if err := got.Unmarshal(golden); err != nil || got != h || c.Unmarshal(&got, golden[wire.HeaderSize:]) != nil || c != want {
			t.Fatalf("golden cookie = %+v %+v, %v; want %+v %+v", got, c, err, h, want)
		}
	})
}
