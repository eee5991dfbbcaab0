package replication

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"hash"
	"io"
	"net/netip"
	"time"

	"github.com/udpmapsync/udpmapsync/wire"
)

// cookieSlot is how long one secret makes cookies. The previous slot's
// secret still checks them, so a cookie is good for one to two slots:
// far longer than a round trip, short enough that one seen once is soon
// worthless.
const cookieSlot = 60 * time.Second

// Why an echoed cookie proves nothing. See "Return routability" in
// wire/FORMAT.md.
var (
	errCookieExpired   = errors.New("cookie of a slot before the previous one")
	errCookieForged    = errors.New("cookie not made by this node")
	errCookieWrongAddr = errors.New("cookie made for another address")
)

// cookieJar makes the cookies an address must echo to prove that it
// receives what is sent to it, and checks the echoes. It keeps no state
// per address: a cookie is an HMAC of the address under a secret that
// changes every [cookieSlot], drawn from the random source it is given,
// and it keeps the current and the previous secret. Time comes in as an
// argument. It is used under the receive lock.
type cookieJar struct {
	rand    io.Reader
	slot    int64        // number of the current slot; secrets[slot&1] is its secret
	macs    [2]hash.Hash // HMAC-SHA256 under each slot's secret
	started bool
	buf     [8 + 16 + 2]byte
	sum     []byte
}

// newCookieJar returns a jar drawing its secrets from r.
func newCookieJar(r io.Reader) cookieJar {
	return cookieJar{rand: r, sum: make([]byte, 0, sha256.Size)}
}

// turn moves to the slot of now, drawing a secret for every slot that
// began since the last call.
func (j *cookieJar) turn(now time.Time) error {
	slot := now.UnixNano() / int64(cookieSlot)
	if j.started && slot <= j.slot {
		return nil
	}
	from := slot - 1 // both secrets are new unless only one slot passed
	if j.started && slot == j.slot+1 {
		from = slot
	}
	for s := from; s <= slot; s++ {
		var secret [32]byte
		if _, err := io.ReadFull(j.rand, secret[:]); err != nil {
			return err
		}
		j.macs[s&1] = hmac.New(sha256.New, secret[:])
	}
	j.slot, j.started = slot, true
	return nil
}

// issue returns a cookie for addr, made with the secret of now's slot.
func (j *cookieJar) issue(addr netip.AddrPort, now time.Time) (wire.Cookie, error) {
	if err := j.turn(now); err != nil {
		return wire.Cookie{}, err
	}
	bind := j.bind(j.slot, addr)
	return wire.Cookie{Slot: uint16(j.slot), Tag: uint64(bind)<<32 | uint64(j.check32(j.slot, bind))}, nil
}

// check says whether c, echoed from addr, is a cookie this node made for
// addr in the current or the previous slot.
func (j *cookieJar) check(c wire.Cookie, addr netip.AddrPort, now time.Time) error {
	if err := j.turn(now); err != nil {
		return err
	}
	var slot int64
	switch c.Slot {
	case uint16(j.slot):
		slot = j.slot
	case uint16(j.slot - 1):
		slot = j.slot - 1
	default:
		return errCookieExpired
	}
	bind := uint32(c.Tag >> 32)
	if subtle.ConstantTimeEq(int32(uint32(c.Tag)), int32(j.check32(slot, bind))) == 0 {
		return errCookieForged
	}
	if j.bind(slot, addr) != bind {
		return errCookieWrongAddr
	}
	return nil
}

// bind is the half of a cookie that names the address: the first 4 bytes
// of the HMAC of the slot, the address (IPv4 mapped into IPv6) and the
// port.
func (j *cookieJar) bind(slot int64, addr netip.AddrPort) uint32 {
	b := binary.BigEndian.AppendUint64(j.buf[:0], uint64(slot))
	a := addr.Addr().As16()
	b = append(b, a[:]...)
	b = binary.BigEndian.AppendUint16(b, addr.Port())
	return j.mac(slot, b)
}

// check32 is the half of a cookie that shows this node made it: the first
// 4 bytes of the HMAC of the slot and the other half.
func (j *cookieJar) check32(slot int64, bind uint32) uint32 {
	b := binary.BigEndian.AppendUint64(j.buf[:0], uint64(slot))
	return j.mac(slot, binary.BigEndian.AppendUint32(b, bind))
}

func (j *cookieJar) mac(slot int64, b []byte) uint32 {
	m := j.macs[slot&1]
	m.Reset()
	m.Write(b)
	j.sum = m.Sum(j.sum[:0])
	return binary.BigEndian.Uint32(j.sum)
}
