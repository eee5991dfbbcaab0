package wire_test

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/udpmapsync/udpmapsync/wire"
)

// The seed corpus of each fuzz test is in testdata/fuzz/<FuzzName>: real
// datagrams and near misses. FuzzChanges knows the maps of fuzzMaps; the
// sections of other maps are skipped, as a receiver skips them.
var (
	fuzzOdd  = wire.Descriptor{Name: "odd", Type: 1, KeySize: 13, ValueSize: 37, MaxEntries: 16}
	fuzzTiny = wire.Descriptor{Name: "tiny", Type: 1, KeySize: 1, ValueSize: 1, MaxEntries: 16}
	fuzzMaps = sizesOf(flows, ports, fuzzOdd, fuzzTiny)
)

// FuzzHeader checks that a header that decodes encodes to the same bytes,
// appended or written in place, and decodes again to the same header.
func FuzzHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, d []byte) {
		var h wire.Header
		if h.Unmarshal(d) != nil {
			return
		}
		seqErr := h.CheckSeq()
		b, err := h.AppendTo(nil)
		if err != nil {
			t.Fatalf("AppendTo(%+v): %v", h, err)
		}
		if !bytes.Equal(b, d[:wire.HeaderSize]) {
			t.Fatalf("header %+v re-encodes to %x, decoded from %x", h, b, d[:wire.HeaderSize])
		}
		in := bytes.Clone(d)
		if _, err := h.AppendTo(in[:0]); err != nil || !bytes.Equal(in, d) {
			t.Fatalf("header %+v written in place over its datagram changes it to %x, %v", h, in, err)
		}
		var again wire.Header
		if err := again.Unmarshal(b); err != nil || again != h {
			t.Fatalf("header %+v re-decodes as %+v, %v", h, again, err)
		}
		if again.CheckSeq() != seqErr {
			t.Fatalf("header %+v: CheckSeq %v, re-decoded %v", h, seqErr, again.CheckSeq())
		}
	})
}

// FuzzChanges decodes arbitrary datagrams; whatever decodes must encode
// again, into no more bytes and with Append growing by what StampSize
// says, and decode to the same base, stamps and records.
func FuzzChanges(f *testing.F) {
	f.Fuzz(func(t *testing.T, d []byte) {
		in, err := decodeAll(d, fuzzMaps)
		if err != nil {
			return
		}
		var w checkedWriter
		w.reset(make([]byte, len(d)), in.h.Node, in.base)
		for i, r := range in.changes {
			if !w.append(t, r) {
				t.Fatalf("record %d of %d does not fit again in %d bytes", i, len(in.changes), len(d))
			}
		}
		out, err := decodeAll(w.w.Finish(in.h), fuzzMaps)
		if err != nil {
			t.Fatalf("re-encoded datagram does not decode: %v", err)
		}
		in.h.Count = uint16(len(in.changes)) // sections of unknown maps are not re-encoded
		if out.h != in.h || out.base != in.base {
			t.Fatalf("header %+v, base %#x re-decode as %+v, %#x", in.h, in.base, out.h, out.base)
		}
		if len(out.changes) != len(in.changes) || (len(in.changes) > 0 && !reflect.DeepEqual(out.changes, in.changes)) {
			t.Fatalf("records %+v re-decode as %+v", in.changes, out.changes)
		}
	})
}

// FuzzDescriptors decodes arbitrary announces; whatever decodes must
// encode to the same bytes, since a descriptor has one encoding, and
// decode again to the same descriptors.
func FuzzDescriptors(f *testing.F) {
	f.Fuzz(func(t *testing.T, d []byte) {
		var h wire.Header
		if h.Unmarshal(d) != nil || h.Kind != wire.KindAnnounce {
			return
		}
		descs, err := parseAll(d[wire.HeaderSize:], h.Count)
		if err != nil {
			return
		}
		b, err := h.AppendTo(nil)
		if err != nil {
			t.Fatalf("header %+v does not encode: %v", h, err)
		}
		for i := range descs {
			if b, err = descs[i].AppendTo(b); err != nil {
				t.Fatalf("descriptor %+v does not encode: %v", descs[i], err)
			}
		}
		if !bytes.Equal(b, d) {
			t.Fatalf("announce %+v %+v re-encodes to %x, decoded from %x", h, descs, b, d)
		}
		var h2 wire.Header
		if err := h2.Unmarshal(b); err != nil || h2 != h {
			t.Fatalf("header %+v re-decodes as %+v, %v", h, h2, err)
		}
		again, err := parseAll(b[wire.HeaderSize:], h2.Count)
		if err != nil || !reflect.DeepEqual(again, descs) {
			t.Fatalf("descriptors %+v re-decode as %+v, %v", descs, again, err)
		}
	})
}

