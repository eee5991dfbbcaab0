package replication

import (
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/udpmapsync/udpmapsync/counter"
	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/mapopt"
)

// A merge=sum map is replicated as its contributions: a map of its own,
// the *contribution map*, whose key is the counter map's key followed by
// the origin node's id (4 bytes, big-endian), and whose value is the
// contribution (see package counter) in its wire form. Each origin writes
// only its own keys, so last-writer-wins on the contribution map is
// exactly the per-origin register the sum rule needs, and the protocol
// carries it unchanged: sequences, repairs, resyncs, digest rounds and
// the state file. [CounterTarget] is its [Target]: it merges what is
// written into it into the kernel map's counters with the atomic adds of
// a [loader.Adder], and reads this node's own contribution from the
// kernel map's values, so that the scanner sends it when it moves.
const (
	originSize = 4
	// contribHeader is the reset's stamp and origin, then the
	// contribution's stamp, before the words.
	contribHeader = 8 + 4 + 8
)

// counterKernel is the kernel map of a sum map, as a [CounterTarget] uses
// it. *loader.Map implements it.
type counterKernel interface {
	Dump(keys, values []byte, fn func(keys, values []byte) error) error
	Lookup(key, value []byte) (bool, error)
	DeleteBatch(keys []byte) (missing int, err error)
	UpdateBatch(keys, values []byte) error
}

// counterAdder adds deltas to the kernel map's counters atomically.
// *loader.Adder implements it.
type counterAdder interface {
	Add(keys, deltas []byte) (failed int, err error)
}

// CounterTarget is the [Target] of a sum map's contribution map. It is
// safe for concurrent use.
type CounterTarget struct {
	kernel  counterKernel
	adder   counterAdder
	self    uint32
	origins int
	keySize int // the counter map's
	words   int
	cpus    int // the kernel map's values per key: 1, or its CPUs for a per-CPU map
	now     func() time.Time

	// OriginsFull counts the contributions refused because their key held
	// as many origins as it may (mapopt's origins option).
	OriginsFull atomic.Uint64
	// FutureStamps counts the contributions refused because their reset
	// or their own stamp was more than hlc.MaxSkew ahead of this node's
	// clock: taken, such a stamp would outrank every honest reset or
	// contribution of the key until that time.
	FutureStamps atomic.Uint64
	// ResetsDropped counts the resets of keys the kernel map no longer
	// holds forgotten before the horizon, because as many as the map's
	// max_entries were remembered (see [CounterTarget.forget]).
	ResetsDropped atomic.Uint64

	mu   sync.Mutex
	keys map[string]*counterKey
	gen  uint32 // of the read in progress
	// writes counts UpdateBatch's calls (see [counterKey.merged]).
	writes uint32
	last   hlc.Stamp // the latest stamp this node gave a contribution or reset
	// horizon is how long the reset of a key the kernel map no longer
	// holds is remembered, the tombstone horizon; maxGone how many such
	// keys at most, the map's max_entries (see [CounterTarget.forget]).
	horizon time.Duration
	maxGone int
	// Buffers, reused under mu.
	kkeys, kvals       []byte // a batch read from the kernel map
	addKeys, addDeltas []byte // a batch of adds
	addNew             []bool // per add: whether the batch made its key's state
	value, local, d    []uint64
}

type counterKey struct {
	k    counter.Key
	seen uint32 // the read that found the key in the kernel map
	// merged is the writes count of the UpdateBatch that last merged a
	// contribution into the key: a value of the kernel map read before
	// it, without mu, lacks what it added (see [CounterTarget.Dump]).
	merged uint32
}

// counterBatch is how many entries of the kernel map a read takes at once.
const counterBatch = 256

