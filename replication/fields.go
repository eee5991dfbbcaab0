package replication

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"math"
	"time"

	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/mapopt"
)

// The bytes of a value that mean something only on their node: clock
// fields, local fields and the spin lock (see "In-place state" in
// docs/ARCHITECTURE.md). A value leaves a node in its wire form, made by
// [fieldPlan.toWire] as the datagram is closed, and is written to a
// peer's map in that peer's form, made by [fieldPlan.fromWire] at the
// apply: so a datagram's bytes, and the resend buffer's, never hold a
// node's local clock or local bytes.

// monoClock reads the kernel clocks datapaths stamp their values with,
// shifted by a test offset ([Config.MonoOffset]).
type monoClock struct{ offset time.Duration }

// clockNow is one reading of both clocks, in nanoseconds.
type clockNow struct{ mono, boot int64 }

func (c monoClock) read() clockNow {
	var m, b unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &m) // cannot fail for these clocks
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &b)
	off := c.offset.Nanoseconds()
	return clockNow{mono: m.Nano() + off, boot: b.Nano() + off}
}

// of is the reading in the unit of a kind of clock field.
func (n clockNow) of(k mapopt.ClockKind) int64 {
	t := n.mono
	if k.Boot() {
		t = n.boot
	}
	return t / int64(k.Unit())
}

// span is a byte range of a value: [from, to).
type span struct{ from, to int }

// fieldPlan is what a map's options ask of its values, in byte ranges.
type fieldPlan struct {
	opts    mapopt.Options
	clock   *monoClock // the table's
	clocks  []mapopt.Clock
	hashed  []span // in the main fingerprint: all but the refresh, local and lock bytes
	refresh []span // in the refresh fingerprint
	local   []span // kept from the receiver's own entry
	lock    []span // the spin lock: zero on the wire and at the apply (the kernel skips it)
	// keepLocal says the apply reads the receiver's entry first.
	keepLocal bool
}

// newFieldPlan lays out opts over a value of size bytes; nil when the
// map's values are copied as they are and not scanned.
func newFieldPlan(opts mapopt.Options, size int, clock *monoClock) (*fieldPlan, error) {
	if !opts.InPlace() {
		return nil, nil
	}
	for _, f := range append(append(append([]mapopt.Field{}, opts.Refresh...), opts.Local...), clockFields(opts.Clocks)...) {
		if f.Offset < 0 || f.Size <= 0 || f.Offset+f.Size > size {
			return nil, fmt.Errorf("field %s (bytes %d..%d) outside the %d-byte value", f.Name, f.Offset, f.Offset+f.Size-1, size)
		}
	}
	p := &fieldPlan{opts: opts, clock: clock, clocks: opts.Clocks, keepLocal: len(opts.Local) > 0}
	mark := make([]byte, size) // 1 refresh, 2 local, 3 lock
	set := func(f mapopt.Field, v byte) {
		for i := f.Offset; i < f.Offset+f.Size; i++ {
			mark[i] = v
		}
	}
	for _, f := range opts.Refresh {
		set(f, 1)
	}
	for _, f := range opts.Local {
		set(f, 2)
	}
	if opts.Lock != nil {
		set(*opts.Lock, 3)
	}
	for i := 0; i < size; {
		j := i
		for j < size && mark[j] == mark[i] {
			j++
		}
		s := span{i, j}
		switch mark[i] {
		case 0:
			p.hashed = append(p.hashed, s)
		case 1:
			p.refresh = append(p.refresh, s)
		case 2:
			p.local = append(p.local, s)
		case 3:
			p.lock = append(p.lock, s)
		}
		i = j
	}
	return p, nil
}

func clockFields(cs []mapopt.Clock) []mapopt.Field {
	fs := make([]mapopt.Field, len(cs))
	for i, c := range cs {
		fs[i] = c.Field
	}
	return fs
}

