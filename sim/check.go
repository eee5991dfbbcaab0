package sim

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/replication"
	"github.com/udpmapsync/udpmapsync/wire"
)

// workload is the run's writes and deletes, drawn up front, and the
// oracle: of each key, the stamped record with the highest version that
// any node put on the wire, in a change or a snapshot datagram. A write
// gets its version when its node's sender reads it from the capture (or
// a snapshot stamps it anew after a capture loss), so the oracle learns
// versions from the wire; what it checks is that the version that won
// anywhere wins everywhere.
type workload struct {
	written int
	latest  map[string]wireRecord
	// stamped is the newest stamped update record of each key and value
	// (back to back); evicted, the values of each key an LRU map evicted.
	stamped map[string]wireRecord
	evicted map[string][][]byte
	// own holds the records (ownKey) their origin sent itself.
	own map[string]bool
	// inPlace holds the keys and values (back to back) written in place.
	inPlace map[string]bool
	// zerosSent holds the array keys whose zeros went on the wire
	// stamped; of the datapaths' writes, wrote holds the keys given a
	// value other than zeros, and zeroed those given zeros.
	zerosSent, wrote, zeroed map[string]bool
	secs                     wire.Sections
	recs                     wire.Records
}

// wireRecord is one stamped record seen on the wire.
type wireRecord struct {
	stamp  uint64
	origin uint32
	op     ops.Op
	value  []byte
}

func (r wireRecord) newer(o wireRecord) bool {
	return r.stamp > o.stamp || r.stamp == o.stamp && r.origin > o.origin
}

// writeFrom is when the workload begins: after every node's first daemon
// started (see drawScenario).
const writeFrom = 700 * time.Millisecond

// schedule draws the writes: nodes write the same few keys, updates
// and deletes, in bursts as a datapath does (which is what overflows a
// short capture ring), whether a daemon runs on them or not.
func (w *workload) schedule(s *Sim) {
	w.latest, w.stamped, w.evicted = make(map[string]wireRecord), make(map[string]wireRecord), make(map[string][][]byte)
	w.inPlace, w.own, w.zerosSent = make(map[string]bool), make(map[string]bool), make(map[string]bool)
	w.wrote, w.zeroed = make(map[string]bool), make(map[string]bool)
	for range s.sc.writes {
		at := writeFrom + time.Duration(s.rng.Int64N(int64(s.sc.writeUntil-writeFrom)))
		n := s.nodes[s.rng.IntN(len(s.nodes))]
		type write struct {
			op  ops.Op
			key []byte
		}
		burst := make([]write, 1+s.rng.IntN(s.sc.burst))
		for i := range burst {
			burst[i] = write{ops.Update, s.key(s.rng.IntN(s.sc.keys))}
			if s.rng.IntN(4) == 0 {
				burst[i].op = ops.Delete
			}
		}
		s.after(at, func() {
			for _, wr := range burst {
				w.write(s, n, wr.key, wr.op == ops.Delete)
			}
		})
	}
	// The writes in place are drawn from a source of their own, so that
	// the other draws of a seed stay what they were before them; so are
	// the late ones.
	late := rand.New(rand.NewPCG(s.seed, 0x1a7e))
	for range s.sc.lateWrites {
		at := s.sc.writeUntil + time.Duration(late.Int64N(int64(s.sc.lateUntil-s.sc.writeUntil)))
		n, key, del := s.nodes[late.IntN(len(s.nodes))], s.key(late.IntN(s.sc.keys)), late.IntN(4) == 0
		s.after(at, func() { w.write(s, n, key, del) })
	}
	r := rand.New(rand.NewPCG(s.seed, 0x1a9ace))
	for range s.sc.inPlace {
		at := writeFrom + time.Duration(r.Int64N(int64(s.sc.writeUntil-writeFrom)))
		n, key := s.nodes[r.IntN(len(s.nodes))], s.key(r.IntN(s.sc.keys))
		s.after(at, func() {
			w.written++
			value := s.value(n.id, w.written)
			if n.writeInPlace(key, value) {
				w.inPlace[string(key)+string(value)] = true
				w.wrote[string(key)] = true
			}
		})
	}
}

// write is one write of the workload on n: an update, or a delete,
// which zeroes an array's entry.
func (w *workload) write(s *Sim, n *simNode, key []byte, del bool) {
	w.written++
	switch {
	case !del:
		w.wrote[string(key)] = true
		n.write(ops.Update, key, s.value(n.id, w.written))
	case s.sc.array:
		w.zeroed[string(key)] = true
		n.write(ops.Update, key, make([]byte, s.sc.valueSize))
	default:
		n.write(ops.Delete, key, nil)
	}
}

