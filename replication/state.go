package replication

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/ops"
)

// The state file keeps what a node knows of its maps across a restart of
// its daemon, so that the restarted daemon can tell the writes its
// datapath made while no daemon ran from the entries it already knew:
// for every entry, its version and a hash of its value; for every
// remembered delete, its key and version. See "Restart" in
// docs/ARCHITECTURE.md.
//
// Layout, big-endian: the magic, the boot id of the kernel that ran the
// daemon, then records until the end record, then a CRC-32 (Castagnoli)
// of everything before it. A record is a kind byte; a map record names
// the map the entry records after it belong to (fingerprint, id, key
// size), an
// entry or delete record is stamp u64, origin u32, value hash u64 and the
// key. The file is only ever read by the daemon that wrote it, on the same
// machine and kernel, and removed once read.
const (
	stateMagic = "udpmapsync state 1\n"

	stateMap    = 1
	stateEntry  = 2
	stateDelete = 3
	stateEnd    = 4

	// stateDrainWait bounds how long a stopping node waits for its capture
	// to drain after reading its maps; a capture that never drains (a
	// datapath writing at full speed) leaves no state file.
	stateDrainWait = 2 * time.Second
)

var errStateMismatch = errors.New("saved state is of another boot or another map")

// bootID names the running kernel: map ids and map contents of another
// boot say nothing about this one.
func bootID() ([]byte, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return bytes.TrimSpace(b), err
}

// valueHash is FNV-1a 64 of a value: a hash that is the same in every
// run, unlike the knowledge's seeded one.
func valueHash(b []byte) uint64 {
	h := uint64(0xcbf29ce484222325)
	for _, c := range b {
		h = (h ^ uint64(c)) * 0x100000001b3
	}
	return h
}

// savedVersion is what the state file says of one key.
type savedVersion struct {
	v       version
	tomb    bool
	valHash uint64
}

// overlay collects the versions recorded while a stopping node saves its
// state: writes that came after the map read their key.
type overlay map[string]savedVersion

func overlayKey(m int, key []byte) string { return string(append([]byte{byte(m)}, key...)) }

// note records a write of key of map index m in the overlay, if one is
// being collected. Called with the knowledge lock held.
func (k *knowledge) note(m int, key []byte, v version, op ops.Op, value []byte) {
	if k.overlay == nil {
		return
	}
	k.overlay[overlayKey(m, key)] = savedVersion{v: v, tomb: op == ops.Delete, valHash: valueHash(value)}
}

// stateWriter writes a state file.
type stateWriter struct {
	w   *bufio.Writer
	crc hashWriter
	buf []byte
}

type hashWriter struct{ sum uint32 }

