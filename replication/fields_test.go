package replication

import (
	"encoding/binary"
	"hash/maphash"
	"math"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
)

// A clock field's delta survives the wire at both sizes and at the ends
// of its range; a timestamp of exactly now is not taken for unset.
func TestClockDelta(t *testing.T) {
	for _, size := range []int{4, 8} {
		for _, d := range []int64{0, 1, -1, 1000, -1000, math.MaxInt32 - 1, math.MinInt32} {
			w := encodeDelta(d, size)
			if w == 0 || size == 4 && w > math.MaxUint32 {
				t.Errorf("size %d delta %d: wire %#x", size, d, w)
			}
			if got := decodeDelta(w, size); got != d {
				t.Errorf("size %d delta %d: decoded %d", size, d, got)
			}
		}
	}
	// Beyond a 4-byte field's range the delta saturates.
	if got := decodeDelta(encodeDelta(math.MaxInt64/2, 4), 4); got != math.MaxInt32-1 {
		t.Errorf("a huge delta in 4 bytes decoded as %d", got)
	}
	if addSat(1e15, math.MaxInt64) != math.MaxInt64 || addSat(1e15, math.MinInt64) != math.MinInt64+1e15 || addSat(-5, math.MinInt64) != math.MinInt64 {
		t.Error("addSat wraps")
	}
	if rebase(-5, 8) != 1 || rebase(0, 4) != 1 || rebase(math.MaxUint32+9, 4) != math.MaxUint32 || rebase(77, 8) != 77 {
		t.Error("rebase does not keep a time within its field")
	}
}

// A value leaves in its wire form and arrives in the receiver's: clock
// fields moved by the two clocks' difference, zero ones left zero, local
// bytes the receiver's own (or zero), lock bytes zero.
func TestFieldPlan(t *testing.T) {
	opts := mapopt.Options{
		Clocks: []mapopt.Clock{{Field: mapopt.Field{Name: "exp", Offset: 0, Size: 8}, Kind: mapopt.MonoNS},
			{Field: mapopt.Field{Name: "life", Offset: 8, Size: 4}, Kind: mapopt.MonoS},
			{Field: mapopt.Field{Name: "unset", Offset: 12, Size: 4}, Kind: mapopt.BootS}},
		Local: []mapopt.Field{{Name: "ifindex", Offset: 16, Size: 4}},
		Lock:  &mapopt.Field{Name: "lock", Offset: 20, Size: 4},
	}
	sender, receiver := &monoClock{}, &monoClock{offset: 3 * time.Hour}
	ps, err := newFieldPlan(opts, 28, sender)
	if err != nil {
		t.Fatal(err)
	}
	pr, _ := newFieldPlan(opts, 28, receiver)
	now := sender.read()
	v := make([]byte, 28)
	binary.NativeEndian.PutUint64(v[0:], uint64(now.mono+int64(10*time.Second)))
	binary.NativeEndian.PutUint32(v[8:], uint32(now.mono/1e9+10))
	binary.NativeEndian.PutUint32(v[16:], 5)
	binary.NativeEndian.PutUint32(v[20:], 1)
	v[24] = 0xaa
	ps.toWire(v)
	if binary.NativeEndian.Uint32(v[16:]) != 0 || binary.NativeEndian.Uint32(v[20:]) != 0 || binary.NativeEndian.Uint32(v[12:]) != 0 {
		t.Fatalf("wire form keeps local, lock or unset bytes: %x", v)
	}
	mine := make([]byte, 28)
	binary.NativeEndian.PutUint32(mine[16:], 9)
	pr.fromWire(v, mine)
	rnow := receiver.read()
	if left := time.Duration(int64(binary.NativeEndian.Uint64(v[0:])) - rnow.mono); left < 9*time.Second || left > 10*time.Second {
		t.Errorf("rebased expiry %s ahead of the receiver's clock, want 10s", left)
	}
	if left := int64(binary.NativeEndian.Uint32(v[8:])) - rnow.mono/1e9; left < 9 || left > 11 {
		t.Errorf("rebased lifetime %d s ahead, want 10", left)
	}
	if binary.NativeEndian.Uint32(v[12:]) != 0 || binary.NativeEndian.Uint32(v[16:]) != 9 || v[24] != 0xaa {
		t.Errorf("unset clock, local or plain bytes wrong after the apply: %x", v)
	}
	pr.fromWire(v, nil)
	if binary.NativeEndian.Uint32(v[16:]) != 0 {
		t.Error("a new entry's local bytes are not zero")
	}
}

