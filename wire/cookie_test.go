package wire_test

import (
	"errors"
	"testing"

	"github.com/udpmapsync/udpmapsync/wire"
)

// A cookie travels in the header alone, both ways, and nothing else
// decodes as one.
func TestCookie(t *testing.T) {
	c := wire.Cookie{Slot: 0xbeef, Tag: 0x0123456789abcdef}
	for _, k := range []wire.Kind{wire.KindCookie, wire.KindCookieEcho} {
		h := c.Header(k, 0x0a000001, 1700000000)
		d, err := h.AppendTo(nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(d) != wire.HeaderSize {
			t.Errorf("kind %d: %d bytes, want the header's %d", k, len(d), wire.HeaderSize)
		}
		var back wire.Header
		if err := back.Unmarshal(d); err != nil || back != h {
			t.Fatalf("kind %d: header %+v decodes as %+v, %v", k, h, back, err)
		}
		var got wire.Cookie
		if err := got.Unmarshal(&back, d[wire.HeaderSize:]); err != nil || got != c {
			t.Errorf("kind %d: cookie %+v decodes as %+v, %v", k, c, got, err)
		}
		if err := got.Unmarshal(&back, []byte{0}); !errors.Is(err, wire.ErrBadLength) {
			t.Errorf("kind %d with a body: %v, want ErrBadLength", k, err)
		}
	}
	h := wire.Header{Kind: wire.KindSyncRequest, Seq: c.Tag}
	var got wire.Cookie
	if err := got.Unmarshal(&h, nil); !errors.Is(err, wire.ErrBadKind) {
		t.Errorf("a sync request as a cookie: %v, want ErrBadKind", err)
	}
	// No flag is allowed on either kind.
	h = c.Header(wire.KindCookie, 1, 1)
	h.Flags = wire.FlagReady
	if _, err := h.AppendTo(nil); !errors.Is(err, wire.ErrBadFlags) {
		t.Errorf("a cookie with FlagReady encodes: %v, want ErrBadFlags", err)
	}
}

func BenchmarkCookie(b *testing.B) {
	c := wire.Cookie{Slot: 1, Tag: 2}
	buf := make([]byte, 0, wire.HeaderSize)
	b.ReportAllocs()
	for b.Loop() {
		h := c.Header(wire.KindCookie, 1, 1)
		d, _ := h.AppendTo(buf[:0])
		var back wire.Header
		_ = back.Unmarshal(d)
		_ = c.Unmarshal(&back, d[wire.HeaderSize:])
	}
}
