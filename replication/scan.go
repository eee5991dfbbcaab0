package replication

import (
	"context"
	"encoding/binary"
	"log/slog"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/ops"
)

// scanner finds what the capture cannot see in the maps that opt in
// (their scan option): in-place writes through a pointer from
// bpf_map_lookup_elem, writes of BPF programs the syscall backend misses,
// and keys gone without a delete it saw (LRU evictions). Every scan
// period it reads the whole map with batch lookups and compares each
// value with its print (see [printTable]); what moved becomes a write of
// this node, stamped and recorded in the knowledge like a captured one,
// and joins the sender's change stream through the relay queue: the one
// path into a peer's map.
//
// The node's timers decide when a map is due ([scanner.onTimers]); the scans
// run on a goroutine of their own ([scanner.run]), so that a long one
// does not hold up the receive side's timers.
type scanner struct {
	table  *Table
	know   *knowledge.Store
	prints *printTable
	clock  *hlc.Clock
	relay  *relayQueue
	stats  *Stats
	log    *slog.Logger
	node   uint32
	now    func() time.Time // read at each batch, for the stamps
	ready  func() bool

	next []time.Time // per map: when its next scan is due; zero: not scanned
	due  chan int    // maps due, to the scanning goroutine
	busy []bool      // per map: sent to the goroutine and not done (timers' side only)
	done chan int    // maps scanned, back to the timers

	hashes  []uint64 // the keys' hashes of the batch being compared
	touched uint64   // keeps the touching loads of scan from being left out
}

func newScanner(s scanner) *scanner {
	s.next = make([]time.Time, len(s.table.maps))
	s.busy = make([]bool, len(s.table.maps))
	s.due = make(chan int, len(s.table.maps))
	s.done = make(chan int, len(s.table.maps))
	return &s
}

// onTimers hands the maps whose scan is due at now to the scanning goroutine.
// Scans begin once the node is ready: until its initial sync is complete
// it cannot tell its own changes from what it has yet to learn. The
// next scan of a map is due one period after its last one began.
func (s *scanner) onTimers(now time.Time) {
drain:
	for {
		select {
		case m := <-s.done:
			s.busy[m] = false
		default:
			break drain
		}
	}
	if !s.ready() {
		return
	}
	for i := range s.table.maps {
		if !s.prints.scanned(i) || s.busy[i] || now.Before(s.next[i]) {
			continue
		}
		s.next[i] = now.Add(s.table.maps[i].plan.opts.Scan)
		s.busy[i] = true
		s.due <- i // cannot block: one slot per map, and a busy map is not sent again
	}
}

// run scans the maps onTimers hands it until ctx is done.
func (s *scanner) run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-s.due:
			s.scan(m)
			s.done <- m
		}
	}
}

