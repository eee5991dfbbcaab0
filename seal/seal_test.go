package seal

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
)

const (
	testNode  uint32 = 0x0a0b0c0d
	testEpoch uint64 = 1_764_000_000_123_456_789
	testHdr          = 28
)

func mustKeys(t testing.TB, keys ...[]byte) *Keys {
	t.Helper()
	k, err := NewKeys(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// datagram returns a header of hdr bytes and a body of n bytes, with room
// for the trailer.
func datagram(hdr, n int, seed byte) []byte {
	d := make([]byte, hdr+n, hdr+n+Overhead)
	for i := range d {
		d[i] = seed + byte(i*7)
	}
	return d
}

// withRoom returns a copy of d with room for the trailer.
func withRoom(d []byte) []byte {
	return append(make([]byte, 0, len(d)+Overhead), d...)
}

// sameStart reports whether a and b start at the same address: whether
// one was made from the other in place.
func sameStart(a, b []byte) bool { return &a[:cap(a)][0] == &b[:cap(b)][0] }

func mustSeal(t testing.TB, s *Sealer, d []byte, hdr int) []byte {
	t.Helper()
	out, err := s.Seal(d, hdr)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRoundTrip(t *testing.T) {
	keys := mustKeys(t, testKey(1))
	s := NewSealer(keys, testNode, testEpoch)
	o := NewOpener(keys)
	for _, hdr := range []int{0, 1, testHdr} {
		for _, n := range []int{0, 1, 15, 16, 17, 100, 1400, 9000} {
			orig := datagram(hdr, n, byte(n))
			d := withRoom(orig)
			sealed := mustSeal(t, s, d, hdr)
			if len(sealed) != len(orig)+Overhead || !sameStart(sealed, d) {
				t.Fatalf("Seal returned %d bytes (not in place?), want %d", len(sealed), len(orig)+Overhead)
			}
			if !bytes.Equal(sealed[:hdr], orig[:hdr]) {
				t.Errorf("header %d: Seal changed the header", hdr)
			}
			if n >= 8 && bytes.Equal(sealed[hdr:len(orig)], orig[hdr:]) {
				t.Errorf("body %d: Seal left the body in the clear", n)
			}
			trailer := binary.BigEndian.Uint64(sealed[len(orig):])
			plain, counter, err := o.Open(sealed, hdr, testNode, testEpoch)
			if err != nil {
				t.Fatalf("Open(header %d, body %d): %v", hdr, n, err)
			}
			if !bytes.Equal(plain, orig) || !sameStart(plain, sealed) {
				t.Fatalf("Open(header %d, body %d) returned other bytes than sealed", hdr, n)
			}
			if counter != trailer {
				t.Errorf("Open returned counter %d, trailer says %d", counter, trailer)
			}
		}
	}
}

func TestCounters(t *testing.T) {
	keys := mustKeys(t, testKey(1))
	s := NewSealer(keys, testNode, testEpoch)
	o := NewOpener(keys)
	for want := uint64(1); want <= 5; want++ {
		d := mustSeal(t, s, datagram(testHdr, 10, 0), testHdr)
		if got := binary.BigEndian.Uint64(d[testHdr+10:]); got != want {
			t.Fatalf("datagram %d has counter %d in its trailer", want, got)
		}
		if _, c, err := o.Open(d, testHdr, testNode, testEpoch); err != nil || c != want {
			t.Fatalf("Open of datagram %d = counter %d, %v", want, c, err)
		}
	}
}

// TestDerivation pins the construction: an independent implementation,
// from RFC 5869 HKDF and standard AES-256-GCM, produces the same bytes,
// and those bytes are the ones below, which change only with the format.
func TestDerivation(t *testing.T) {
	key := make([]byte, KeySize)
	for i := range key {
		key[i] = byte(i)
	}
	node, epoch := uint32(0x01020304), uint64(0x0102030405060708)
	header := []byte("udpmapsync-header")
	body := []byte("the body of the datagram")

	info := infoLabel + "\x01\x02\x03\x04\x01\x02\x03\x04\x05\x06\x07\x08"
	subkey, err := hkdf.Key(sha256.New, key, nil, info, 32)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := aes.NewCipher(subkey)
	gcm, _ := cipher.NewGCM(block)
	nonce := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1} // counter 1
	ct := gcm.Seal(nil, nonce, body, header)
	want := append(append(append(bytes.Clone(header), ct[:len(body)]...),
		0, 0, 0, 0, 0, 0, 0, 1), ct[len(body):]...)

	s := NewSealer(mustKeys(t, key), node, epoch)
	d := append(append(make([]byte, 0, 100), header...), body...)
	got := mustSeal(t, s, d, len(header))
	if !bytes.Equal(got, want) {
		t.Fatalf("Seal =\n%x, want\n%x", got, want)
	}
	const pinned = "7564706d617073796e632d686561646572" + // header
		"4bc21bff4b8931518cb85269c8016b2017212f2a9e2672c2" + // body
		"0000000000000001" + // counter
		"4aa11c74ca966d9ab9246efa22b203f8" // tag
	if hex.EncodeToString(got) != pinned {
		t.Errorf("Seal = %x, pinned %s", got, pinned)
	}
}

// TestBitFlips flips every bit of a sealed datagram, header, body, counter
// and tag, and expects each to fail, with the run cached and not.
func TestBitFlips(t *testing.T) {
	keys := mustKeys(t, testKey(1), testKey(2))
	s := NewSealer(keys, testNode, testEpoch)
	sealed := mustSeal(t, s, datagram(testHdr, 100, 3), testHdr)
	cached := NewOpener(keys)
	if _, _, err := cached.Open(bytes.Clone(sealed), testHdr, testNode, testEpoch); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		o    func() *Opener
	}{
		{"cached", func() *Opener { return cached }},
		{"new run", func() *Opener { return NewOpener(keys) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for i := range len(sealed) * 8 {
				d := bytes.Clone(sealed)
				d[i/8] ^= 1 << (i % 8)
				if _, _, err := tc.o().Open(d, testHdr, testNode, testEpoch); !errors.Is(err, ErrUnauthenticated) {
					t.Fatalf("Open with bit %d of byte %d flipped: %v", i%8, i/8, err)
				}
			}
		})
	}
	// And the cache still opens the original.
	if _, _, err := cached.Open(sealed, testHdr, testNode, testEpoch); err != nil {
		t.Fatal(err)
	}
}

func TestWrongRunOrHeaderLen(t *testing.T) {
	keys := mustKeys(t, testKey(1))
	sealed := mustSeal(t, NewSealer(keys, testNode, testEpoch), datagram(testHdr, 50, 0), testHdr)
	o := NewOpener(keys)
	for _, tc := range []struct {
		name  string
		hdr   int
		node  uint32
		epoch uint64
	}{
		{"other node", testHdr, testNode + 1, testEpoch},
		{"other epoch", testHdr, testNode, testEpoch + 1},
		{"shorter header", testHdr - 1, testNode, testEpoch},
		{"longer header", testHdr + 1, testNode, testEpoch},
		{"no header", 0, testNode, testEpoch},
	} {
		if _, _, err := o.Open(bytes.Clone(sealed), tc.hdr, tc.node, tc.epoch); !errors.Is(err, ErrUnauthenticated) {
			t.Errorf("Open with %s: %v", tc.name, err)
		}
	}
	if _, _, err := o.Open(sealed, testHdr, testNode, testEpoch); err != nil {
		t.Errorf("Open of the right run: %v", err)
	}
}

func TestKeys(t *testing.T) {
	a, b, c := testKey(0xa), testKey(0xb), testKey(0xc)
	for _, tc := range []struct {
		name       string
		send, recv [][]byte
		ok         bool
	}{
		{"same key", [][]byte{a}, [][]byte{a}, true},
		{"wrong key", [][]byte{a}, [][]byte{b}, false},
		{"wrong keys", [][]byte{a, b}, [][]byte{b, c}, false}, // a seals
		{"second key opens", [][]byte{b}, [][]byte{a, b}, true},
		{"first of two opens", [][]byte{a}, [][]byte{a, b}, true},
		{"rotation: swapped on sender", [][]byte{b, a}, [][]byte{a, b}, true},
		{"rotation: swapped on receiver", [][]byte{a, b}, [][]byte{b, a}, true},
		{"rotation: old key removed first", [][]byte{a}, [][]byte{b}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := NewSealer(mustKeys(t, tc.send...), testNode, testEpoch)
			o := NewOpener(mustKeys(t, tc.recv...))
			for i := range 3 { // the first opens a new run, the others the cached one
				orig := datagram(testHdr, 200, byte(i))
				sealed := mustSeal(t, s, withRoom(orig), testHdr)
				plain, _, err := o.Open(sealed, testHdr, testNode, testEpoch)
				switch {
				case tc.ok && err != nil:
					t.Fatalf("datagram %d: %v", i, err)
				case tc.ok && !bytes.Equal(plain, orig):
					t.Fatalf("datagram %d opens to other bytes", i)
				case !tc.ok && !errors.Is(err, ErrUnauthenticated):
					t.Fatalf("datagram %d: %v, want ErrUnauthenticated", i, err)
				}
			}
		})
	}
}

