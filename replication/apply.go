package replication

import (
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// Run buffers: the changes collected for batch syscalls are applied once
// they hold this many bytes of keys or of values.
const (
	runKeyBytes   = 64 << 10
	runValueBytes = 256 << 10
)

// applier writes the records of checked datagrams to the local maps. It
// decodes a datagram once: [applier.collect] validates every record and
// adds it to the pending runs in the same pass, and takes nothing of a
// datagram that fails anywhere, so a damaged datagram changes no map.
//
// A run is a sequence of consecutive changes of one peer to one map with
// one operation, possibly across the datagrams of a receive batch; each
// becomes one batch syscall. Runs are applied in order, and of each only
// the records newer than what this node knows of their key (see
// [applier.merge]), so every node ends with the latest write of each key
// whatever order the writes arrive in.
//
// Of the peer it marks for (see marking), it also keeps the keys it holds
// a newer version of: the resync client sends those back.
type applier struct {
	time   Time
	table  *Table
	know   *knowledge.Store
	prints *printTable // nil: no map is scanned
	clock  *hlc.Clock
	stats  *Stats
	log    *slog.Logger
	limit  *limiter

	// marking is the peer whose records this node marks as known to it,
	// with generation gen: the peer serving a resync, so that at its end
	// the keys it did not know can be sent back to it (see resyncClient).
	marking   uint32
	gen       uint8
	newerHere [][]byte // per map index: packed keys
	// comparing, during a repair of buckets, keeps in same the records
	// of the marked peer whose version equals the one known here: whether
	// the contents agree too is checked at the end (resyncClient.reconcile);
	// taken counts the marked peer's records applied.
	comparing bool
	same      []sameRecords // per map index
	taken     int

	secs  wire.Sections
	recs  wire.Records
	frags []heldFragment // the fragment records of the datagram being collected
	reasm reassembly
	runs  []run
	keys  []byte              // the runs' keys, packed back to back
	vals  []byte              // their values
	vers  []knowledge.Version // their versions
	mine  []byte              // an entry of this node's, read for its local fields
	// hashes are the keys' knowledge hashes, computed and their slots
	// touched before the first look-up (see [applier.touch]); touched
	// keeps what the touches read, so that they are not optimized away.
	hashes  []uint64
	touched uint64
	// worker, if set, writes half of each large run (see [applyWorker]);
	// side holds the keys or values of that half while a run is split.
	worker *applyWorker
	side   []byte
}

// run is one pending batch: n changes of node to m with op, whose keys end
// at keyEnd in applier.keys, values at valEnd in applier.vals and
// versions at n's end in applier.vers.
type run struct {
	node           uint32
	m              *localMap
	op             ops.Op
	n              int
	snapshot       bool // records of a snapshot, not live changes
	keyEnd, valEnd int
	verEnd         int
}

func newApplier(t *Table, k *knowledge.Store, clock *hlc.Clock, stats *Stats, log *slog.Logger, limit *limiter, reassemblyBytes int) applier {
	return applier{time: SystemTime{}, table: t, know: k, clock: clock, stats: stats, log: log, limit: limit,
		reasm: newReassembly(reassemblyBytes, stats, log, limit),
		keys:  make([]byte, 0, runKeyBytes), vals: make([]byte, 0, runValueBytes), newerHere: make([][]byte, len(t.maps)),
		same: make([]sameRecords, len(t.maps))}
}

// collect validates the body of a change or snapshot datagram of node and
// adds its records to the pending runs, all of them or, on an error,
// none. Records for maps without a local match are counted and skipped,
// and so are records stamped further ahead of this node's clock than
// [hlc.MaxSkew]. It returns how many records it took.
func (a *applier) collect(node uint32, body []byte, count uint16, snapshot bool) (int, error) {
	if len(a.keys)+len(body) > cap(a.keys) || len(a.vals)+len(body) > cap(a.vals) {
		a.applyRuns() // the whole datagram fits in what is left
	}
	mark := a.mark()
	taken, unknown, unknownFP, future := 0, 0, uint32(0), 0
	limit, latest := a.clock.Limit(), hlc.Stamp(0)
	a.frags = a.frags[:0]
	a.secs.Reset(body, count)
	for {
		sec, err := a.secs.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			a.rollBack(mark)
			return 0, err
		}
		m := a.table.byFP[sec.Map]
		if m == nil {
			unknown, unknownFP = unknown+int(sec.Count), sec.Map
			continue
		}
		a.recs.Reset(sec, m.keySize, m.valueSize, a.secs.Base(), node)
		for {
			rec, err := a.recs.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				a.rollBack(mark)
				return 0, fmt.Errorf("map %s: %w", m.Desc.Name, err)
			}
			st := hlc.Stamp(rec.Stamp)
			if st > limit {
				future++
				continue
			}
			latest = max(latest, st)
			if rec.Fragment.Count != 0 {
				// Taken once the whole datagram checked out.
				a.frags = append(a.frags, heldFragment{m: m, rec: rec})
				continue
			}
			a.add(node, m, rec.Op, knowledge.Version{Stamp: st, Origin: rec.Origin}, rec.Key, rec.Value, snapshot)
			taken++
		}
	}
	if len(a.frags) > 0 {
		n, err := a.fragments(node, snapshot)
		if err != nil {
			a.rollBack(mark)
			return 0, err
		}
		taken += n
	}
	if unknown > 0 {
		a.unknownMap(node, unknownFP, unknown)
	}
	if future > 0 {
		a.futureStamps(node, future)
	}
	a.clock.Observe(latest)
	return taken, nil
}