func (h *hashWriter) Write(p []byte) (int, error) {
	h.sum = crc32.Update(h.sum, castagnoli, p)
	return len(p), nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func (sw *stateWriter) record(kind byte, parts ...[]byte) {
	sw.buf = append(sw.buf[:0], kind)
	for _, p := range parts {
		sw.buf = append(sw.buf, p...)
	}
	sw.crc.Write(sw.buf)
	sw.w.Write(sw.buf)
}

func (sw *stateWriter) version(kind byte, v version, valHash uint64, key []byte) {
	var b [20]byte
	binary.BigEndian.PutUint64(b[0:], uint64(v.stamp))
	binary.BigEndian.PutUint32(b[8:], v.origin)
	binary.BigEndian.PutUint64(b[12:], valHash)
	sw.record(kind, b[:], key)
}

func (sw *stateWriter) mapHeader(m *localMap) {
	var b [12]byte
	binary.BigEndian.PutUint32(b[0:], m.fp)
	binary.BigEndian.PutUint32(b[4:], uint32(m.ID))
	binary.BigEndian.PutUint32(b[8:], uint32(m.keySize))
	sw.record(stateMap, b[:])
}

// stateSave is a state file being written: begun while the node runs,
// finished once nothing of it runs any more.
type stateSave struct {
	k    *knowledge
	tab  *Table
	tmp  *os.File
	sw   *stateWriter
	to   string
	read time.Time // when the maps were read
}

// startState starts the state file at path while the node still runs: it
// reads every map with the versions it knows; the caller then lets the
// capture drain (see [stateSave.drained]), so that every write made
// before the read is stamped. From the read on, every version recorded goes to an overlay, which
// [stateSave.finish] adds once the node has stopped: a write made after
// that differs from the file, so the next run takes it as made while no
// daemon ran, and neither a local change nor an apply of the last moments
// is taken for one.
func (n *Node) startState(path string) (_ *stateSave, err error) {
	boot, err := bootID()
	if err != nil {
		return nil, fmt.Errorf("read the boot id: %w", err)
	}
	k := n.know
	k.mu.Lock()
	k.overlay = overlay{}
	k.mu.Unlock()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*")
	sv := &stateSave{k: k, tab: n.apply.table, tmp: tmp, to: path}
	if err != nil {
		sv.abort()
		return nil, err
	}
	defer func() {
		if err != nil {
			sv.abort()
		}
	}()
	sw := &stateWriter{w: bufio.NewWriterSize(tmp, 1<<20)}
	sv.sw = sw
	sw.record(0, []byte(stateMagic), boot, []byte{'\n'})
	for i := range n.apply.table.maps {
		m := &n.apply.table.maps[i]
		sw.mapHeader(m)
		err := k.eachBatch(m, func(ks, vs []byte) {
			for o := 0; o*m.keySize < len(ks); o++ {
				key := ks[o*m.keySize : (o+1)*m.keySize]
				v := k.current(i, key, n.time.Now())
				sw.version(stateEntry, v, valueHash(vs[o*m.valueSize:(o+1)*m.valueSize]), key)
			}
		}, nil)
		if err != nil {
			return nil, fmt.Errorf("read map %s: %w", m.Desc.Name, err)
		}
		k.mu.Lock()
		l := &k.tombs[i]
		for j := range l.len() {
			key, v := l.at(j)
			if sl := k.lookup(i, key); sl != nil && sl.tombstone() && sl.version() == v {
				sw.version(stateDelete, v, 0, key)
			}
		}
		k.mu.Unlock()
	}
	sv.read = n.time.Now()
	return sv, nil
}

// errNotDrained: a stopping node's capture did not drain after its maps
// were read.
var errNotDrained = errors.New("the capture did not drain: the datapath writes too fast to save a consistent state")

// drained reports whether the capture has drained since the maps were
// read (drainedAt: see sender.drainedAt), so that every write made before
// the read is stamped.
func (sv *stateSave) drained(drainedAt *atomic.Int64) bool {
	return !time.Unix(0, drainedAt.Load()).Before(sv.read.Add(captureSlack))
}

// awaitDrain waits, for stateDrainWait at most, until the capture has
// drained since the maps were read, while the sender runs on.
func (n *Node) awaitDrain(sv *stateSave, drainedAt *atomic.Int64) error {
	for deadline := sv.read.Add(stateDrainWait); !sv.drained(drainedAt); {
		if n.time.Now().After(deadline) {
			return errNotDrained
		}
		n.time.Sleep(time.Millisecond)
	}
	return nil
}

// abort gives the state file up.
func (sv *stateSave) abort() {
	sv.k.mu.Lock()
	sv.k.overlay = nil
	sv.k.mu.Unlock()
	if sv.tmp != nil {
		_ = sv.tmp.Close()
		_ = os.Remove(sv.tmp.Name())
	}
}

// finish adds the versions recorded since the maps were read and puts the
// file in place. Call it once the node has stopped.
func (sv *stateSave) finish() (err error) {
	k, sw := sv.k, sv.sw
	k.mu.Lock()
	late := k.overlay
	k.overlay = nil
	k.mu.Unlock()
	defer func() {
		if err != nil {
			sv.abort()
		}
	}()
	for i := range sv.tab.maps {
		sw.mapHeader(&sv.tab.maps[i])
		for ok, s := range late {
			if int(ok[0]) != i {
				continue
			}
			kind := byte(stateEntry)
			if s.tomb {
				kind = stateDelete
			}
			sw.version(kind, s.v, s.valHash, []byte(ok[1:]))
		}
	}
	sw.record(stateEnd)
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], sw.crc.sum)
	sw.w.Write(sum[:])
	if err := sw.w.Flush(); err != nil {
		return err
	}
	if err := sv.tmp.Sync(); err != nil {
		return err
	}
	if err := sv.tmp.Close(); err != nil {
		return err
	}
	return os.Rename(sv.tmp.Name(), sv.to)
}

// savedState is a state file read back: per local map index, the saved
// version of each key by the knowledge's hash of it, and the keys.
type savedState struct {
	maps []map[uint64]savedVersion
	keys []map[uint64][]byte // of saved entries, for deletes made while no daemon ran
	last hlc.Stamp           // the largest stamp in the file
}