// TestTruncated opens every prefix of a sealed datagram, and the datagram
// with every header length: none opens, none panics.
func TestTruncated(t *testing.T) {
	keys := mustKeys(t, testKey(1), testKey(2))
	sealed := mustSeal(t, NewSealer(keys, testNode, testEpoch), datagram(testHdr, 40, 0), testHdr)
	o := NewOpener(keys)
	for n := range len(sealed) {
		for _, hdr := range []int{0, testHdr, n} {
			if _, _, err := o.Open(bytes.Clone(sealed[:n]), hdr, testNode, testEpoch); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("Open of %d of %d bytes, header %d: %v", n, len(sealed), hdr, err)
			}
		}
	}
	for _, hdr := range []int{-1, math.MinInt, len(sealed) - Overhead + 1, len(sealed), len(sealed) + 1, math.MaxInt} {
		if _, _, err := o.Open(bytes.Clone(sealed), hdr, testNode, testEpoch); !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("Open with header length %d: %v", hdr, err)
		}
	}
	if _, _, err := o.Open(nil, 0, testNode, testEpoch); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("Open(nil): %v", err)
	}
}

func TestCounterZero(t *testing.T) {
	// A trailer with counter 0 is refused before any cryptography: no
	// Sealer ever writes it.
	d := make([]byte, testHdr+Overhead)
	if _, _, err := NewOpener(mustKeys(t, testKey(1))).Open(d, testHdr, 0, 0); !errors.Is(err, ErrUnauthenticated) {
		t.Fatal(err)
	}
}

