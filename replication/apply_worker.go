package replication

import (
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
)

// Two apply workers. A kernel hash map locks per bucket, so two batch
// syscalls into one map run in parallel on two cores. With a second
// worker, [applier.applyRuns] splits each large run's kept records by the
// top bit of their knowledge hash, writes the half with it clear itself
// and hands the other to the worker: a key's records always go to the
// same half, in their order, and a run's two halves are both written
// before the next run starts, so no two changes of one key are reordered.
const (
	// splitMin is the fewest kept records of a run that are split. The
	// hand-over wakes the worker, some microseconds, against about half a
	// microsecond of kernel work per record; where the two cross was not
	// measured (the test machine has no core to spare), so this is a
	// margin, not an optimum.
	splitMin = 128
	// splitBit picks the half of a record: the knowledge's shard bits are
	// the hash's top ones, so each half falls in shards of its own.
	splitBit = 63
)

// applyWorker is the second apply worker: a goroutine that runs the batch
// syscalls of the halves it is handed, one at a time. It only calls the
// map; counting and logging stay with the applier.
type applyWorker struct {
	work chan applyHalf
	done chan applyResult
}

// applyHalf is the half of a run given to the worker.
type applyHalf struct {
	m          *localMap
	op         ops.Op
	keys, vals []byte
}

// applyResult is what the worker's batch syscall returned.
type applyResult struct {
	missing int
	err     error
}

// startApplyWorker starts the second worker; it runs until stop is
// closed.
func startApplyWorker(stop <-chan struct{}) *applyWorker {
	w := &applyWorker{work: make(chan applyHalf), done: make(chan applyResult)}
	go func() {
		for {
			select {
			case h := <-w.work:
				missing, err := batchWrite(h.m, h.op, h.keys, h.vals)
				w.done <- applyResult{missing, err}
			case <-stop:
				return
			}
		}
	}()
	return w
}

// splits reports whether the runs of m may be split between two workers:
// only a kernel map's batch syscalls run in parallel (a sum map's target
// serializes them under its own lock), and of those not an LPM trie's,
// which takes one lock for the whole trie.
func splits(m *localMap) bool {
	_, kernel := m.Target.(*loader.Map)
	return kernel && !m.prefixes
}

// batchWrite runs one batch syscall of op on m: the keys and, for an
// update, the values, packed.
func batchWrite(m *localMap, op ops.Op, keys, vals []byte) (missing int, err error) {
	if op == ops.Update {
		return 0, m.Target.UpdateBatch(keys, vals)
	}
	return m.Target.DeleteBatch(keys)
}

// writeSplit writes the records of one run in two batch syscalls at
// once, the second half on the worker (see [applier.split]).
func (a *applier) writeSplit(m *localMap, op ops.Op, keys, vals []byte, hashes []uint64) (missing int, err error) {
	n := a.split(m, op, keys, vals, hashes)
	ks, vs := m.keySize, 0
	if op == ops.Update {
		vs = m.valueSize
	}
	if n == 0 || n == len(hashes) { // all in one half
		return batchWrite(m, op, keys, vals)
	}
	a.worker.work <- applyHalf{m: m, op: op, keys: keys[n*ks:], vals: vals[n*vs:]}
	missing, err = batchWrite(m, op, keys[:n*ks], vals[:n*vs])
	r := <-a.worker.done
	if err == nil {
		err = r.err
	}
	return missing + r.missing, err
}

// split reorders the packed records of one run, whose keys' knowledge
// hashes are hashes, into two halves by splitBit: those with it clear
// first, then the others, each half in its order. It returns the size of
// the first half.
func (a *applier) split(m *localMap, op ops.Op, keys, vals []byte, hashes []uint64) int {
	n := a.partition(keys, m.keySize, hashes)
	if op == ops.Update {
		a.partition(vals, m.valueSize, hashes)
	}
	return n
}

// partition reorders buf, packed items of size bytes whose keys' hashes
// are hashes, as [applier.split] does the records: the second half's
// items wait in side while the first's move to the front, then follow
// them.
func (a *applier) partition(buf []byte, size int, hashes []uint64) int {
	n := 0
	a.side = a.side[:0]
	for i, h := range hashes {
		item := buf[i*size : (i+1)*size]
		if h>>splitBit != 0 {
			a.side = append(a.side, item...)
			continue
		}
		copy(buf[n*size:], item)
		n++
	}
	copy(buf[n*size:], a.side)
	return n
}