// key is the workload's key number i: big-endian, or an array's index.
func (s *Sim) key(i int) []byte {
	if s.sc.array {
		return arrayKey(i)
	}
	return binary.BigEndian.AppendUint32(nil, uint32(i))
}

// value is the workload's value of its write number n, on node: the
// node's id and n, then zeros to the map's value size.
func (s *Sim) value(node uint32, n int) []byte {
	v := make([]byte, s.sc.valueSize)
	binary.BigEndian.PutUint32(v, node)
	binary.BigEndian.PutUint32(v[4:], uint32(n))
	return v
}

// observe watches every datagram a node sends: the oracle learns the
// versions, and the invariants that hold at every moment are checked.
func (s *Sim) observe(from, to *simNode, d []byte) {
	var h wire.Header
	if err := h.Unmarshal(d); err != nil {
		s.fail("node %d sent a malformed datagram: %v", from.id, err)
		return
	}
	switch h.Kind {
	case wire.KindChanges, wire.KindSnapshot:
		if s.sum == nil {
			s.work.learn(s, to, &h, d[wire.HeaderSize:])
		}
		if h.Kind == wire.KindChanges && h.Flags&wire.FlagRetransmit != 0 && to == nil {
			s.resentToGroup(from, &h)
		}
	case wire.KindAnnounce:
		if h.Flags&wire.FlagReady != 0 && !isReady(from.n) {
			s.fail("node %d announces itself ready before its initial sync", from.id)
		}
	case wire.KindSyncStart:
		var st wire.SyncStart
		id, _ := wire.SplitSyncSeq(h.Seq)
		answer := [2]uint32{from.id, id}
		err := st.Unmarshal(d[wire.HeaderSize:])
		if err == nil && (st.Status == wire.SyncOK || st.Status == wire.SyncPartial) && !s.answered[answer] {
			// The first answer to a request: a repeated one is the same
			// answer again, of a transfer that began back then.
			s.answered[answer] = true
			// Sent with the node's receive lock held: its status is read
			// once the event that sent it is over, at the same time. A
			// ready requester takes only the server's own changes from it
			// (see Node.answer): then the server need only be ready; so
			// too if the requester's daemon has ended since it asked
			// (the answer is then lost: a restarted daemon asks anew,
			// under its new epoch). A partial snapshot may lack only lost
			// changes of peers not ready.
			n, to, initial, partial := from.n, to.id, to.n != nil && !isReady(to.n), st.Status == wire.SyncPartial
			s.at(s.now, 0, func() {
				status := n.Status()
				if !status.Ready || initial && status.Resync != nil {
					s.fail("node %d served node %d a snapshot while not in sync: ready %v, receiving a resync %v",
						from.id, to, status.Ready, status.Resync != nil)
				}
				for _, p := range status.Peers {
					if initial && p.Node != to && (p.Lag() != 0 || !p.MissingSince.IsZero() && !(partial && !p.Ready)) {
						s.fail("node %d served node %d a snapshot while %d datagrams behind node %d (%+v)",
							from.id, to, p.Lag(), p.Node, p)
					}
				}
			})
		}
	}
}

// resend names one datagram resent to the group.
type resend struct {
	node       uint32
	epoch, seq uint64
}

// resentToGroup checks that a datagram resent to the group was not
// resent there within [replication.GroupHoldoff]: however many receivers
// ask for it at about the same time, the group hears it once.
func (s *Sim) resentToGroup(from *simNode, h *wire.Header) {
	k := resend{from.id, h.Epoch, h.Seq}
	if last, ok := s.resent[k]; ok && s.now.Sub(last) < replication.GroupHoldoff {
		s.fail("node %d resent datagram %d to the group again %v after the last time", from.id, h.Seq, s.now.Sub(last))
	}
	s.resent[k] = s.now
}

// checkEvery is how often the invariants of a running daemon's state are
// checked.
const checkEvery = 250 * time.Millisecond