// heldFragment is a fragment record of a datagram being collected.
type heldFragment struct {
	m   *localMap
	rec wire.Record
}

// fragments hands the fragment records of a checked datagram of node to
// the reassembly, and adds the records they complete to the pending runs.
// A snapshot datagram is refused whole, before anything of it is taken,
// if a fragment of it would pass the reassembly's bounds: the serving
// node sends it again. A fragment of a change stream that would is
// dropped, and counted, alone.
func (a *applier) fragments(node uint32, snapshot bool) (int, error) {
	now := a.time.Now()
	if snapshot {
		cost := 0
		for i := range a.frags {
			cost += a.reasm.startCost(node, a.frags[i].m.fp, &a.frags[i].rec)
		}
		if cost > 0 && !a.reasm.fits(node, cost, now) {
			a.stats.FragmentsRefused.Add(uint64(len(a.frags)))
			return 0, errFragmentsRefused
		}
	}
	taken := 0
	for i := range a.frags {
		f := &a.frags[i]
		if out, value := a.reasm.add(node, snapshot, f.m.fp, &f.rec, now); out == fragmentCompleted {
			a.add(node, f.m, ops.Update, knowledge.Version{Stamp: hlc.Stamp(f.rec.Stamp), Origin: f.rec.Origin}, f.rec.Key, value, snapshot)
			taken++
		}
	}
	a.frags = a.frags[:0]
	return taken, nil
}

// check validates a change datagram's body without taking anything: for
// datagrams held for later, which are collected when their turn comes.
func (a *applier) check(node uint32, body []byte, count uint16) error {
	a.secs.Reset(body, count)
	for {
		sec, err := a.secs.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		m := a.table.byFP[sec.Map]
		if m == nil {
			continue
		}
		a.recs.Reset(sec, m.keySize, m.valueSize, a.secs.Base(), node)
		for _, err := a.recs.Next(); err != io.EOF; _, err = a.recs.Next() {
			if err != nil {
				return fmt.Errorf("map %s: %w", m.Desc.Name, err)
			}
		}
	}
}

// pendingMark is how far the pending runs reached, to roll back to.
type pendingMark struct{ runs, lastN, keys, vals, vers int }

func (a *applier) mark() pendingMark {
	m := pendingMark{runs: len(a.runs), keys: len(a.keys), vals: len(a.vals), vers: len(a.vers)}
	if len(a.runs) > 0 {
		m.lastN = a.runs[len(a.runs)-1].n
	}
	return m
}

func (a *applier) rollBack(m pendingMark) {
	a.runs = a.runs[:m.runs]
	if m.runs > 0 {
		r := &a.runs[m.runs-1]
		r.n, r.keyEnd, r.valEnd, r.verEnd = m.lastN, m.keys, m.vals, m.vers
	}
	a.keys, a.vals, a.vers = a.keys[:m.keys], a.vals[:m.vals], a.vers[:m.vers]
}