// FuzzNack checks that a repair request that decodes encodes to the same
// bytes and decodes again to the same request.
func FuzzNack(f *testing.F) {
	f.Fuzz(func(t *testing.T, count uint16, body []byte) {
		var n wire.Nack
		if n.Unmarshal(body, count) != nil {
			return
		}
		b, err := n.AppendTo(nil)
		if err != nil {
			t.Fatalf("AppendTo(%+v): %v", n, err)
		}
		if !bytes.Equal(b, body) {
			t.Fatalf("nack %+v re-encodes to %x, decoded from %x", n, b, body)
		}
		var again wire.Nack
		if err := again.Unmarshal(b, uint16(n.N)); err != nil || again != n {
			t.Fatalf("nack %+v re-decodes as %+v, %v", n, again, err)
		}
	})
}

// FuzzSyncStart checks that a sync start body that decodes encodes to the
// same bytes and decodes again to the same answer.
func FuzzSyncStart(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		var s wire.SyncStart
		if s.Unmarshal(body) != nil {
			return
		}
		b, err := s.AppendTo(nil)
		if err != nil {
			t.Fatalf("AppendTo(%+v): %v", s, err)
		}
		if !bytes.Equal(b, body) {
			t.Fatalf("sync start %+v re-encodes to %x, decoded from %x", s, b, body)
		}
		var again wire.SyncStart
		if err := again.Unmarshal(b); err != nil || again != s {
			t.Fatalf("sync start %+v re-decodes as %+v, %v", s, again, err)
		}
	})
}

// FuzzDigest checks that the digest bodies that decode encode to the same
// bytes and decode again to the same value: a digest, a digest's answer,
// and a sync request's bucket filter, picked by kind (the first byte).
func FuzzDigest(f *testing.F) {
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		type codec interface {
			Unmarshal([]byte) error
			AppendTo([]byte) ([]byte, error)
		}
		var v, again codec
		switch kind % 3 {
		case 0:
			v, again = new(wire.Digest), new(wire.Digest)
		case 1:
			v, again = new(wire.DigestDiff), new(wire.DigestDiff)
		default:
			v, again = new(wire.BucketFilter), new(wire.BucketFilter)
		}
		if v.Unmarshal(body) != nil {
			return
		}
		b, err := v.AppendTo(nil)
		if err != nil {
			t.Fatalf("AppendTo(%+v): %v", v, err)
		}
		if !bytes.Equal(b, body) {
			t.Fatalf("%T %+v re-encodes to %x, decoded from %x", v, v, b, body)
		}
		if err := again.Unmarshal(b); err != nil || !reflect.DeepEqual(again, v) {
			t.Fatalf("%T %+v re-decodes as %+v, %v", v, v, again, err)
		}
	})
}

// FuzzCookie checks that a cookie or cookie echo that decodes encodes to
// the same bytes and decodes again to the same cookie.
func FuzzCookie(f *testing.F) {
	f.Fuzz(func(t *testing.T, d []byte) {
		var h wire.Header
		if h.Unmarshal(d) != nil {
			return
		}
		var c wire.Cookie
		if c.Unmarshal(&h, d[wire.HeaderSize:]) != nil {
			return
		}
		hh := c.Header(h.Kind, h.Node, h.Epoch)
		hh.Sealed = h.Sealed
		b, err := hh.AppendTo(nil)
		if err != nil {
			t.Fatalf("cookie %+v in %+v does not encode: %v", c, hh, err)
		}
		if !bytes.Equal(b, d) {
			t.Fatalf("cookie %+v re-encodes to %x, decoded from %x", c, b, d)
		}
		var again wire.Cookie
		if err := again.Unmarshal(&hh, nil); err != nil || again != c {
			t.Fatalf("cookie %+v re-decodes as %+v, %v", c, again, err)
		}
	})
}
