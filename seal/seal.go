package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"sync"
	"sync/atomic"
)

// Trailer layout: what [Sealer.Seal] appends to a datagram.
const (
	CounterSize = 8                     // the datagram counter, big-endian
	TagSize     = 16                    // the AES-256-GCM tag
	Overhead    = CounterSize + TagSize // bytes Seal adds: [counter][tag]
)

// infoLabel starts the HKDF info of every run's subkey, see the package
// documentation.
const infoLabel = "udpmapsync v2 datagram"

// nonceSize is AES-GCM's standard nonce size: 4 zero bytes, then the
// counter.
const nonceSize = 12

// noncePool holds nonce buffers. A nonce passed to cipher.AEAD, an
// interface, escapes to the heap, so a nonce on the stack would cost an
// allocation per datagram; a pooled one costs none.
var noncePool = sync.Pool{New: func() any { return new([nonceSize]byte) }}

func getNonce(counter uint64) *[nonceSize]byte {
	n := noncePool.Get().(*[nonceSize]byte)
	*n = [nonceSize]byte{}
	binary.BigEndian.PutUint64(n[nonceSize-CounterSize:], counter)
	return n
}

// subkey returns the AEAD of the run (node, epoch) under key i: AES-256-GCM
// keyed with HKDF-SHA256(key, info = infoLabel || node || epoch), the
// Extract half of which [Keys] did once.
func (k *Keys) subkey(i int, node uint32, epoch uint64) cipher.AEAD {
	var info [len(infoLabel) + 4 + 8]byte
	copy(info[:], infoLabel)
	binary.BigEndian.PutUint32(info[len(infoLabel):], node)
	binary.BigEndian.PutUint64(info[len(infoLabel)+4:], epoch)
	key, err := hkdf.Expand(sha256.New, k.prk[i][:], string(info[:]), KeySize)
	if err != nil {
		panic("seal: hkdf expand: " + err.Error()) // 32 bytes of SHA-256 cannot fail
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		panic("seal: aes: " + err.Error()) // the key is 32 bytes
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic("seal: gcm: " + err.Error()) // AES has GCM's block size
	}
	return aead
}

// Sealer seals the datagrams of one sending run: one node, one epoch, from
// the start of the run to its end. Create one per run with [NewSealer] and
// share it between every goroutine that sends for the run: a Sealer is safe
// for concurrent use, and two Sealers for the same keys, node and epoch
// would repeat nonces.
type Sealer struct {
	aead cipher.AEAD
	// last is the last counter handed out; 0 before the first datagram.
	last atomic.Uint64
}

// NewSealer returns the Sealer of the run (node, epoch), sealing with the
// first of keys. The epoch must never have been used by node before with
// the same key: take it from package epoch, which guarantees that across
// restarts, and never call NewSealer twice for one run.
func NewSealer(keys *Keys, node uint32, epoch uint64) *Sealer {
	return &Sealer{aead: keys.subkey(0, node, epoch)}
}

// Seal seals the datagram d in place and returns it with the trailer
// appended: d[:len(d)+Overhead]. The first headerLen bytes of d are the
// header, authenticated but left as they are; the rest is the body,
// encrypted. The trailer is the run's next counter, 8 bytes big-endian,
// then the 16-byte tag, which covers header, body and counter.
//
// d must have Overhead bytes of spare capacity, which Seal overwrites;
// otherwise it returns [ErrShortBuffer] and leaves d alone. It returns
// [ErrHeaderLen] for a headerLen outside d and [ErrCounterExhausted] once
// the run has sealed 2^64-1 datagrams. Seal does not allocate.
//
// Every datagram the run sends takes a new counter, including a resend:
// seal the original's plain bytes again rather than resend sealed ones,
// which the receiver's [ReplayWindow] drops as replays or as too old.
func (s *Sealer) Seal(d []byte, headerLen int) ([]byte, error) {
	n := len(d)
	if headerLen < 0 || headerLen > n {
		return nil, ErrHeaderLen
	}
	if cap(d)-n < Overhead {
		return nil, ErrShortBuffer
	}
	counter, err := s.next()
	if err != nil {
		return nil, err
	}
	nonce := getNonce(counter)
	// Out: d[headerLen:n] encrypted in place, the tag at d[n:n+TagSize].
	s.aead.Seal(d[headerLen:headerLen], nonce[:], d[headerLen:n], d[:headerLen])
	noncePool.Put(nonce)
	d = d[:n+Overhead]
	copy(d[n+CounterSize:], d[n:n+TagSize]) // the tag goes after the counter
	binary.BigEndian.PutUint64(d[n:], counter)
	return d, nil
}

// next hands out the next counter, from 1 up to 2^64-1 and never again:
// a wrap would repeat nonces.
func (s *Sealer) next() (uint64, error) {
	for {
		c := s.last.Load()
		if c == math.MaxUint64 {
			return 0, ErrCounterExhausted
		}
		if s.last.CompareAndSwap(c, c+1) {
			return c + 1, nil
		}
	}
}

// cacheSize is how many runs' subkeys an Opener keeps: many more than the
// nodes of a cluster, so that only a burst of new runs evicts a live one.
const cacheSize = 64

type runID struct {
	node  uint32
	epoch uint64
}

type cacheEntry struct {
	run  runID
	used uint64 // Opener.tick at the last use; 0: empty
	aead cipher.AEAD
}