// readState reads the state file at path for the local maps; a map of
// the file that is not the same local map (fingerprint and id) is left
// out. It returns errStateMismatch for a file of another boot.
func (n *Node) readState(path string) (*savedState, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) < len(stateMagic)+5 ||
		crc32.Checksum(data[:len(data)-4], castagnoli) != binary.BigEndian.Uint32(data[len(data)-4:]) {
		return nil, errors.New("state file damaged (truncated or changed)")
	}
	boot, err := bootID()
	if err != nil {
		return nil, err
	}
	r := bytes.NewReader(data[:len(data)-4])
	head := append(append([]byte{0}, stateMagic...), boot...)
	head = append(head, '\n')
	got := make([]byte, len(head))
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, head) {
		return nil, errStateMismatch
	}
	tab := n.apply.table
	s := &savedState{maps: make([]map[uint64]savedVersion, len(tab.maps)), keys: make([]map[uint64][]byte, len(tab.maps))}
	for i := range s.maps {
		s.maps[i], s.keys[i] = map[uint64]savedVersion{}, map[uint64][]byte{}
	}
	var m *localMap
	keySize := 0
	for {
		kind, err := r.ReadByte()
		if err != nil {
			return nil, errors.New("state file ends early")
		}
		switch kind {
		case stateEnd:
			return s, nil
		case stateMap:
			var b [12]byte
			if _, err := io.ReadFull(r, b[:]); err != nil {
				return nil, errors.New("state file ends early")
			}
			m, keySize = tab.byFP[binary.BigEndian.Uint32(b[0:])], int(binary.BigEndian.Uint32(b[8:]))
			if m != nil && (uint32(m.ID) != binary.BigEndian.Uint32(b[4:]) || m.keySize != keySize) {
				m = nil // the same schema, but a map created since: its entries say nothing of this one
			}
		case stateEntry, stateDelete:
			if err := s.readVersion(r, kind, m, keySize, n.know); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("state file: unknown record %d", kind)
		}
	}
}

// readVersion reads one entry or delete record, with a key of keySize
// bytes, of m (nil: of no local map, skipped).
func (s *savedState) readVersion(r *bytes.Reader, kind byte, m *localMap, keySize int, k *knowledge) error {
	var b [20]byte
	key := make([]byte, keySize)
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return errors.New("state file ends early")
	}
	if _, err := io.ReadFull(r, key); err != nil {
		return errors.New("state file ends early")
	}
	if m == nil {
		return nil
	}
	sv := savedVersion{v: version{hlc.Stamp(binary.BigEndian.Uint64(b[0:])), binary.BigEndian.Uint32(b[8:])},
		tomb: kind == stateDelete, valHash: binary.BigEndian.Uint64(b[12:])}
	h := k.hash(key)
	s.maps[m.index][h] = sv
	s.keys[m.index][h] = key
	s.last = max(s.last, sv.v.stamp)
	return nil
}

// restoreState takes the state file of this node's previous run, if
// there is one of this boot, into the knowledge, and removes it: entries
// whose value is the one saved get their saved version; the others, and
// the keys saved but gone, were written while no daemon ran, and become
// writes of this node's, stamped now and passed on. Without a usable file
// every entry is unstamped. It returns how many writes it found.
func (n *Node) restoreState(path string) (int, error) {
	s, err := n.readState(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	defer os.Remove(path)
	if err != nil {
		return 0, err
	}
	n.clock.Observe(s.last)
	k, found := n.know, 0
	for i := range n.apply.table.maps {
		m := &n.apply.table.maps[i]
		saved := s.maps[i]
		err := k.eachBatch(m, func(ks, vs []byte) {
			now := n.time.Now()
			for o := 0; o*m.keySize < len(ks); o++ {
				key, val := ks[o*m.keySize:(o+1)*m.keySize], vs[o*m.valueSize:(o+1)*m.valueSize]
				h := k.hash(key)
				sv, ok := saved[h]
				delete(saved, h)
				if ok && !sv.tomb && sv.valHash == valueHash(val) {
					k.set(i, key, sv.v, false, false, now)
					continue
				}
				n.writtenWhileDown(i, ops.Update, key, val, now)
				found++
			}
		}, nil)
		if err != nil {
			return found, fmt.Errorf("read map %s: %w", m.Desc.Name, err)
		}
		k.mu.Lock()
		now := n.time.Now()
		// In key order, not Go's map order: the deletes made while no
		// daemon ran are sent in that order, the same on every run.
		left := slices.SortedFunc(maps.Keys(saved), func(a, b uint64) int { return bytes.Compare(s.keys[i][a], s.keys[i][b]) })
		for _, h := range left {
			sv, key := saved[h], s.keys[i][h]
			if sv.tomb {
				if sv.v.stamp.Time().After(now.Add(-k.horizon)) {
					k.set(i, key, sv.v, true, false, now)
				}
				continue
			}
			n.writtenWhileDown(i, ops.Delete, key, nil, now)
			found++
		}
		k.mu.Unlock()
	}
	return found, nil
}

// writtenWhileDown records a change of key of map index m that the
// datapath made while no daemon ran, found against the state file, as a
// write of this node's, read from the map, and passes it on. Called with
// the knowledge lock held.
func (n *Node) writtenWhileDown(m int, op ops.Op, key, value []byte, now time.Time) {
	v := version{stamp: n.clock.At(now), origin: n.node}
	n.know.set(m, key, v, op == ops.Delete, true, now) // read from the map: see knowledge.set
	n.relay.add(m, op, v, key, value)
}