// CounterMap describes the sum map m (as [MapFromLoader] describes it)
// for [NewTable]: its contribution map, with t as its target, which
// remembers the resets of at most the map's max_entries keys it no longer
// holds (see [CounterTarget.forget]). The
// descriptor differs from a last-writer-wins map's of the same name (the
// key and value sizes), so a node that sums never applies the records of
// one that does not.
func CounterMap(m Map, t *CounterTarget, opts mapopt.Options) Map {
	d := m.Desc
	d.KeySize += originSize
	d.ValueSize = uint32(contribHeader + 8*t.words)
	t.mu.Lock()
	t.maxGone = int(max(d.MaxEntries, 1))
	t.mu.Unlock()
	d.MaxEntries *= uint32(t.origins)
	return Map{Desc: d, ID: m.ID, Target: t, Options: opts}
}

// NewCounterTarget makes the target of the sum map whose kernel map is
// kernel (keySize and valueSize bytes; the value a vector of 64-bit
// counters; cpus values per key, one per CPU, for a per-CPU map, whose
// node's count is their sum, else 1), on node self, adding with adder;
// origins is the map's origins option, now the node's clock. It
// remembers resets for [DefaultTombstoneHorizon] unless
// [CounterTarget.SetHorizon] says otherwise.
func NewCounterTarget(kernel counterKernel, adder counterAdder, keySize, valueSize, cpus int, self uint32, origins int, now func() time.Time) *CounterTarget {
	w := valueSize / 8
	return &CounterTarget{kernel: kernel, adder: adder, self: self, origins: origins, keySize: keySize, words: w, cpus: cpus, now: now,
		horizon: DefaultTombstoneHorizon, maxGone: counterBatch,
		keys:  make(map[string]*counterKey),
		kkeys: make([]byte, counterBatch*keySize), kvals: make([]byte, counterBatch*valueSize*cpus),
		value: make([]uint64, w), local: make([]uint64, w), d: make([]uint64, w)}
}

// SetHorizon sets how long the reset of a key the kernel map no longer
// holds is remembered: the node's --tombstone-horizon, the time its
// deletes are remembered.
func (t *CounterTarget) SetHorizon(h time.Duration) {
	t.mu.Lock()
	t.horizon = h
	t.mu.Unlock()
}

// Keys returns how many keys the target keeps state of (a reset, or
// contributions), and the bound it keeps them within: the keys the kernel
// map holds, at most its max_entries, and as many it no longer holds
// (see [CounterTarget.forget]).
func (t *CounterTarget) Keys() (keys, bound int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.keys), 2 * t.maxGone
}

func (t *CounterTarget) entrySize() (int, int) {
	return t.keySize + originSize, contribHeader + 8*t.words
}

// stamp is a stamp of this node's for a contribution or a reset, later
// than every one it gave before and than after.
func (t *CounterTarget) stamp(after hlc.Stamp) hlc.Stamp {
	s := max(hlc.Make(t.now().UnixMilli(), 0), t.last+1, after+1)
	t.last = s
	return s
}