// Opener opens the datagrams sealed by the [Sealer]s of peers that share
// its keys. It keeps the subkeys of the 64 runs it opened datagrams of
// most recently: a datagram of one of them costs one AES-256-GCM open,
// with no allocation.
//
// A datagram of a run not in the cache costs, for each key until one
// opens it, one HKDF and one AES-GCM key setup: about 4µs and 2 KiB of
// garbage. The run enters the cache only once one of its datagrams has
// opened, so forged datagrams naming made-up runs cost that much CPU each
// but neither grow memory nor evict a peer's run.
//
// An Opener is safe for concurrent use.
type Opener struct {
	keys *Keys

	mu    sync.Mutex // guards cache, tick, hint
	cache [cacheSize]cacheEntry
	tick  uint64
	hint  int // index of the entry last used

	missMu  sync.Mutex // serializes opens of runs not in the cache
	scratch []byte     // out-of-place opens under all but the last key
}

// NewOpener returns an Opener that opens with every key of keys, the first
// key first.
func NewOpener(keys *Keys) *Opener {
	return &Opener{keys: keys}
}

// Open authenticates and decrypts in place the datagram d, which the run
// (node, epoch) sealed with a headerLen-byte header, and returns the
// header and the plain body, d[:len(d)-Overhead], and the datagram's
// counter. Node and epoch are the header's: the header is authenticated,
// so a datagram whose header names another run does not open.
//
// A datagram that does not open, whatever the reason, yields
// [ErrUnauthenticated], and d's contents are then unspecified. Open checks
// only authenticity: to drop replays, pass the counter of every datagram
// that opened to the run's [ReplayWindow].
//
// A run seals with one key for its whole life, so once a datagram of a
// run has opened, the Opener opens the run's later datagrams with that
// key only.
func (o *Opener) Open(d []byte, headerLen int, node uint32, epoch uint64) (plain []byte, counter uint64, err error) {
	if headerLen < 0 || len(d)-headerLen < Overhead {
		return nil, 0, ErrUnauthenticated
	}
	n := len(d) - Overhead
	counter = binary.BigEndian.Uint64(d[n:])
	if counter == 0 { // never sealed
		return nil, 0, ErrUnauthenticated
	}
	// The AEAD wants the tag right after the ciphertext: move it over
	// the counter, already read.
	copy(d[n:n+TagSize], d[n+CounterSize:])
	sealed := d[headerLen : n+TagSize]
	run := runID{node, epoch}

	aead := o.lookup(run)
	if aead == nil {
		return o.openNew(d, headerLen, sealed, run, counter)
	}
	nonce := getNonce(counter)
	_, err = aead.Open(sealed[:0], nonce[:], sealed, d[:headerLen])
	noncePool.Put(nonce)
	if err != nil {
		return nil, 0, ErrUnauthenticated
	}
	return d[:n], counter, nil
}

// openNew opens a datagram of a run not in the cache: under each key in
// turn, deriving the run's subkey, and caches the subkey that opens it.
// All but the last key open out of place, into scratch, since a failed
// open in place leaves the ciphertext unspecified.
func (o *Opener) openNew(d []byte, headerLen int, sealed []byte, run runID, counter uint64) ([]byte, uint64, error) {
	o.missMu.Lock()
	defer o.missMu.Unlock()
	nonce := getNonce(counter)
	defer noncePool.Put(nonce)
	header := d[:headerLen]
	last := o.keys.n - 1
	if last > 0 && cap(o.scratch) < len(sealed) {
		o.scratch = make([]byte, 0, len(sealed))
	}
	for i := 0; i <= last; i++ {
		aead := o.keys.subkey(i, run.node, run.epoch)
		if i == last {
			if _, err := aead.Open(sealed[:0], nonce[:], sealed, header); err != nil {
				return nil, 0, ErrUnauthenticated
			}
		} else {
			plain, err := aead.Open(o.scratch[:0], nonce[:], sealed, header)
			if err != nil {
				continue
			}
			copy(sealed, plain)
		}
		o.insert(run, aead)
		return d[:len(d)-Overhead], counter, nil
	}
	return nil, 0, ErrUnauthenticated // not reached: keys.n >= 1
}

// lookup returns the cached AEAD of run, or nil.
func (o *Opener) lookup(run runID) cipher.AEAD {
	o.mu.Lock()
	defer o.mu.Unlock()
	if e := &o.cache[o.hint]; e.used != 0 && e.run == run {
		o.tick++
		e.used = o.tick
		return e.aead
	}
	for i := range o.cache {
		if e := &o.cache[i]; e.used != 0 && e.run == run {
			o.tick++
			e.used = o.tick
			o.hint = i
			return e.aead
		}
	}
	return nil
}

// insert caches the AEAD of run, in an empty entry or else in place of the
// least recently used.
func (o *Opener) insert(run runID, aead cipher.AEAD) {
	o.mu.Lock()
	defer o.mu.Unlock()
	victim := 0
	for i := range o.cache {
		e := &o.cache[i]
		if e.used != 0 && e.run == run { // cached meanwhile: keep it
			victim = i
			break
		}
		if e.used < o.cache[victim].used {
			victim = i
		}
	}
	o.tick++
	o.cache[victim] = cacheEntry{run: run, used: o.tick, aead: aead}
	o.hint = victim
}
