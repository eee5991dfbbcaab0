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
var fuzzMaps = sizesOf(flows, ports,
	wire.Descriptor{Name: "odd", Type: 1, KeySize: 13, ValueSize: 37, MaxEntries: 16},
	wire.Descriptor{Name: "tiny", Type: 1, KeySize: 1, ValueSize: 1, MaxEntries: 16},
)

// FuzzHeader checks that a header that decodes encodes to the same bytes.
func FuzzHeader(f *testing.F) {
	f.Fuzz(func(t *testing.T, d []byte) {
		var h wire.Header
		if h.Unmarshal(d) != nil {
			return
		}
		b := make([]byte, wire.HeaderSize)
		if n, err := h.MarshalTo(b); err != nil || n != wire.HeaderSize {
			t.Fatalf("MarshalTo(%+v) = %d, %v", h, n, err)
		}
		if !bytes.Equal(b, d[:wire.HeaderSize]) {
			t.Fatalf("header %+v re-encodes to %x, decoded from %x", h, b, d[:wire.HeaderSize])
		}
	})
}

// FuzzChanges decodes arbitrary datagrams; whatever decodes must encode
// again, into no more bytes, and decode to the same records.
func FuzzChanges(f *testing.F) {
	f.Fuzz(func(t *testing.T, d []byte) {
		h, records, _, err := decodeAll(d, fuzzMaps)
		if err != nil {
			return
		}
		var w wire.ChangeWriter
		w.Reset(make([]byte, len(d)))
		for i, r := range records {
			if !w.Append(r.fp, r.op, r.key, r.value) {
				t.Fatalf("record %d of %d does not fit again in %d bytes", i, len(records), len(d))
			}
		}
		h2, again, _, err := decodeAll(w.Finish(h), fuzzMaps)
		if err != nil {
			t.Fatalf("re-encoded datagram does not decode: %v", err)
		}
		h.Count = uint16(len(records)) // sections of unknown maps are not re-encoded
		if h2 != h {
			t.Fatalf("header %+v re-decodes as %+v", h, h2)
		}
		if len(again) != len(records) || (len(records) > 0 && !reflect.DeepEqual(again, records)) {
			t.Fatalf("records %+v re-decode as %+v", records, again)
		}
	})
}

// FuzzDescriptors decodes arbitrary announces; whatever decodes must
// encode to the same bytes, since a descriptor has one encoding.
func FuzzDescriptors(f *testing.F) {
	f.Fuzz(func(t *testing.T, d []byte) {
		var h wire.Header
		if h.Unmarshal(d) != nil || h.Kind != wire.KindAnnounce {
			return
		}
		descs, err := wire.ParseDescriptors(d[wire.HeaderSize:], int(h.Count), nil)
		if err != nil {
			return
		}
		body := []byte{}
		for i := range descs {
			if body, err = wire.AppendDescriptor(body, &descs[i]); err != nil {
				t.Fatalf("descriptor %+v does not encode: %v", descs[i], err)
			}
		}
		if !bytes.Equal(body, d[wire.HeaderSize:]) {
			t.Fatalf("descriptors %+v re-encode to %x, decoded from %x", descs, body, d[wire.HeaderSize:])
		}
	})
}

// FuzzNack checks that a repair request that decodes encodes to the same
// bytes.
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
	})
}