// check checks the invariants of the node's running daemon: its memory
// stays within its bounds, and it reports itself in sync only if it is.
func (n *simNode) check() {
	f := n.n.Footprint()
	if why := f.Exceeded(); why != "" {
		n.s.fail("node %d: %s", n.id, why)
	}
	known := n.s.sc.keys
	if n.s.sc.array {
		known = n.s.sc.maxEntries // an array's every entry, written or not
	}
	if f.Keys > known && n.s.sum == nil {
		n.s.fail("node %d knows %d keys, of %d", n.id, f.Keys, known)
	}
	// In sync as the status command says it (control.Status.InSync):
	// ready, receiving no resync, lagging behind no peer, owing no resync
	// from one. Then every change datagram of each peer's current stream
	// that it received, or that an announce it received claimed, is
	// applied.
	st := n.n.Status()
	if !st.Ready || st.Resync != nil {
		return
	}
	for _, p := range st.Peers {
		if p.Lag() != 0 || p.ResyncOwed {
			return
		}
	}
	for _, p := range st.Peers {
		if seq := n.received[streamKey{n.run, p.Node, p.Epoch}]; seq > p.Applied {
			n.s.fail("node %d reports itself in sync, but received datagram %d of node %d's epoch %d and applied up to %d",
				n.id, seq, p.Node, p.Epoch, p.Applied)
		}
	}
}

// learn takes the stamped records of a change or snapshot datagram sent
// to a node (to), or to the group (nil).
func (w *workload) learn(s *Sim, to *simNode, h *wire.Header, body []byte) {
	w.secs.Reset(body, h.Count)
	for {
		sec, err := w.secs.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			s.fail("node %d sent a datagram it cannot have encoded: %v", h.Node, err)
			return
		}
		w.recs.Reset(sec, keySize, s.sc.valueSize, w.secs.Base(), h.Node)
		for {
			rec, err := w.recs.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				s.fail("node %d sent a record it cannot have encoded: %v", h.Node, err)
				return
			}
			s.tracef("  record %s %x %x stamp %v origin %d", rec.Op, rec.Key, rec.Value, hlc.Stamp(rec.Stamp), rec.Origin)
			if rec.Stamp == 0 {
				if to != nil && rec.Op == ops.Update {
					to.holdUnstamped(rec.Key, rec.Value)
				}
				continue // unstamped: loses to every stamped write
			}
			if f := rec.Fragment; f.Count != 0 {
				// The first chunk holds the 8 bytes the workload wrote,
				// the rest of the value is zeros: it stands for the
				// record, which its sender sends whole or not at all.
				if f.Index != 0 {
					continue
				}
				rec.Value = append(bytes.Clone(rec.Value), make([]byte, f.Size-len(rec.Value))...)
			}
			// A value names the node whose datapath wrote it. Only that
			// node sends it as a change of its own; or one whose capture
			// lost changes, which stamps anew what its maps hold; or one
			// whose digest repairs healed a key, which writes the value
			// it picked as its own; or one that held the value unstamped
			// (its daemon started without a state file with the value in
			// its map, or a snapshot carried it unstamped), which stamps
			// it as its own write when a peer lacks it: no node knows
			// whose it was. (A snapshot may carry a local write not yet
			// read from the capture under the version of the write it
			// replaced: the change follows it. So may a change, or a
			// resync's sending back, carry a value written in place under
			// the version of the write it replaced, until a scan finds it
			// and sends it as a new write.)
			//
			// An array's zeros name no writer, and were in every node's
			// array from its creation: a stamped record of them is a
			// write only if its origin's array was written there (a
			// zeroing, or a value over which the zeros are a lost one),
			// or the zeros nobody wrote would win over real writes. (Or
			// if its sender's capture lost its own zeroing, which a
			// snapshot read before the sender found the loss carries at
			// the version of the write it replaced.)
			if s.sc.array && rec.Op == ops.Delete {
				s.fail("node %d sent a delete of array key %x (origin %d)", h.Node, rec.Key, rec.Origin)
				return
			}
			zero := s.sc.array && isZero(rec.Value)
			if o, from := rec.Origin, s.nodes[h.Node-1]; zero && o <= uint32(len(s.nodes)) && !s.nodes[o-1].maps[0].written[string(rec.Key)] &&
				!w.zerosSent[string(rec.Key)] && !(from.lostCaptures && from.maps[0].written[string(rec.Key)]) {
				s.fail("node %d sent array key %x's zeros, which node %d never wrote, stamped as its write", h.Node, rec.Key, o)
				return
			}
			if zero {
				w.zerosSent[string(rec.Key)] = true // a zeroing: a node may hold its zeros as its own now
			}
			if o := rec.Origin; h.Kind == wire.KindChanges && rec.Op == ops.Update && !zero && o <= uint32(len(s.nodes)) &&
				!s.nodes[o-1].lostCaptures && !s.nodes[o-1].healed() && !s.nodes[o-1].heldUnstamped(rec.Key, rec.Value) &&
				!w.inPlace[string(rec.Key)+string(rec.Value)] {
				if writer := binary.BigEndian.Uint32(rec.Value); writer != rec.Origin {
					s.fail("node %d sent key %x's value %x, written by node %d, as a write of node %d", h.Node, rec.Key, rec.Value[:8], writer, rec.Origin)
					return
				}
			}
			if rec.Origin == h.Node {
				w.own[ownKey(string(rec.Key), rec.Stamp, rec.Origin)] = true
			}
			// Of two values under one version, the later written in place
			// over the other: a value's last four bytes count the writes.
			r := wireRecord{stamp: rec.Stamp, origin: rec.Origin, op: rec.Op, value: rec.Value}
			if old, ok := w.latest[string(rec.Key)]; !ok || r.newer(old) || !old.newer(r) && w.inPlace[string(rec.Key)+string(rec.Value)] &&
				old.op == ops.Update && binary.BigEndian.Uint32(rec.Value[4:]) > binary.BigEndian.Uint32(old.value[4:]) {
				r.value = bytes.Clone(rec.Value)
				w.latest[string(rec.Key)] = r
			}
			if kv := string(rec.Key) + string(rec.Value); rec.Op == ops.Update && r.newer(w.stamped[kv]) {
				r.value = bytes.Clone(rec.Value)
				w.stamped[kv] = r
			}
		}
	}
}

