package seal

import (
	"bytes"
	"errors"
	"testing"
)

// fuzzSealed is a datagram sealed for FuzzOpen, with what opens it.
type fuzzSealed struct {
	headerLen int
	node      uint32
	epoch     uint64
	counter   uint64
	plain     []byte
}

// FuzzOpen feeds arbitrary bytes, header lengths and runs to Open, with
// one key and with two. Nothing panics, and nothing opens unless a Sealer
// of the test sealed it: the seeds are sealed datagrams, and whatever the
// fuzzer makes of them must be refused.
func FuzzOpen(f *testing.F) {
	a, b := testKey(0xa1), testKey(0xb2)
	known := make(map[string]fuzzSealed) // by sealed bytes
	add := func(keys *Keys, node uint32, epoch uint64, hdr, n int) {
		s := NewSealer(keys, node, epoch)
		for i := range 2 {
			plain := datagram(hdr, n, byte(n+i))
			sealed := mustSeal(f, s, withRoom(plain), hdr)
			known[string(sealed)] = fuzzSealed{hdr, node, epoch, uint64(i + 1), plain}
			f.Add(bytes.Clone(sealed), hdr, node, epoch)
		}
	}
	add(mustKeys(f, a), 1, 100, testHdr, 0)
	add(mustKeys(f, a), 1, 100, testHdr, 1400-testHdr)
	add(mustKeys(f, a), 2, 1<<60, 0, 33)
	add(mustKeys(f, b), 3, 7, testHdr, 17) // opens under the second key only
	f.Add([]byte{}, 0, uint32(0), uint64(0))
	f.Add(make([]byte, Overhead), 0, uint32(1), uint64(100))
	f.Add(make([]byte, testHdr+Overhead), -1, uint32(1), uint64(100))

	// Openers live across inputs, so that their caches see many.
	openers := []*Opener{NewOpener(mustKeys(f, a)), NewOpener(mustKeys(f, a, b)), NewOpener(mustKeys(f, b, a))}
	f.Fuzz(func(t *testing.T, d []byte, headerLen int, node uint32, epoch uint64) {
		k, isKnown := known[string(d)]
		isKnown = isKnown && k.headerLen == headerLen && k.node == node && k.epoch == epoch
		for i, o := range openers {
			plain, counter, err := o.Open(bytes.Clone(d), headerLen, node, epoch)
			if err != nil {
				if !errors.Is(err, ErrUnauthenticated) {
					t.Fatalf("opener %d: error %v, want ErrUnauthenticated", i, err)
				}
				if isKnown && (i > 0 || k.node != 3) {
					t.Fatalf("opener %d: a sealed datagram did not open: %v", i, err)
				}
				continue
			}
			if !isKnown {
				t.Fatalf("opener %d opened %x (header %d, run %d/%d), which no Sealer sealed", i, d, headerLen, node, epoch)
			}
			if !bytes.Equal(plain, k.plain) || counter != k.counter {
				t.Fatalf("opener %d: sealed datagram opened to %x, counter %d; want %x, %d", i, plain, counter, k.plain, k.counter)
			}
		}
	})
}