func TestSameBodyTwice(t *testing.T) {
	s := NewSealer(mustKeys(t, testKey(1)), testNode, testEpoch)
	a := mustSeal(t, s, datagram(testHdr, 64, 9), testHdr)
	b := mustSeal(t, s, datagram(testHdr, 64, 9), testHdr)
	if bytes.Equal(a[testHdr:testHdr+64], b[testHdr:testHdr+64]) {
		t.Error("the same body sealed twice gives the same ciphertext")
	}
	if bytes.Equal(a[len(a)-TagSize:], b[len(b)-TagSize:]) {
		t.Error("the same datagram sealed twice gives the same tag")
	}
	// The same for another run of the same node, with the same counter.
	c := mustSeal(t, NewSealer(mustKeys(t, testKey(1)), testNode, testEpoch+1), datagram(testHdr, 64, 9), testHdr)
	if bytes.Equal(a[testHdr:testHdr+64], c[testHdr:testHdr+64]) {
		t.Error("the same body sealed by two runs gives the same ciphertext")
	}
}

func TestSealErrors(t *testing.T) {
	s := NewSealer(mustKeys(t, testKey(1)), testNode, testEpoch)
	full := make([]byte, 40, 40+Overhead-1)
	if _, err := s.Seal(full, testHdr); !errors.Is(err, ErrShortBuffer) {
		t.Errorf("Seal with %d spare bytes: %v, want ErrShortBuffer", cap(full)-len(full), err)
	}
	if !bytes.Equal(full, make([]byte, 40)) || s.last.Load() != 0 {
		t.Error("a refused Seal changed the datagram or used a counter")
	}
	for _, hdr := range []int{-1, 41} {
		if _, err := s.Seal(make([]byte, 40, 100), hdr); !errors.Is(err, ErrHeaderLen) {
			t.Errorf("Seal with header length %d of 40: %v, want ErrHeaderLen", hdr, err)
		}
	}
}

