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
	"github.com/udpmapsync/udpmapsync/knowledge"
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

func (sw *stateWriter) version(kind byte, v knowledge.Version, valHash uint64, key []byte) {
	var b [20]byte
	binary.BigEndian.PutUint64(b[0:], uint64(v.Stamp))
	binary.BigEndian.PutUint32(b[8:], v.Origin)
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
	k    *knowledge.Store
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
	h := k.Lock()
	h.OpenOverlay()
	h.Unlock()
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
		err := k.ReadMap(m.Target, m.keySize, m.valueSize, func(h knowledge.Held, ks, vs []byte) {
			for o := 0; o*m.keySize < len(ks); o++ {
				key := ks[o*m.keySize : (o+1)*m.keySize]
				val := vs[o*m.valueSize : (o+1)*m.valueSize]
				sw.version(stateEntry, h.Current(i, key, val, n.time.Now()), knowledge.ValueHash(val), key)
			}
		}, nil)
		if err != nil {
			return nil, fmt.Errorf("read map %s: %w", m.Desc.Name, err)
		}
		h := k.Lock()
		for key, e := range h.Tombstones(i) {
			sw.version(stateDelete, e.Version(), 0, key)
		}
		h.Unlock()
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
	h := sv.k.Lock()
	h.TakeOverlay()
	h.Unlock()
	if sv.tmp != nil {
		_ = sv.tmp.Close()
		_ = os.Remove(sv.tmp.Name())
	}
}

// finish adds the versions recorded since the maps were read and puts the
// file in place. Call it once the node has stopped.
func (sv *stateSave) finish() (err error) {
	k, sw := sv.k, sv.sw
	h := k.Lock()
	late := h.TakeOverlay()
	h.Unlock()
	defer func() {
		if err != nil {
			sv.abort()
		}
	}()
	for i := range sv.tab.maps {
		sw.mapHeader(&sv.tab.maps[i])
		for key, w := range late[i] {
			kind := byte(stateEntry)
			if w.Deleted {
				kind = stateDelete
			}
			sw.version(kind, w.Version, w.ValueHash, []byte(key))
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
	maps []map[uint64]knowledge.Noted
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
	s := &savedState{maps: make([]map[uint64]knowledge.Noted, len(tab.maps)), keys: make([]map[uint64][]byte, len(tab.maps))}
	for i := range s.maps {
		s.maps[i], s.keys[i] = map[uint64]knowledge.Noted{}, map[uint64][]byte{}
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
func (s *savedState) readVersion(r *bytes.Reader, kind byte, m *localMap, keySize int, k *knowledge.Store) error {
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
	sv := knowledge.Noted{Version: knowledge.Version{Stamp: hlc.Stamp(binary.BigEndian.Uint64(b[0:])), Origin: binary.BigEndian.Uint32(b[8:])},
		Deleted: kind == stateDelete, ValueHash: binary.BigEndian.Uint64(b[12:])}
	h := k.Hash(key)
	s.maps[m.index][h] = sv
	s.keys[m.index][h] = key
	s.last = max(s.last, sv.Version.Stamp)
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
		err := k.ReadMap(m.Target, m.keySize, m.valueSize, func(h knowledge.Held, ks, vs []byte) {
			now := n.time.Now()
			for o := 0; o*m.keySize < len(ks); o++ {
				key, val := ks[o*m.keySize:(o+1)*m.keySize], vs[o*m.valueSize:(o+1)*m.valueSize]
				hash := k.Hash(key)
				sv, ok := saved[hash]
				delete(saved, hash)
				if ok && !sv.Deleted && sv.ValueHash == knowledge.ValueHash(val) {
					h.Set(h.Put(i, key), i, key, sv.Version, false, false, now)
					continue
				}
				n.writtenWhileDown(h, i, ops.Update, key, val, now)
				found++
			}
		}, nil)
		if err != nil {
			return found, fmt.Errorf("read map %s: %w", m.Desc.Name, err)
		}
		h := k.Lock()
		now := n.time.Now()
		// In key order, not Go's map order: the deletes made while no
		// daemon ran are sent in that order, the same on every run.
		left := slices.SortedFunc(maps.Keys(saved), func(a, b uint64) int { return bytes.Compare(s.keys[i][a], s.keys[i][b]) })
		for _, hash := range left {
			sv, key := saved[hash], s.keys[i][hash]
			if sv.Deleted {
				if sv.Version.Stamp.Time().After(now.Add(-k.Horizon())) {
					h.Set(h.Put(i, key), i, key, sv.Version, true, false, now)
				}
				continue
			}
			n.writtenWhileDown(h, i, ops.Delete, key, nil, now)
			found++
		}
		h.Unlock()
	}
	return found, nil
}

// writtenWhileDown records a change of key of map index m that the
// datapath made while no daemon ran, found against the state file, as a
// write of this node's, read from the map, and passes it on: as a scan
// does with what it finds.
func (n *Node) writtenWhileDown(h knowledge.Held, m int, op ops.Op, key, value []byte, now time.Time) {
	n.scan.found(h, m, op, key, value, now)
}