// add appends one record to the last run, or starts a new run.
func (a *applier) add(node uint32, m *localMap, op ops.Op, v knowledge.Version, key, value []byte, snapshot bool) {
	if len(a.keys)+len(key) > cap(a.keys) || len(a.vals)+len(value) > cap(a.vals) {
		a.applyRuns()
	}
	if n := len(a.runs); n == 0 || a.runs[n-1].m != m || a.runs[n-1].op != op ||
		a.runs[n-1].node != node || a.runs[n-1].snapshot != snapshot {
		a.runs = append(a.runs, run{node: node, m: m, op: op, snapshot: snapshot})
	}
	r := &a.runs[len(a.runs)-1]
	a.keys = append(a.keys, key...)
	if m.prefixes { // a peer's trie key with bits after its prefix would be a key of its own here
		loader.CanonicalPrefixes(a.keys[len(a.keys)-len(key):], m.keySize)
	}
	a.vals = append(a.vals, value...)
	a.vers = append(a.vers, v)
	r.n++
	r.keyEnd, r.valEnd, r.verEnd = len(a.keys), len(a.vals), len(a.vers)
}

// applyRuns applies the pending runs in order. Whatever reads the local
// maps or reports how far a peer's changes were applied applies them
// first; so does every holder of the receive lock before releasing it.
func (a *applier) applyRuns() int {
	if len(a.runs) == 0 {
		return 0
	}
	h := a.know.Lock()
	defer h.Unlock()
	a.touch(h)
	applied, keyStart, valStart, verStart := 0, 0, 0, 0
	for i := range a.runs {
		r := &a.runs[i]
		keys, vals, vers := a.keys[keyStart:r.keyEnd], a.vals[valStart:r.valEnd], a.vers[verStart:r.verEnd]
		hashes := a.hashes[verStart:r.verEnd]
		keyStart, valStart, verStart = r.keyEnd, r.valEnd, r.verEnd
		began := a.time.Now()
		keys, vals, n := a.merge(h, r, keys, vals, vers, hashes, began.Add(applyBound))
		if n == 0 {
			continue
		}
		done := a.write(r.node, r.m, r.op, n, keys, vals, hashes[:n])
		if r.snapshot && r.op == ops.Delete {
			a.stats.SyncDeleted.Add(uint64(done))
		}
		applied += done
		if now := a.time.Now(); now.Sub(began) > applyBound {
			a.remark(h, r.m, keys, now)
		}
	}
	a.runs, a.keys, a.vals, a.vers = a.runs[:0], a.keys[:0], a.vals[:0], a.vers[:0]
	return applied
}

// touch computes the knowledge hash of every pending key, and reads the
// slot where its look-up starts: the reads do not depend on each other,
// so the processor waits for their cache misses together, and the
// look-ups that follow find the slots in the cache. Without it each
// look-up waited for its own cache miss, one after the other.
//
// The hashes are computed first and the slots touched in a loop of their
// own: a touch between two hashes leaves the processor a window of only a
// few keys' misses, a loop of touches alone one of many.
func (a *applier) touch(h knowledge.Held) {
	a.hashes = a.hashes[:0]
	keyStart := 0
	for i := range a.runs {
		r := &a.runs[i]
		for o := keyStart; o < r.keyEnd; o += r.m.keySize {
			a.hashes = append(a.hashes, a.know.Hash(a.keys[o:o+r.m.keySize]))
		}
		keyStart = r.keyEnd
	}
	var touched uint64
	verStart := 0
	for i := range a.runs {
		r := &a.runs[i]
		for _, hash := range a.hashes[verStart:r.verEnd] {
			touched += h.Touch(r.m.index, hash)
		}
		verStart = r.verEnd
	}
	a.touched += touched
}

// applyBound is how long a batch write is expected to take at most. Keys
// are marked as applied at the write's start plus applyBound, a time no
// earlier than its end, so [sender.stamp] sees the apply when it has to;
// a write that takes longer marks its keys again after it.
const applyBound = 5 * time.Millisecond