func TestCounterExhausted(t *testing.T) {
	keys := mustKeys(t, testKey(1))
	s := NewSealer(keys, testNode, testEpoch)
	s.last.Store(math.MaxUint64 - 1)
	d := mustSeal(t, s, datagram(testHdr, 10, 0), testHdr)
	_, c, err := NewOpener(keys).Open(d, testHdr, testNode, testEpoch)
	if err != nil || c != math.MaxUint64 {
		t.Fatalf("the last counter: %d, %v", c, err)
	}
	for range 3 {
		if _, err := s.Seal(datagram(testHdr, 10, 0), testHdr); !errors.Is(err, ErrCounterExhausted) {
			t.Fatalf("Seal after the last counter: %v, want ErrCounterExhausted", err)
		}
	}
	if s.last.Load() != math.MaxUint64 {
		t.Fatal("the counter wrapped")
	}
}

// TestConcurrent seals from two goroutines, as the sender and the
// receiver's answers do, and opens from two: every counter is used once
// and every datagram opens.
func TestConcurrent(t *testing.T) {
	keys := mustKeys(t, testKey(1), testKey(2))
	s := NewSealer(keys, testNode, testEpoch)
	o := NewOpener(mustKeys(t, testKey(2), testKey(1)))
	const perG = 2000
	counters := make([][]uint64, 2)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			for i := range perG {
				d := mustSeal(t, s, datagram(testHdr, 1+i%300, byte(g)), testHdr)
				_, c, err := o.Open(d, testHdr, testNode, testEpoch)
				if err != nil {
					t.Error(err)
					return
				}
				counters[g] = append(counters[g], c)
			}
		})
	}
	wg.Wait()
	seen := make(map[uint64]bool)
	for _, cs := range counters {
		for _, c := range cs {
			if seen[c] || c == 0 || c > 2*perG {
				t.Fatalf("counter %d repeated or out of range", c)
			}
			seen[c] = true
		}
	}
}

func TestOpenerCache(t *testing.T) {
	keys := mustKeys(t, testKey(1))
	o := NewOpener(keys)
	sealers := make([]*Sealer, cacheSize+10)
	for i := range sealers {
		sealers[i] = NewSealer(keys, uint32(i), uint64(i)*1000)
	}
	open := func(i int) {
		t.Helper()
		d := mustSeal(t, sealers[i], datagram(testHdr, 30, byte(i)), testHdr)
		if _, _, err := o.Open(d, testHdr, uint32(i), uint64(i)*1000); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	cached := func() map[runID]bool {
		m := make(map[runID]bool)
		for _, e := range o.cache {
			if e.used != 0 {
				m[e.run] = true
			}
		}
		return m
	}
	// More runs than entries: the oldest are evicted, all still open.
	for i := range sealers {
		open(i)
	}
	if c := cached(); len(c) != cacheSize || c[runID{0, 0}] || !c[runID{uint32(len(sealers) - 1), uint64(len(sealers)-1) * 1000}] {
		t.Fatalf("after %d runs the cache holds %d, first evicted %v", len(sealers), len(c), !c[runID{0, 0}])
	}
	open(0) // evicted: derived again, and cached in place of the LRU
	if c := cached(); !c[runID{0, 0}] || c[runID{10, 10000}] {
		t.Fatal("a returning run did not evict the least recently used")
	}
	// Keep run 11 in use, then add a new run: 12, now the LRU, goes.
	open(11)
	open(1)
	if c := cached(); !c[runID{11, 11000}] || c[runID{12, 12000}] {
		t.Fatal("the cache evicted a recently used run")
	}

	// Forged datagrams naming runs not in the cache change nothing.
	before := o.cache
	rng := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		d := make([]byte, testHdr+40+Overhead)
		for i := range d {
			d[i] = byte(rng.Uint32())
		}
		if _, _, err := o.Open(d, testHdr, rng.Uint32(), rng.Uint64()); !errors.Is(err, ErrUnauthenticated) {
			t.Fatal(err)
		}
	}
	if o.cache != before {
		t.Fatal("forged datagrams changed the cache")
	}
}

func TestAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	keys := mustKeys(t, testKey(1), testKey(2))
	s := NewSealer(keys, testNode, testEpoch)
	o := NewOpener(keys)
	d := datagram(testHdr, 1400-testHdr, 0)
	var w ReplayWindow
	var err error
	for range 10 { // warm up the pool and the cache
		if _, err = s.Seal(d, testHdr); err != nil {
			t.Fatal(err)
		}
		if _, _, err = o.Open(d[:len(d)+Overhead], testHdr, testNode, testEpoch); err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(1000, func() { _, err = s.Seal(d, testHdr) }); n != 0 {
		t.Errorf("Seal allocates %v times", n)
	}
	sealed := bytes.Clone(mustSeal(t, s, d, testHdr))
	buf := make([]byte, len(sealed))
	if n := testing.AllocsPerRun(1000, func() {
		copy(buf, sealed)
		_, _, err = o.Open(buf, testHdr, testNode, testEpoch)
	}); n != 0 || err != nil {
		t.Errorf("Open allocates %v times (%v)", n, err)
	}
	if n := testing.AllocsPerRun(1000, func() {
		copy(buf, sealed)
		buf[testHdr] ^= 1
		_, _, err = o.Open(buf, testHdr, testNode, testEpoch)
	}); n != 0 || err == nil {
		t.Errorf("a failed Open allocates %v times (%v)", n, err)
	}
	var c uint64
	if n := testing.AllocsPerRun(1000, func() { c += 3; w.Accept(c) }); n != 0 {
		t.Errorf("Accept allocates %v times", n)
	}
}

func benchSeal(b *testing.B, size int) {
	s := NewSealer(mustKeys(b, testKey(1)), testNode, testEpoch)
	d := datagram(testHdr, size-testHdr, 0)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Seal(d, testHdr); err != nil {
			b.Fatal(err)
		}
	}
}

func benchOpen(b *testing.B, size int) {
	keys := mustKeys(b, testKey(1))
	o := NewOpener(keys)
	sealed := mustSeal(b, NewSealer(keys, testNode, testEpoch), datagram(testHdr, size-testHdr, 0), testHdr)
	buf := make([]byte, len(sealed))
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, sealed)
		if _, _, err := o.Open(buf, testHdr, testNode, testEpoch); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSeal1400 and BenchmarkOpen1400 time the datagrams of a
// 1500-byte MTU: 1400 bytes, the header included, before the trailer.
func BenchmarkSeal1400(b *testing.B) { benchSeal(b, 1400) }

// BenchmarkOpen1400: see BenchmarkSeal1400. The copy that restores the
// sealed datagram each time is included.
func BenchmarkOpen1400(b *testing.B) { benchOpen(b, 1400) }

// BenchmarkSeal64 and BenchmarkOpen64 time small datagrams, such as an
// announce or a repair request, where the fixed costs show.
func BenchmarkSeal64(b *testing.B) { benchSeal(b, 64) }

// BenchmarkOpen64: see BenchmarkSeal64.
func BenchmarkOpen64(b *testing.B) { benchOpen(b, 64) }

// BenchmarkSealParallel seals from every P with one Sealer, which they
// share through its atomic counter.
func BenchmarkSealParallel(b *testing.B) {
	s := NewSealer(mustKeys(b, testKey(1)), testNode, testEpoch)
	b.SetBytes(1400)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := datagram(testHdr, 1400-testHdr, 0)
		for pb.Next() {
			if _, err := s.Seal(d, testHdr); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkOpenForgedRun is the cost of a forged datagram that names a run
// the Opener has not seen, under one key and under two: the subkeys'
// derivation is what a forger makes a receiver pay.
func BenchmarkOpenForgedRun(b *testing.B) {
	for _, n := range []int{1, 2} {
		b.Run(map[int]string{1: "one-key", 2: "two-keys"}[n], func(b *testing.B) {
			o := NewOpener(mustKeys(b, [][]byte{testKey(1), testKey(2)}[:n]...))
			d := datagram(testHdr, 1400-testHdr, 0)[:1400+Overhead]
			b.ReportAllocs()
			var epoch uint64
			for b.Loop() {
				epoch++
				d[len(d)-Overhead+CounterSize-1] = 1
				if _, _, err := o.Open(d, testHdr, testNode, epoch); err == nil {
					b.Fatal("a forged datagram opened")
				}
			}
		})
	}
}