// scan reads map index i once and sends what moved since the last scan.
func (s *scanner) scan(i int) {
	m, k, pt := &s.table.maps[i], s.know, s.prints
	pt.mu.Lock()
	pm := &pt.maps[i]
	pm.gen++
	gen := pm.gen
	pt.mu.Unlock()
	found := 0
	err := k.ReadMap(scanReader(m), m.keySize, m.valueSize, func(h knowledge.Held, ks, vs []byte) {
		// With the knowledge lock held across the read and the compare,
		// no apply of a peer's write falls between them: what the read
		// found is either before the apply, or its print is the
		// applied value's.
		now := s.now()
		ms := pt.ms(now)
		pt.mu.Lock()
		defer pt.mu.Unlock()
		n := len(ks) / m.keySize
		s.hashes = s.hashes[:0]
		for o := range n {
			s.hashes = append(s.hashes, pt.hash(ks[o*m.keySize:(o+1)*m.keySize]))
		}
		// Touch each key's slot first: these loads do not depend on one
		// another, so the processor overlaps their cache misses, which
		// the look-ups below would take one after the other.
		for _, kh := range s.hashes {
			s.touched += pm.slots[pm.home(kh)].hash
		}
		for o, kh := range s.hashes {
			key, val := ks[o*m.keySize:(o+1)*m.keySize], vs[o*m.valueSize:(o+1)*m.valueSize]
			fp, rfp := pm.plan.prints(pt.seed, val)
			j := pm.find(kh)
			switch {
			case j < 0 && !pm.learnt && (knownLive(h, i, key) || h.Blank(i, knowledge.Version{}, val)) && !s.ownContribution(m, key):
				// The first scan since the start meets every entry without
				// a print: one with the version its capture, apply or the
				// state file gave it is taken as it is, and so are an
				// array's zeros nobody wrote (known unstamped, if at all,
				// when not live). From then on the
				// capture and the applier give a print to every key they
				// write, so a key without one is a write nobody saw (a BPF
				// program's create under the syscall backend, a key back
				// after an eviction). A sum map's own contributions are
				// sent: the datapath counted on while the node synced.
				pm.set(pm.put(kh, key), fp, rfp, ms)
				continue
			case j >= 0 && pm.slots[j].fp == fp && (pm.slots[j].rfp() == rfp&rfpMask || ms-pm.slots[j].sent < pm.period):
				pm.slots[j].setGen(gen)
				continue
			}
			s.found(h, i, ops.Update, key, val, now)
			pm.set(pm.put(kh, key), fp, rfp, ms)
			found++
		}
	}, nil)
	if err != nil {
		s.log.Warn("scanning a map failed; its in-place changes wait for the next scan", "map", m.Desc.Name, "error", err)
		return
	}
	vanished := s.vanished(i, gen)
	pt.mu.Lock()
	pm.learnt = true
	pt.mu.Unlock()
	s.stats.Scans.Add(1)
	s.stats.ScanFound.Add(uint64(found))
	s.stats.ScanVanished.Add(uint64(vanished))
	s.stats.ScanPrints.Store(uint64(pt.size()))
}

// scanReader is what a scan reads m through: a sum map's contributions
// with this node's own read anew from the kernel map (see
// [CounterTarget.Scanning]), which only a scan may do, since it records
// what moved; any other map's target.
func scanReader(m *localMap) knowledge.Dumper {
	if t, ok := m.Target.(*CounterTarget); ok {
		return t.Scanning()
	}
	return m.Target
}

// ownContribution reports whether key of m is this node's contribution
// to a sum map's counter (see [CounterTarget]).
func (s *scanner) ownContribution(m *localMap, key []byte) bool {
	return m.Options.Merge == mapopt.Sum && binary.BigEndian.Uint32(key[len(key)-originSize:]) == s.node
}

// knownLive reports whether this node knows key of map index i from a
// stamped write that left it in the map.
func knownLive(h knowledge.Held, i int, key []byte) bool {
	e := h.Lookup(i, key)
	return e != nil && !e.Deleted() && e.Version().Stamp != 0
}

// found makes a change a scan found a write of this node's, read from the
// map (see knowledge.Held.Set), and passes it on to the group.
func (s *scanner) found(h knowledge.Held, i int, op ops.Op, key, val []byte, now time.Time) {
	v := knowledge.Version{Stamp: s.clock.At(now), Origin: s.node}
	h.Set(h.Put(i, key), i, key, v, op == ops.Delete, true, now)
	h.Note(i, key, v, op == ops.Delete, val)
	s.relay.add(i, op, v, key, val)
}

// vanished handles the keys of map index i that scan gen did not see:
// gone without a delete that the capture or an apply recorded. By the
// map's rule, their prints are forgotten (keep), or they are deleted on
// the peers too, as writes of this node (delete). It returns how many
// there were.
func (s *scanner) vanished(i int, gen uint8) int {
	pt := s.prints
	h := s.know.Lock()
	defer h.Unlock()
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pm := &pt.maps[i]
	now := s.now()
	var gone []uint64
	for j := range pm.slots {
		pr := &pm.slots[j]
		if pr.hash == 0 || pr.gen() == gen {
			continue
		}
		if pm.keep {
			if key := pm.key(j); knownLive(h, i, key) {
				s.found(h, i, ops.Delete, key, nil, now)
			}
		}
		gone = append(gone, pr.hash)
	}
	for _, kh := range gone {
		pm.removeAt(pm.find(kh))
	}
	return len(gone)
}
