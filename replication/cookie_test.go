package replication

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/wire"
)

// A cookie is good from the address it was made for, in its slot and the
// next; each other echo is told apart: forged, for another address, or
// expired. Time and the secrets come from the caller.
func TestCookieJar(t *testing.T) {
	j := newCookieJar(bytes.NewReader(bytes.Repeat([]byte{7}, 1024)))
	t0 := time.Unix(1_800_000_000, 0)
	a := netip.MustParseAddrPort("10.0.0.1:3870")
	c, err := j.issue(a, t0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		c    wire.Cookie
		from netip.AddrPort
		at   time.Time
		want error
	}{
		{"echoed from its address", c, a, t0, nil},
		{"in the next slot", c, a, t0.Add(cookieSlot), nil},
		{"two slots later", c, a, t0.Add(2 * cookieSlot), errCookieExpired},
		{"from another port", c, netip.MustParseAddrPort("10.0.0.1:3871"), t0, errCookieWrongAddr},
		{"from another address", c, netip.MustParseAddrPort("10.0.0.2:3870"), t0, errCookieWrongAddr},
		{"one bit of the check changed", wire.Cookie{Slot: c.Slot, Tag: c.Tag ^ 1}, a, t0, errCookieForged},
		{"one bit of the binding changed", wire.Cookie{Slot: c.Slot, Tag: c.Tag ^ 1<<40}, a, t0, errCookieForged},
		{"made up", wire.Cookie{Slot: c.Slot, Tag: 0x0123456789abcdef}, a, t0, errCookieForged},
		{"a slot never issued", wire.Cookie{Slot: c.Slot + 5, Tag: c.Tag}, a, t0, errCookieExpired},
	} {
		// Each case from a jar that has seen only the issue, so that
		// the later ones do not move it past the earlier ones' slots.
		k := newCookieJar(bytes.NewReader(bytes.Repeat([]byte{7}, 1024)))
		if _, err := k.issue(a, t0); err != nil {
			t.Fatal(err)
		}
		if err := k.check(tc.c, tc.from, tc.at); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// Another secret makes other cookies: the secret, not the address
	// alone, is what a forger lacks.
	other := newCookieJar(bytes.NewReader(bytes.Repeat([]byte{8}, 1024)))
	c2, err := other.issue(a, t0)
	if err != nil {
		t.Fatal(err)
	}
	if c2 == c {
		t.Error("two secrets made the same cookie")
	}
	if err := j.check(c2, a, t0); !errors.Is(err, errCookieForged) {
		t.Errorf("another node's cookie: %v, want forged", err)
	}
	// A source of randomness that fails is an error, not a weak secret.
	broken := newCookieJar(bytes.NewReader(nil))
	if _, err := broken.issue(a, t0); err == nil {
		t.Error("issued a cookie without a secret")
	}
}
