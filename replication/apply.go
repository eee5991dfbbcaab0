package replication

import (
	"fmt"
	"io"
	"log/slog"
	"time"

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
// becomes one batch syscall. Runs are applied in order, so every key sees
// its changes in the order they were made.
type applier struct {
	table *Table
	stats *Stats
	log   *slog.Logger
	limit *limiter

	// live is told the keys of every run of live changes before it is
	// applied; the resync client marks them newer than its snapshot.
	live func(m *localMap, keys []byte)

	secs wire.Sections
	recs wire.Records
	runs []run
	keys []byte // the runs' keys, packed back to back
	vals []byte // their values
}

// run is one pending batch: n changes of node to m with op, whose keys end
// at keyEnd in applier.keys and values at valEnd in applier.vals.
type run struct {
	node           uint32
	m              *localMap
	op             ops.Op
	n              int
	snapshot       bool // records of a snapshot, not live changes
	keyEnd, valEnd int
}

func newApplier(t *Table, stats *Stats, log *slog.Logger, limit *limiter) applier {
	return applier{table: t, stats: stats, log: log, limit: limit,
		keys: make([]byte, 0, runKeyBytes), vals: make([]byte, 0, runValueBytes)}
}

// recordFilter decides which records of a snapshot datagram are applied.
type recordFilter interface {
	keep(m *localMap, key []byte) bool
}

// collect validates the body of a change or snapshot datagram of node and
// adds its records to the pending runs, all of them or, on an error,
// none. Records for maps without a local match are counted and skipped.
// With a filter, only the records it keeps are taken, as updates of a
// snapshot. It returns how many records it took.
func (a *applier) collect(node uint32, body []byte, count uint16, f recordFilter) (int, error) {
	if len(a.keys)+len(body) > cap(a.keys) || len(a.vals)+len(body) > cap(a.vals) {
		a.flush() // the whole datagram fits in what is left
	}
	mark := a.mark()
	taken, unknown, unknownFP := 0, 0, uint32(0)
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
		a.recs.Reset(sec, m.keySize, m.valueSize)
		for {
			rec, err := a.recs.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				a.rollBack(mark)
				return 0, fmt.Errorf("map %s: %w", m.Desc.Name, err)
			}
			if f != nil && !f.keep(m, rec.Key) {
				continue
			}
			a.add(node, m, rec.Op, rec.Key, rec.Value, f != nil)
			taken++
		}
	}
	if unknown > 0 {
		a.unknownMap(node, unknownFP, unknown)
	}
	return taken, nil
}

// check validates a change datagram's body without taking anything: for
// datagrams held for later, which are collected when their turn comes.
func (a *applier) check(body []byte, count uint16) error {
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
		a.recs.Reset(sec, m.keySize, m.valueSize)
		for _, err := a.recs.Next(); err != io.EOF; _, err = a.recs.Next() {
			if err != nil {
				return fmt.Errorf("map %s: %w", m.Desc.Name, err)
			}
		}
	}
}

// pendingMark is how far the pending runs reached, to roll back to.
type pendingMark struct{ runs, lastN, keys, vals int }

func (a *applier) mark() pendingMark {
	m := pendingMark{runs: len(a.runs), keys: len(a.keys), vals: len(a.vals)}
	if len(a.runs) > 0 {
		m.lastN = a.runs[len(a.runs)-1].n
	}
	return m
}

func (a *applier) rollBack(m pendingMark) {
	a.runs = a.runs[:m.runs]
	if m.runs > 0 {
		r := &a.runs[m.runs-1]
		r.n, r.keyEnd, r.valEnd = m.lastN, m.keys, m.vals
	}
	a.keys, a.vals = a.keys[:m.keys], a.vals[:m.vals]
}

// add appends one record to the last run, or starts a new run.
func (a *applier) add(node uint32, m *localMap, op ops.Op, key, value []byte, snapshot bool) {
	if len(a.keys)+len(key) > cap(a.keys) || len(a.vals)+len(value) > cap(a.vals) {
		a.flush()
	}
	if n := len(a.runs); n == 0 || a.runs[n-1].m != m || a.runs[n-1].op != op ||
		a.runs[n-1].node != node || a.runs[n-1].snapshot != snapshot {
		a.runs = append(a.runs, run{node: node, m: m, op: op, snapshot: snapshot})
	}
	r := &a.runs[len(a.runs)-1]
	a.keys = append(a.keys, key...)
	a.vals = append(a.vals, value...)
	r.n++
	r.keyEnd, r.valEnd = len(a.keys), len(a.vals)
}

// flush applies the pending runs in order. Whatever reads the local maps
// or reports how far a peer's changes were applied flushes first; so
// does every holder of the receive lock before releasing it.
func (a *applier) flush() int {
	applied, keyStart, valStart := 0, 0, 0
	for i := range a.runs {
		r := &a.runs[i]
		keys, vals := a.keys[keyStart:r.keyEnd], a.vals[valStart:r.valEnd]
		if !r.snapshot && a.live != nil {
			a.live(r.m, keys)
		}
		applied += a.write(r.node, r.m, r.op, r.n, keys, vals)
		keyStart, valStart = r.keyEnd, r.valEnd
	}
	a.runs, a.keys, a.vals = a.runs[:0], a.keys[:0], a.vals[:0]
	return applied
}

// write applies n packed records to m in one batch syscall and returns
// how many took effect: not the deletes of absent keys, none on an error.
func (a *applier) write(node uint32, m *localMap, op ops.Op, n int, keys, vals []byte) int {
	var err error
	applied := n
	began := time.Now()
	if op == ops.Update {
		err = m.Target.UpdateBatch(keys, vals)
	} else {
		var missing int
		missing, err = m.Target.DeleteBatch(keys)
		applied -= missing
		a.stats.DeletesMissing.Add(uint64(missing))
	}
	a.stats.ApplySeconds.Observe(time.Since(began))
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

func (a *applier) unknownMap(node, fp uint32, records int) {
	a.stats.UnknownMap.Add(uint64(records))
	if s, ok := a.limit.allow(reasonUnknownMap); ok {
		a.log.Warn("dropping changes for a map with no local match", "peer", node, "fingerprint", fmt.Sprintf("%#08x", fp),
			"changes", records, "suppressed", s)
	}
}
