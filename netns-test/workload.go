package netnstest

import (
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"

	"github.com/cilium/ebpf"
)

// Change is one write of a [Workload] to one map.
type Change struct {
	// Map is the [MapSpec.Name] of the map written.
	Map string
	// Delete is set for a delete; Value is nil then.
	Delete     bool
	Key, Value []byte
}

// WorkloadConfig shapes a [Workload].
type WorkloadConfig struct {
	// Maps are the maps this writer writes.
	Maps []MapSpec
	// Writer is this writer's number, 1 to Writers. Writers never touch
	// each other's keys: hash keys start with the writer's number, and
	// each writer has its own block of array slots.
	Writer, Writers int
	// Keys is how many distinct keys per map the writer draws from; with
	// fewer keys than changes, keys are written several times.
	Keys int
	// DeleteRatio is the chance that a change to a key the map holds
	// deletes it. Arrays are never deleted from.
	DeleteRatio float64
	// Seed makes the workload reproducible.
	Seed uint64
}

// Workload makes random updates and deletes and keeps the contents they
// leave in the maps.
type Workload struct {
	cfg  WorkloadConfig
	rng  *rand.Rand
	keys [][][]byte // per map, the keys drawn from
	want map[string]Contents
}

// NewWorkload prepares the key pools of a workload.
func NewWorkload(cfg WorkloadConfig) (*Workload, error) {
	if cfg.Writers < 1 || cfg.Writers > 255 || cfg.Writer < 1 || cfg.Writer > cfg.Writers {
		return nil, fmt.Errorf("new workload: writer %d of %d, want 1 <= writer <= writers <= 255", cfg.Writer, cfg.Writers)
	}
	if len(cfg.Maps) == 0 || cfg.Keys < 1 {
		return nil, fmt.Errorf("new workload: %d maps, %d keys per map; want at least one of each", len(cfg.Maps), cfg.Keys)
	}
	w := &Workload{
		cfg:  cfg,
		rng:  rand.New(rand.NewPCG(cfg.Seed, uint64(cfg.Writer))),
		want: make(map[string]Contents),
	}
	for _, m := range cfg.Maps {
		keys, err := w.drawKeys(m)
		if err != nil {
			return nil, fmt.Errorf("new workload: %w", err)
		}
		w.keys = append(w.keys, keys)
		w.want[m.Name] = make(Contents)
	}
	return w, nil
}

// drawKeys picks the writer's distinct keys for map m.
func (w *Workload) drawKeys(m MapSpec) ([][]byte, error) {
	n := w.cfg.Keys
	if m.Type == ebpf.Array {
		if m.KeySize != 4 {
			return nil, fmt.Errorf("array %s: key size %d, want 4", m.Name, m.KeySize)
		}
		block := int(m.MaxEntries) / w.cfg.Writers
		first := (w.cfg.Writer - 1) * block
		n = min(n, block)
		var keys [][]byte
		for _, i := range w.rng.Perm(block)[:n] {
			keys = append(keys, binary.NativeEndian.AppendUint32(nil, uint32(first+i)))
		}
		return keys, nil
	}
	if room := KeyRoom([]MapSpec{m}, w.cfg.Writers); n > room {
		return nil, fmt.Errorf("map %s: %d keys per writer, but %d writers may use at most %d each of its %d entries", m.Name, n, w.cfg.Writers, room, m.MaxEntries)
	}
	if m.KeySize < 2 {
		return nil, fmt.Errorf("map %s: key size %d, want at least 2 (one byte names the writer)", m.Name, m.KeySize)
	}
	seen := make(map[string]bool, n)
	var keys [][]byte
	for len(keys) < n {
		k := w.random(int(m.KeySize))
		k[0] = byte(w.cfg.Writer)
		if !seen[string(k)] {
			seen[string(k)] = true
			keys = append(keys, k)
		}
	}
	return keys, nil
}

func (w *Workload) random(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(w.rng.Uint32())
	}
	return b
}

// KeyRoom is the most keys per map each of writers may use in maps:
// together they fill at most half of any hash map, so a hash never fills
// (bpftool would fail with E2BIG) and an LRU never evicts. Arrays take
// any number and use a slot per key.
func KeyRoom(maps []MapSpec, writers int) int {
	room := math.MaxInt
	for _, m := range maps {
		if m.Type != ebpf.Array {
			room = min(room, int(m.MaxEntries)/2/writers)
		}
	}
	return room
}

// Next makes the next change and records its effect in [Workload.Want].
func (w *Workload) Next() Change {
	i := w.rng.IntN(len(w.cfg.Maps))
	m := w.cfg.Maps[i]
	key := w.keys[i][w.rng.IntN(len(w.keys[i]))]
	want := w.want[m.Name]
	if _, held := want[string(key)]; held && m.Type != ebpf.Array && w.rng.Float64() < w.cfg.DeleteRatio {
		delete(want, string(key))
		return Change{Map: m.Name, Delete: true, Key: key}
	}
	value := w.random(int(m.ValueSize))
	// Never all zeros: an array slot holding zeros reads as unwritten.
	value[0] |= 1
	want[string(key)] = string(value)
	return Change{Map: m.Name, Key: key, Value: value}
}

// Want is what the maps hold after the changes made so far, by map name.
// It changes with every [Workload.Next].
func (w *Workload) Want() map[string]Contents {
	return w.want
}

// Union merges the wanted contents of writers with disjoint keys.
func Union(parts ...map[string]Contents) map[string]Contents {
	u := make(map[string]Contents)
	for _, p := range parts {
		for name, c := range p {
			if u[name] == nil {
				u[name] = make(Contents)
			}
			maps.Copy(u[name], c)
		}
	}
	return u
}