// merge keeps, of one run's records, those newer than what this node
// knows of their key, packing them to the front of keys and vals, and
// records their versions as applied at appliedAt; it returns the kept
// keys and values and how many there are, and packs their hashes to the
// front of hashes likewise. The knowledge lock h stays held until they are
// written.
//
// A snapshot's unstamped entry (version zero) is kept unless this node
// knows the key from a stamped write, so that a requester takes the
// server's entry over its own unstamped one, but for an array's zeros,
// which hold nothing (see [knowledge.Held.Blank]); it is recorded as unstamped
// with the server as its origin, so that a later resync from that server
// can tell the server deleted it. Every record of the peer in
// [applier.marking] marks its key as known to that peer; of those not
// kept, the ones this node holds a newer version of are noted in
// newerHere.
func (a *applier) merge(h knowledge.Held, r *run, keys, vals []byte, vers []knowledge.Version, hashes []uint64, appliedAt time.Time) ([]byte, []byte, int) {
	m := r.m
	ks, vs := m.keySize, 0
	if r.op == ops.Update {
		vs = m.valueSize
	}
	n, stale := 0, 0
	for i, v := range vers {
		key := keys[i*ks : (i+1)*ks]
		// One look-up, then written in place. A stamped record, or a
		// snapshot's, of a new key is taken, so its entry is added at
		// once; an unstamped live one never is, and adds none.
		var e *knowledge.Entry
		if v.Stamp != 0 || r.snapshot {
			e = h.PutHash(m.index, hashes[i])
		} else {
			e = h.LookupHash(m.index, hashes[i])
		}
		newer := e != nil && (v.Newer(e.Version()) || r.snapshot && v.Stamp == 0 && e.Version().Stamp == 0 &&
			!h.Blank(m.index, v, vals[i*vs:(i+1)*vs]))
		if !newer {
			if e != nil && r.node == a.marking {
				e.SetGen(a.gen)
				if e.Version() != v {
					a.newerHere[m.index] = append(a.newerHere[m.index], key...)
				} else if a.comparing && r.op == ops.Update {
					a.same[m.index].add(key, vals[i*vs:(i+1)*vs], v)
				}
			}
			stale++
			continue
		}
		if v.Stamp == 0 {
			v.Origin = r.node // unstamped, as learned from r.node: see resyncClient.pushBack
		}
		a.localForm(m, r.op, key, vals[i*vs:(i+1)*vs], appliedAt)
		h.Set(e, m.index, key, v, r.op == ops.Delete, true, appliedAt)
		h.Note(m.index, key, v, r.op == ops.Delete, vals[i*vs:(i+1)*vs])
		if r.node == a.marking {
			e.SetGen(a.gen)
			a.taken++
		}
		copy(keys[n*ks:], key)
		copy(vals[n*vs:], vals[i*vs:(i+1)*vs])
		hashes[n] = hashes[i]
		n++
	}
	if stale > 0 {
		a.stats.Stale.Add(uint64(stale))
	}
	return keys[:n*ks], vals[:n*vs], n
}

// remark marks keys of m as applied at now.
func (a *applier) remark(h knowledge.Held, m *localMap, keys []byte, now time.Time) {
	for o := 0; o < len(keys); o += m.keySize {
		if e := h.Lookup(m.index, keys[o:o+m.keySize]); e != nil {
			h.MarkApplied(e, now)
		}
	}
}

// write applies n packed records to m, whose keys' knowledge hashes are
// hashes, in one batch syscall, or in two at once when a second worker
// takes half of them, and returns how many took effect: not the deletes
// of absent keys, none on an error. Split, keys and vals hold the same
// records after it, in another order (see [applier.split]).
func (a *applier) write(node uint32, m *localMap, op ops.Op, n int, keys, vals []byte, hashes []uint64) int {
	began := a.time.Now()
	var missing int
	var err error
	if a.worker != nil && n >= splitMin && splits(m) {
		missing, err = a.writeSplit(m, op, keys, vals, hashes)
	} else {
		missing, err = batchWrite(m, op, keys, vals)
	}
	applied := n - missing
	if missing > 0 {
		a.stats.DeletesMissing.Add(uint64(missing))
	}
	a.stats.ApplySeconds.Observe(a.time.Now().Sub(began))
	if err != nil {
		a.stats.ApplyErrors.Add(1)
		if s, ok := a.limit.allow(reasonApply); ok {
			a.log.Error("applying changes failed", "map", m.Desc.Name, "peer", node, "op", op,
				"changes", n, "error", err, "suppressed", s)
		}
		return 0
	}
	a.stats.ChangesApplied.Add(uint64(applied))
	return applied
}

func (a *applier) futureStamps(node uint32, records int) {
	a.stats.FutureStamps.Add(uint64(records))
	if s, ok := a.limit.allow(reasonFuture); ok {
		a.log.Warn("dropping changes stamped too far ahead of this node's clock: check the clocks (NTP) of both nodes",
			"peer", node, "changes", records, "max_skew", hlc.MaxSkew, "suppressed", s)
	}
}

func (a *applier) unknownMap(node, fp uint32, records int) {
	a.stats.UnknownMap.Add(uint64(records))
	if s, ok := a.limit.allow(reasonUnknownMap); ok {
		a.log.Warn("dropping changes for a map with no local match", "peer", node, "fingerprint", fmt.Sprintf("%#08x", fp),
			"changes", records, "suppressed", s)
	}
}