// heal ends the faults: the network heals, every node's daemon runs.
func (s *Sim) heal() {
	if s.failed != nil {
		return
	}
	s.tracef("heal")
	s.net.heal()
	s.sc.lossPermille, s.sc.dupPermille = 0, 0
	for _, n := range s.nodes {
		n.start()
	}
}

// settleLimit bounds how long a healed cluster may take to converge:
// repair timeouts, the silence period and resyncs, with room to spare.
const settleLimit = 40 * time.Second

// settle runs the healed cluster until it has converged, or fails once
// it has had settleLimit to.
func (s *Sim) settle() {
	start := s.elapsed()
	for s.failed == nil {
		s.loop(s.elapsed() + 250*time.Millisecond)
		if s.converged() == nil {
			return
		}
		if s.elapsed()-start > settleLimit {
			s.fail("no convergence %v after the heal: %v", settleLimit, s.converged())
			return
		}
	}
}

// converged says why the cluster has not converged yet, nil once it has:
// every node ready, nothing missing, no resync running or owed, nothing
// held back or waiting to be sent, every map the same; of an LRU map,
// which evicts by each node's own use, every key the same on the nodes
// that hold it (see "LRU evictions" in docs/ARCHITECTURE.md).
func (s *Sim) converged() error {
	for _, n := range s.nodes {
		st := n.n.Status()
		if !st.Ready {
			return fmt.Errorf("node %d not ready", n.id)
		}
		if st.Resync != nil {
			return fmt.Errorf("node %d receiving a resync", n.id)
		}
		if f := n.n.Footprint(); f.Held > 0 || f.Relayed > 0 {
			return fmt.Errorf("node %d holds %d datagrams, and %d entries to send", n.id, f.Held, f.Relayed)
		}
		if len(st.Peers) != len(s.nodes)-1 {
			return fmt.Errorf("node %d knows %d peers of %d", n.id, len(st.Peers), len(s.nodes)-1)
		}
		for _, p := range st.Peers {
			if p.Lag() != 0 || !p.MissingSince.IsZero() || p.ResyncOwed {
				return fmt.Errorf("node %d lags %d datagrams behind node %d (a resync owed: %v)", n.id, p.Lag(), p.Node, p.ResyncOwed)
			}
		}
	}
	if s.sum != nil {
		return s.sum.diff()
	}
	for i, a := range s.nodes {
		for _, b := range s.nodes[i+1:] {
			if diff := s.mapDiff(a.maps[0], b.maps[0]); diff != "" {
				return fmt.Errorf("nodes %d and %d differ: %s", a.id, b.id, diff)
			}
		}
	}
	return nil
}