// UpdateBatch merges contributions written into the contribution map (a
// peer's, applied by the receiver; this node's own only after it lost its
// counters in a crash) into the kernel map: a contribution counted from a
// newer reset deletes the key first, and what the contribution grew by
// is added with the kernel program's atomic adds.
func (t *CounterTarget) UpdateBatch(keys, values []byte) error {
	ks, vs := t.entrySize()
	if len(keys)%ks != 0 || len(values) != len(keys)/ks*vs {
		return fmt.Errorf("counter map: %d key bytes and %d value bytes are not whole entries", len(keys), len(values))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.writes++
	t.addKeys, t.addDeltas, t.addNew = t.addKeys[:0], t.addDeltas[:0], t.addNew[:0]
	limit := hlc.Make(t.now().Add(hlc.MaxSkew).UnixMilli(), 0)
	for o := range len(keys) / ks {
		key, origin := keys[o*ks:o*ks+t.keySize], binary.BigEndian.Uint32(keys[o*ks+t.keySize:])
		c := t.decode(origin, values[o*vs:(o+1)*vs])
		if c.Reset.Stamp > limit || c.Stamp > limit {
			t.FutureStamps.Add(1)
			continue
		}
		if t.keys[string(key)] == nil && !counted(c.Words) && c.Reset.Stamp < t.forgotten() {
			// A reset older than the horizon of a key not held, and
			// nothing counted from it: what [CounterTarget.forget] forgot.
			continue
		}
		_, known := t.keys[string(key)]
		ck := t.key(key)
		ck.merged = t.writes
		var reset, add bool
		var err error
		if own, _ := ck.k.Own(t.self); origin == t.self && ck.k.Regain(t.self, c, t.stampAfter(own.Stamp), t.d) {
			// Counts this node sent before a crash, above what it
			// counted since: added again, and sent at the next scan.
			own, _ = ck.k.Own(t.self)
			t.last, add = max(t.last, own.Stamp), true
		} else if reset, add, err = ck.k.Merge(c, t.origins, t.d); errors.Is(err, counter.ErrOriginsFull) {
			t.OriginsFull.Add(1)
		}
		if reset {
			if err := t.flushAdds(); err != nil {
				return err
			}
			if err := t.clear(key); err != nil {
				return fmt.Errorf("counter map: reset a key: %w", err)
			}
		}
		if add {
			t.addKeys, t.addNew = append(t.addKeys, key...), append(t.addNew, !known)
			for _, d := range t.d {
				t.addDeltas = binary.NativeEndian.AppendUint64(t.addDeltas, d)
			}
		}
	}
	return t.flushAdds()
}

func (t *CounterTarget) flushAdds() error {
	if len(t.addKeys) == 0 {
		return nil
	}
	failed, err := t.adder.Add(t.addKeys, t.addDeltas)
	defer func() { t.addKeys, t.addDeltas, t.addNew = t.addKeys[:0], t.addDeltas[:0], t.addNew[:0] }()
	if err != nil {
		return err
	}
	if failed == 0 {
		return nil
	}
	// The map is full. A key the batch made whose add found no room is
	// forgotten: kept, the contribution would count as applied to a
	// value the map does not hold, and the next scan would read the key
	// as deleted here, a reset of its counts on every node; and the keys
	// kept would grow past the map's. Its contribution comes again (a
	// repair, a digest round) once there is room.
	raw := make([]byte, 8*t.words*t.cpus)
	for i, made := range t.addNew {
		key := t.addKeys[i*t.keySize : (i+1)*t.keySize]
		if !made {
			continue
		}
		if held, err := t.kernel.Lookup(key, raw); err == nil && !held {
			delete(t.keys, string(key))
		}
	}
	return fmt.Errorf("counter map: %d contributions could not be added: the map is full", failed)
}

// DeleteBatch deletes contribution entries. Contributions are cleared
// only by resets, which travel inside them, so it changes nothing: a
// delete of one arrives only when a node found it missing from its
// contribution map (it held no counters of the key), and the next
// contribution of that origin is merged by its own stamp.
func (t *CounterTarget) DeleteBatch(keys []byte) (missing int, err error) { return 0, nil }

// Lookup reads one entry of the contribution map as recorded: this
// node's own contribution as the last scan read it (see
// [CounterTarget.Scanning]), a peer's as merged.
func (t *CounterTarget) Lookup(key, value []byte) (bool, error) {
	ks, vs := t.entrySize()
	if len(key) != ks || len(value) != vs {
		return false, fmt.Errorf("counter map: lookup with %d key bytes and %d value bytes", len(key), len(value))
	}
	k, origin := key[:t.keySize], binary.BigEndian.Uint32(key[t.keySize:])
	t.mu.Lock()
	defer t.mu.Unlock()
	ck := t.keys[string(k)]
	if ck == nil {
		return false, nil
	}
	if origin == t.self {
		t.encodeOwn(ck, value)
		return true, nil
	}
	found := false
	ck.k.Contributions(func(c counter.Contribution) {
		if c.Origin == origin {
			t.encode(c, value)
			found = true
		}
	})
	return found, nil
}

// Dump reads the contribution map as recorded, in key order: every key
// the target keeps, with this node's own contribution as the last scan
// read it, even when it holds none (it carries the key's reset), then
// every peer's. A digest round, a snapshot, the state file read it so:
// only a scan reads the own contribution anew from the kernel map, and
// records what moved (see [CounterTarget.Scanning]).
func (t *CounterTarget) Dump(keys, values []byte, fn func(keys, values []byte) error) error {
	em, err := t.emitter(keys, values, fn)
	if err != nil {
		return err
	}
	t.mu.Lock()
	held := slices.Sorted(maps.Keys(t.keys))
	t.mu.Unlock()
	var out []byte
	for len(held) > 0 {
		n := min(len(held), counterBatch)
		out = out[:0]
		t.mu.Lock()
		for _, k := range held[:n] {
			if ck := t.keys[k]; ck != nil { // not forgotten meanwhile
				out = t.appendKey(out, ck, []byte(k))
			}
		}
		t.mu.Unlock()
		if err := em.emit(out); err != nil {
			return err
		}
		held = held[n:]
	}
	return em.flush()
}

// Scanning returns the reader of the contribution map for a scan, which
// records every entry that moved as a write of this node: the
// contribution map with this node's own contributions read anew from the
// kernel map's values (see [CounterTarget.scan]). No other read advances
// them: a contribution advanced but not recorded went to peers under the
// version of an older one, and a read that took its kernel batch before
// another read advanced it saw the value gone down, a reset of the key
// on every node.
func (t *CounterTarget) Scanning() knowledge.Dumper { return counterScan{t} }

type counterScan struct{ t *CounterTarget }

func (s counterScan) Dump(keys, values []byte, fn func(keys, values []byte) error) error {
	return s.t.scan(keys, values, fn)
}

func (t *CounterTarget) emitter(keys, values []byte, fn func(keys, values []byte) error) (*emitter, error) {
	ks, vs := t.entrySize()
	n := min(len(keys)/ks, len(values)/vs)
	if n == 0 {
		return nil, fmt.Errorf("counter map: dump buffers hold no entry")
	}
	return &emitter{keys: keys[:n*ks], values: values[:n*vs], ks: ks, vs: vs, fn: fn}, nil
}

// scan reads the contribution map for [CounterTarget.Scanning]: for every
// key of the kernel map or with contributions held, this node's own
// contribution, read from the kernel map's value as it is now (the value
// less every peer's contribution added to it), then every peer's. A key
// this node held counts of that the kernel map no longer holds was
// deleted here: a reset, which this node's contribution carries to the
// peers.
func (t *CounterTarget) scan(keys, values []byte, fn func(keys, values []byte) error) error {
	em, err := t.emitter(keys, values, fn)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.gen++
	gen, writes := t.gen, t.writes
	t.mu.Unlock()
	vl := 8 * t.words * t.cpus
	raw := make([]byte, vl)
	var out []byte
	err = t.kernel.Dump(t.kkeys, t.kvals, func(kk, kv []byte) error {
		t.mu.Lock()
		out = out[:0]
		for o := range len(kk) / t.keySize {
			key := kk[o*t.keySize : (o+1)*t.keySize]
			ck := t.key(key)
			ck.seen = gen
			value, held := kv[o*vl:(o+1)*vl], true
			if int32(ck.merged-writes) > 0 {
				// A peer's contribution merged after the batch was read
				// is held but not in the value read, which would look
				// gone down: a reset. Read it again. (A node's scan
				// reads under the knowledge lock, which keeps applies
				// out; a read without it does not.)
				var err error
				if held, err = t.kernel.Lookup(key, raw); err != nil {
					t.mu.Unlock()
					return err
				}
				value = raw
			}
			t.readOwn(ck, value, held)
			out = t.appendKey(out, ck, key)
		}
		writes = t.writes // the next batch is read after this
		t.mu.Unlock()
		return em.emit(out)
	})
	if err != nil {
		return err
	}
	// The keys the read did not find: deleted, or created by an apply
	// after the read passed them.
	t.mu.Lock()
	var unseen []string
	for k, ck := range t.keys {
		if ck.seen != gen {
			unseen = append(unseen, k)
		}
	}
	t.mu.Unlock()
	slices.Sort(unseen) // the same order on every run: a simulator replays it
	var gone []string
	for _, k := range unseen {
		key := []byte(k)
		t.mu.Lock()
		held, err := t.kernel.Lookup(key, raw) // under mu: no apply in between
		if err != nil {
			t.mu.Unlock()
			return err
		}
		ck := t.keys[k]
		if ck == nil { // forgotten by a Dump run meanwhile
			t.mu.Unlock()
			continue
		}
		t.readOwn(ck, raw, held)
		if !held && !ck.counted() {
			if ck.k.Reset().Stamp < t.forgotten() {
				delete(t.keys, k)
				t.mu.Unlock()
				continue
			}
			gone = append(gone, k)
		}
		out = t.appendKey(out[:0], ck, key)
		t.mu.Unlock()
		if err := em.emit(out); err != nil {
			return err
		}
	}
	t.forget(gone)
	return em.flush()
}

// counted reports whether any word of the key's contributions is not
// zero.
func (ck *counterKey) counted() bool {
	n := false
	ck.k.Contributions(func(c counter.Contribution) { n = n || counted(c.Words) })
	return n
}

func counted(words []uint64) bool {
	for _, w := range words {
		if w != 0 {
			return true
		}
	}
	return false
}

// forgotten is the stamp before which the reset of a key the kernel map
// does not hold is forgotten: the horizon ago.
func (t *CounterTarget) forgotten() hlc.Stamp {
	return hlc.Make(t.now().Add(-t.horizon).UnixMilli(), 0)
}

// forget bounds what the target keeps of the keys the kernel map no
// longer holds. Such a key (gone, found by a Dump: reset, and nothing
// counted since) is kept only for its reset, which refuses a peer's late
// contribution counted from before it, and is forgotten once the reset
// is older than the horizon, as a delete's tombstone is: a contribution
// counted from before it that arrives later still, from a node cut off
// longer than that, counts again. Of more gone keys than the map's
// max_entries, those of the oldest resets are forgotten at once, and
// counted, so the target holds at most twice max_entries keys.
func (t *CounterTarget) forget(gone []string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(gone) <= t.maxGone {
		return
	}
	reset := func(k string) knowledge.Version {
		if ck := t.keys[k]; ck != nil {
			return ck.k.Reset()
		}
		return knowledge.Version{}
	}
	slices.SortFunc(gone, func(a, b string) int {
		switch ra, rb := reset(a), reset(b); {
		case rb.Newer(ra):
			return -1
		case ra.Newer(rb):
			return 1
		}
		return strings.Compare(a, b)
	})
	for _, k := range gone[:len(gone)-t.maxGone] {
		if ck := t.keys[k]; ck != nil && !ck.counted() {
			delete(t.keys, k)
			t.ResetsDropped.Add(1)
		}
	}
}

// readOwn reads this node's contribution to ck from the kernel map's
// value raw (native-endian words, a value per CPU for a per-CPU map,
// summed), held false if the map does not hold the key: then, if the key
// held any count, it was deleted here, and is reset.
func (t *CounterTarget) readOwn(ck *counterKey, raw []byte, held bool) {
	if !held {
		if ck.counted() {
			ck.k.ApplyReset(knowledge.Version{Stamp: t.stamp(ck.k.Reset().Stamp), Origin: t.self})
		}
		clear(t.value)
	} else {
		clear(t.value)
		for cpu := range t.cpus {
			for i := range t.value {
				t.value[i] += binary.NativeEndian.Uint64(raw[8*(cpu*t.words+i):])
			}
		}
		if ck.k.WentDown(t.self, t.value) {
			// Deleted and counted anew since the last read, or written
			// down in place: a reset, and what the map holds now is this
			// node's count from it.
			ck.k.ApplyReset(knowledge.Version{Stamp: t.stamp(ck.k.Reset().Stamp), Origin: t.self})
		}
	}
	ck.k.Local(t.self, t.value, t.local)
	own, _ := ck.k.Own(t.self)
	changed, err := ck.k.SetOwn(t.self, t.stampAfter(own.Stamp), t.local, t.origins)
	if err != nil {
		t.OriginsFull.Add(1)
	} else if changed {
		own, _ = ck.k.Own(t.self)
		t.last = max(t.last, own.Stamp)
	}
}

// stampAfter is a stamp for a contribution that may replace one stamped
// s, without using one up: SetOwn takes it only if the contribution
// changed.
func (t *CounterTarget) stampAfter(s hlc.Stamp) hlc.Stamp {
	return max(hlc.Make(t.now().UnixMilli(), 0), t.last+1, s+1)
}

// appendKey appends ck's entries to out, key and value back to back, and
// returns it: this node's own, even when it holds none (it carries the
// key's reset), then every peer's.
func (t *CounterTarget) appendKey(out []byte, ck *counterKey, key []byte) []byte {
	_, vs := t.entrySize()
	put := func(origin uint32) []byte {
		out = append(out, key...)
		out = binary.BigEndian.AppendUint32(out, origin)
		out = append(out, make([]byte, vs)...)
		return out[len(out)-vs:]
	}
	t.encodeOwn(ck, put(t.self))
	ck.k.Contributions(func(c counter.Contribution) {
		if c.Origin != t.self {
			t.encode(c, put(c.Origin))
		}
	})
	return out
}

// encodeOwn writes this node's contribution to ck into b: the key's
// reset, with zeros if it holds none.
func (t *CounterTarget) encodeOwn(ck *counterKey, b []byte) {
	c, ok := ck.k.Own(t.self)
	if !ok {
		c = counter.Contribution{Reset: ck.k.Reset(), Origin: t.self, Words: t.d[:0]}
	}
	t.encode(c, b)
}

// encode writes c's wire form into b: the reset's stamp and origin, the
// contribution's stamp, then the words, big-endian; missing words are
// zeros.
func (t *CounterTarget) encode(c counter.Contribution, b []byte) {
	binary.BigEndian.PutUint64(b[0:], uint64(c.Reset.Stamp))
	binary.BigEndian.PutUint32(b[8:], c.Reset.Origin)
	binary.BigEndian.PutUint64(b[12:], uint64(c.Stamp))
	for i := range t.words {
		var w uint64
		if i < len(c.Words) {
			w = c.Words[i]
		}
		binary.BigEndian.PutUint64(b[contribHeader+8*i:], w)
	}
}

// decode reads a contribution of origin from its wire form; its words
// are t.value's until the next decode.
func (t *CounterTarget) decode(origin uint32, b []byte) counter.Contribution {
	c := counter.Contribution{
		Reset:  knowledge.Version{Stamp: hlc.Stamp(binary.BigEndian.Uint64(b[0:])), Origin: binary.BigEndian.Uint32(b[8:])},
		Origin: origin,
		Stamp:  hlc.Stamp(binary.BigEndian.Uint64(b[12:])),
		Words:  t.value,
	}
	for i := range t.words {
		t.value[i] = binary.BigEndian.Uint64(b[contribHeader+8*i:])
	}
	return c
}

// key returns the state of key, made if new.
func (t *CounterTarget) key(key []byte) *counterKey {
	ck := t.keys[string(key)]
	if ck == nil {
		ck = &counterKey{}
		t.keys[string(key)] = ck
	}
	return ck
}

// emitter hands entries to a Dump's fn in batches of its buffers' size.
type emitter struct {
	keys, values []byte
	ks, vs, n    int
	fn           func(keys, values []byte) error
}

// emit adds entries (key and value back to back) to the batch, handing
// full batches on.
func (e *emitter) emit(entries []byte) error {
	for len(entries) > 0 {
		copy(e.keys[e.n*e.ks:], entries[:e.ks])
		copy(e.values[e.n*e.vs:], entries[e.ks:e.ks+e.vs])
		entries = entries[e.ks+e.vs:]
		if e.n++; e.n*e.ks == len(e.keys) {
			if err := e.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *emitter) flush() error {
	if e.n == 0 {
		return nil
	}
	n := e.n
	e.n = 0
	return e.fn(e.keys[:n*e.ks], e.values[:n*e.vs])
}

// savedCounters is the file a stopping daemon keeps a sum map's
// contributions in, with the stamp it gave last.
type savedCounters struct {
	Last hlc.Stamp
	Keys []savedKey
}

type savedKey struct {
	Key      []byte
	Reset    knowledge.Version
	Contribs []counter.Contribution
}

// Save writes every contribution held to path, for [CounterTarget.Load]
// at the next start: without them, the next daemon could not tell which
// part of the kernel map's values its peers' contributions are.
func (t *CounterTarget) Save(path string) error {
	t.mu.Lock()
	s := savedCounters{Last: t.last}
	for k, ck := range t.keys {
		sk := savedKey{Key: []byte(k), Reset: ck.k.Reset()}
		ck.k.Contributions(func(c counter.Contribution) {
			c.Words = append([]uint64(nil), c.Words...)
			sk.Contribs = append(sk.Contribs, c)
		})
		s.Keys = append(s.Keys, sk)
	}
	t.mu.Unlock()
	f, err := os.CreateTemp(filepath.Dir(path), ".counters-")
	if err != nil {
		return fmt.Errorf("save counters: %w", err)
	}
	defer os.Remove(f.Name())
	if err := gob.NewEncoder(f).Encode(&s); err != nil {
		f.Close()
		return fmt.Errorf("save counters: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("save counters: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("save counters: %w", err)
	}
	return nil
}

// Load reads the contributions [CounterTarget.Save] wrote to path, then
// removes the file. It reports false if there is none.
func (t *CounterTarget) Load(path string) (bool, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("load counters: %w", err)
	}
	defer f.Close()
	var s savedCounters
	if err := gob.NewDecoder(f).Decode(&s); err != nil {
		return false, fmt.Errorf("load counters %s: %w", path, err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last = max(t.last, s.Last)
	for _, sk := range s.Keys {
		if len(sk.Key) != t.keySize {
			return false, fmt.Errorf("load counters %s: a %d-byte key in a map of %d-byte keys", path, len(sk.Key), t.keySize)
		}
		ck := t.key(sk.Key)
		ck.k.ApplyReset(sk.Reset)
		for _, c := range sk.Contribs {
			if len(c.Words) != t.words {
				return false, fmt.Errorf("load counters %s: %d words in a map of %d", path, len(c.Words), t.words)
			}
			if _, _, err := ck.k.Merge(c, t.origins, t.d); err != nil {
				return false, fmt.Errorf("load counters %s: %w", path, err)
			}
		}
	}
	return true, os.Remove(path)
}

// Forget clears the kernel map: what a daemon does for a sum map whose
// contributions it lost (a crash: no file for [CounterTarget.Load]). Its
// values hold its peers' contributions, which it can no longer tell from
// its own; its peers hold both and give them back in its initial sync.
// The increments its datapath made since it last sent its contribution
// are lost; none is counted twice.
func (t *CounterTarget) Forget() error {
	var keys []byte
	err := t.kernel.Dump(t.kkeys, t.kvals, func(kk, _ []byte) error {
		keys = append(keys, kk...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("forget counters: %w", err)
	}
	if len(keys) == 0 {
		return nil
	}
	return t.clear(keys)
}

// clear deletes keys from the kernel map, or, in an array, whose entries
// cannot be deleted, writes zeros into them.
func (t *CounterTarget) clear(keys []byte) error {
	_, err := t.kernel.DeleteBatch(keys)
	if err == nil {
		return nil
	}
	zeros := make([]byte, len(keys)/t.keySize*8*t.words*t.cpus)
	if t.kernel.UpdateBatch(keys, zeros) != nil {
		return err
	}
	return nil
}