// A scan's fingerprint ignores local and lock bytes and keeps the refresh
// fields apart.
func TestPrints(t *testing.T) {
	opts := mapopt.Options{Scan: time.Second, Refresh: []mapopt.Field{{Offset: 0, Size: 4}}, RefreshPeriod: time.Second,
		Local: []mapopt.Field{{Offset: 4, Size: 4}}}
	p, err := newFieldPlan(opts, 12, &monoClock{})
	if err != nil {
		t.Fatal(err)
	}
	seed := maphash.MakeSeed()
	v := make([]byte, 12)
	fp, rfp := p.prints(seed, v)
	v[5] = 1 // local
	if f, r := p.prints(seed, v); f != fp || r != rfp {
		t.Error("a local byte moved a print")
	}
	v[1] = 1 // refresh
	if f, r := p.prints(seed, v); f != fp || r == rfp {
		t.Error("a refresh byte did not move the refresh print alone")
	}
	v[9] = 1
	if f, _ := p.prints(seed, v); f == fp {
		t.Error("a plain byte did not move the print")
	}
	if _, err := newFieldPlan(mapopt.Options{Local: []mapopt.Field{{Name: "x", Offset: 10, Size: 4}}}, 12, &monoClock{}); err == nil {
		t.Error("a field past the value was taken")
	}
}

// The print table agrees with a Go map through puts, removals (which
// shift probe runs) and growth, and keeps each print's key beside it.
func TestPrintMap(t *testing.T) {
	pm := &printMap{keep: true, keySize: 8}
	pm.resize(printMinLen)
	want := map[uint64]uint64{}
	key := func(h uint64) []byte { return binary.LittleEndian.AppendUint64(nil, h) }
	rng := uint64(1)
	for range 20000 {
		rng = rng*6364136223846793005 + 1442695040888963407
		h := rng>>50 | 1 // few distinct hashes: many collide in their probe runs
		if rng&3 == 0 {
			if i := pm.find(h); i >= 0 {
				pm.removeAt(i)
			}
			delete(want, h)
			continue
		}
		i := pm.put(h, key(h))
		pm.set(i, h*3, 0, 0)
		want[h] = h * 3
	}
	if pm.n != len(want) {
		t.Fatalf("%d prints, want %d", pm.n, len(want))
	}
	for h, fp := range want {
		i := pm.find(h)
		if i < 0 || pm.slots[i].fp != fp || binary.LittleEndian.Uint64(pm.key(i)) != h {
			t.Fatalf("hash %#x: index %d", h, i)
		}
	}
}

// A clock field at the ends of its range, from a peer, is written within
// the field, set, and never wraps to the past or the future.
func TestClockFieldEnds(t *testing.T) {
	opts := mapopt.Options{Clocks: []mapopt.Clock{{Field: mapopt.Field{Offset: 0, Size: 8}, Kind: mapopt.MonoNS},
		{Field: mapopt.Field{Offset: 8, Size: 4}, Kind: mapopt.MonoS}}}
	p, err := newFieldPlan(opts, 12, &monoClock{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		w8      uint64
		w4      uint32
		future8 bool
		future4 bool
		name    string
	}{
		{math.MaxInt64, math.MaxInt32, true, true, "largest"},
		{1 << 63, 1 << 31, false, false, "most negative"},
		{math.MaxUint64, math.MaxUint32, false, false, "-1"},
	} {
		v := make([]byte, 12)
		binary.NativeEndian.PutUint64(v, c.w8)
		binary.NativeEndian.PutUint32(v[8:], c.w4)
		p.fromWire(v, nil)
		now := (&monoClock{}).read()
		got8, got4 := int64(binary.NativeEndian.Uint64(v)), int64(binary.NativeEndian.Uint32(v[8:]))
		if got8 == 0 || got4 == 0 || (got8 > now.mono) != c.future8 || (got4 > now.mono/1e9) != c.future4 {
			t.Errorf("%s: wrote %d and %d at %d", c.name, got8, got4, now.mono)
		}
	}
}

// A captured value's spin lock holds whatever its writer passed, which
// the kernel neither stores nor returns: the sender clears it, so that a
// local write that crossed an apply is still found in the map.
func TestCapturedLockCleared(t *testing.T) {
	f := newReceiverFixture(t)
	s := crossSender(t, f)
	m := f.tab.byID(10)
	var err error
	if m.plan, err = newFieldPlan(mapopt.Options{Lock: &mapopt.Field{Name: "lock", Size: 4}}, m.valueSize, &f.tab.mono); err != nil {
		t.Fatal(err)
	}
	s.drained = time.Now().Add(-time.Second) // the ring was last empty before the apply
	f.handle(peerA, f.stampedDatagram(t, 1, "key1", "remote", hlc.Make(time.Now().UnixMilli(), 0), 5))
	if got := f.value("key1"); got != "\x00\x00\x00\x00mote" {
		t.Fatalf("applied %q: the lock's bytes are not zero", got)
	}
	f.flows.state["key1"] = "\x00\x00\x00\x00ocal" // the local write came after the apply
	s.add(&loader.Change{MapID: 10, Op: ops.Update, Key: []byte("key1"), Value: []byte("LOCKocal")}, time.Now())
	s.stampStaged()
	if s.superseded != 0 || f.stats.RaceChecks.Load() != 1 {
		t.Fatalf("superseded %d, race checks %d: the write the map holds was dropped", s.superseded, f.stats.RaceChecks.Load())
	}
	if v, _ := knownVersion(f.n.know, m.index, "key1"); v.Origin != ourNode {
		t.Fatalf("knowledge %+v, want the local write's", v)
	}
}