// toWire turns a value as this node's map holds it into its wire form,
// in place: clock fields relative to this node's clock now, local and
// lock bytes zero.
func (p *fieldPlan) toWire(v []byte) {
	if len(p.clocks) > 0 {
		now := p.clock.read()
		for _, c := range p.clocks {
			f := v[c.Offset : c.Offset+c.Size]
			if t := getField(f); t != 0 {
				putField(f, encodeDelta(int64(t)-now.of(c.Kind), c.Size))
			}
		}
	}
	zero(v, p.local)
	zero(v, p.lock)
}

// fromWire turns a value in its wire form into this node's, in place:
// clock fields rebased onto this node's clock now; local bytes taken from
// mine, the entry this node holds (nil: none, and they stay zero).
func (p *fieldPlan) fromWire(v, mine []byte) {
	if len(p.clocks) > 0 {
		now := p.clock.read()
		for _, c := range p.clocks {
			f := v[c.Offset : c.Offset+c.Size]
			if w := getField(f); w != 0 {
				putField(f, rebase(addSat(now.of(c.Kind), decodeDelta(w, c.Size)), c.Size))
			}
		}
	}
	for _, s := range p.local {
		if mine != nil {
			copy(v[s.from:s.to], mine[s.from:s.to])
		} else {
			clear(v[s.from:s.to])
		}
	}
	zero(v, p.lock)
}

// clearLock zeroes a captured value's spin lock, whatever its writer
// passed there: the kernel neither stores nor returns those bytes.
func (p *fieldPlan) clearLock(v []byte) { zero(v, p.lock) }

func zero(v []byte, spans []span) {
	for _, s := range spans {
		clear(v[s.from:s.to])
	}
}

// A clock field on the wire is a signed delta from the sender's clock,
// of the field's size, in the map's byte order (as the rest of the
// value). Zero means unset, as in the map: a delta of 0 or more is sent
// one higher, so that a timestamp of exactly now is not taken for unset.
func encodeDelta(d int64, size int) uint64 {
	if d >= 0 {
		d++
	}
	if size == 4 {
		return uint64(uint32(int32(min(max(d, math.MinInt32), math.MaxInt32))))
	}
	return uint64(d)
}

func decodeDelta(w uint64, size int) int64 {
	d := int64(w)
	if size == 4 {
		d = int64(int32(uint32(w)))
	}
	if d > 0 {
		d--
	}
	return d
}

// addSat is t+d, held within int64: a peer's delta may sit at the end of
// its range.
func addSat(t, d int64) int64 {
	if d > 0 && t > math.MaxInt64-d {
		return math.MaxInt64
	}
	if d < 0 && t < math.MinInt64-d {
		return math.MinInt64
	}
	return t + d
}

// rebase is a timestamp of this node's clock, kept within the field: a
// time before this node's clock began is 1, the earliest set value (0
// would mean unset).
func rebase(t int64, size int) uint64 {
	if t <= 0 {
		return 1
	}
	if size == 4 && t > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint64(t)
}

func getField(f []byte) uint64 {
	if len(f) == 4 {
		return uint64(binary.NativeEndian.Uint32(f))
	}
	return binary.NativeEndian.Uint64(f)
}

func putField(f []byte, x uint64) {
	if len(f) == 4 {
		binary.NativeEndian.PutUint32(f, uint32(x))
	} else {
		binary.NativeEndian.PutUint64(f, x)
	}
}

// prints returns the fingerprints of a value as this node holds it: fp
// of the bytes whose change is sent at once, rfp of the refresh fields.
func (p *fieldPlan) prints(seed maphash.Seed, v []byte) (fp uint64, rfp uint32) {
	var h maphash.Hash
	h.SetSeed(seed)
	for _, s := range p.hashed {
		h.Write(v[s.from:s.to])
	}
	fp = h.Sum64()
	if len(p.refresh) > 0 {
		h.Reset()
		for _, s := range p.refresh {
			h.Write(v[s.from:s.to])
		}
		rfp = uint32(h.Sum64())
	}
	return fp, rfp
}