// checkEnd checks the invariants of a converged cluster.
func (s *Sim) checkEnd() {
	for _, n := range s.nodes {
		n.check()
	}
	if s.sum != nil {
		s.sum.checkEnd()
		return
	}
	if s.sc.crashes() {
		return // a crashed daemon's last writes are not promised: see the README's guarantees
	}
	if s.sc.lru && s.undigested() {
		return // what only digest rounds heal is not promised of an LRU map
	}
	// Every node's map: the maps are the same, but for the keys an LRU
	// map evicted.
	for _, n := range s.nodes {
		m := n.maps[0]
		for _, key := range m.sortedKeys() {
			// An array's entry holds zeros nobody wrote, or may hold
			// unstamped what a datapath wrote in place over them before
			// its node's first scan (which takes what it meets as it is),
			// carried so by the snapshots to every node.
			v := m.entries[key]
			if _, ok := s.work.latest[key]; !ok && !(m.array() && (isZero(v) || s.work.inPlace[key+string(v)])) {
				s.fail("node %d holds key %x (%x), which no node sent stamped", n.id, key, v)
			}
			// Zeros where datapaths wrote and none zeroed: a write lost,
			// whose loss the wire never showed (the oracle learns only
			// what was sent).
			if m.array() && isZero(m.entries[key]) && s.work.wrote[key] && !s.work.zeroed[key] {
				s.fail("node %d: array key %x holds zeros; datapaths wrote it and none zeroed it", n.id, key)
			}
		}
		for _, key := range slices.Sorted(maps.Keys(s.work.latest)) {
			want := s.work.latest[key]
			got, ok := m.entries[key]
			switch {
			case ok && m.lru() && want.op == ops.Update && s.work.evictedNewer(key, got):
				// A newer write of the key was evicted from the maps that
				// held it before it reached this node, which took an older
				// one: no node holds the newer value to send it.
			case ok && m.lru() && want.op == ops.Delete && !s.work.sentOwn(key, want):
				// The delete is an eviction, which its node never sent: a
				// resync from it, which lacked the key, deleted the key on
				// the requester as its delete (see "Full resync").
			case want.op == ops.Delete && ok:
				s.fail("node %d: key %x holds %x; its latest write (%d from node %d) deletes it", n.id, key, got, want.stamp, want.origin)
			case want.op == ops.Update && !ok && m.lru():
				// Evicted.
			case want.op == ops.Update && !m.array() && s.nodes[want.origin-1].lostCaptures && (!ok || want.newer(s.work.stamped[key+string(got)])):
				// Its origin's capture lost changes: the key's delete may
				// be among them, and deletes lost so are not promised; nor
				// is what is left once a merge brought back an older
				// value of a peer that missed the later writes, before a
				// digest round found the difference (the node's knowledge
				// of them is gone with the key, at its restart).
			case want.op == ops.Update && !bytes.Equal(got, want.value):
				s.fail("node %d: key %x holds %x (present %v); its latest write (%d from node %d) wrote %x",
					n.id, key, got, ok, want.stamp, want.origin, want.value)
			}
		}
	}
}

// undigested reports whether the run's faults leave differences that
// only digest rounds heal, which LRU maps take no part in: a change that
// reached some peers only before its writer crashed, or stopped while
// cut off from others; a delete lost to a capture overflow (see "Digest
// rounds" and "LRU evictions" in docs/ARCHITECTURE.md).
func (s *Sim) undigested() bool {
	if len(s.sc.stops) > 0 {
		return true
	}
	for _, n := range s.nodes {
		if n.lostCaptures {
			return true
		}
	}
	return false
}

// evict records that an LRU map evicted key's value.
func (w *workload) evict(key, value []byte) {
	w.evicted[string(key)] = append(w.evicted[string(key)], bytes.Clone(value))
}

// evictedNewer reports whether an LRU map evicted a value of key stamped
// newer than value.
func (w *workload) evictedNewer(key string, value []byte) bool {
	held := w.stamped[key+string(value)]
	for _, e := range w.evicted[key] {
		if w.stamped[key+string(e)].newer(held) {
			return true
		}
	}
	return false
}

// ownKey names a record by its key and version.
func ownKey(key string, stamp uint64, origin uint32) string {
	return key + string(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint32(nil, origin), stamp))
}

// sentOwn reports whether r, key's record, was sent by its origin itself.
func (w *workload) sentOwn(key string, r wireRecord) bool {
	return w.own[ownKey(key, r.stamp, r.origin)]
}

// mapDiff describes how two maps differ, "" if they hold the same: the
// first key, in key order, that they hold differently. Of LRU maps, only
// keys both hold are compared, and they may hold two values of one if an
// eviction lost a newer value than the older of the two: a snapshot
// lacks what its server evicted, and its requester takes the server's
// stream only after it, so a node that learned of the newer value only
// from that stream never got it.
func (s *Sim) mapDiff(a, b *memMap) string {
	keys := append(a.sortedKeys(), b.sortedKeys()...)
	slices.Sort(keys)
	for _, k := range slices.Compact(keys) {
		v, inA := a.entries[k]
		w, inB := b.entries[k]
		if a.lru() && (inA != inB || s.work.evictedNewer(k, v) || s.work.evictedNewer(k, w) || s.undigested()) {
			continue
		}
		if inA != inB || !bytes.Equal(v, w) {
			return fmt.Sprintf("key %x: %x (present %v) and %x (present %v)", k, v, inA, w, inB)
		}
	}
	return ""
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
