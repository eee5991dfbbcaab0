package replication

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/wire"
)

// ErrRecordTooLarge rejects a map whose largest change does not fit
// [wire.MaxFragments] datagrams: the MTU must grow.
var ErrRecordTooLarge = errors.New("a change does not fit the datagrams of its fragments: raise the MTU")

// Map is one local map as the protocol sees it: the schema peers compare,
// the local id the [Source] reports, and where received changes go.
type Map struct {
	Desc   wire.Descriptor
	ID     ebpf.MapID
	Target Target
	// Options are the map's scanning and fields (package mapopt); the
	// zero value copies values as they are and never scans.
	Options mapopt.Options
	// CPUs is, for a per-CPU map, the possible CPUs of this node: its
	// values, and Desc.ValueSize, hold a slot for each. Zero otherwise.
	CPUs uint32
}

// MapFromLoader describes a map opened by the loader for [NewTable]. A
// per-CPU map's value travels whole, every CPU's slot: its descriptor's
// value size is that of the whole ([loader.Map.ValueLen]), so that a peer
// with another number of possible CPUs announces another schema.
func MapFromLoader(m *loader.Map) Map {
	return Map{
		Desc: wire.Descriptor{
			Name:       m.Name,
			Type:       uint32(m.Type),
			KeySize:    m.KeySize,
			ValueSize:  m.ValueLen,
			MaxEntries: m.MaxEntries,
			Flags:      m.Flags,
		},
		ID:     m.ID,
		Target: m,
		CPUs:   m.CPUs,
	}
}

// localMap is a [Map] with what the hot paths need precomputed.
type localMap struct {
	Map
	index     int // position in Table.maps
	fp        uint32
	keySize   int
	valueSize int
	plan      *fieldPlan // nil: values are copied as they are and not scanned
	// fragments is how many fragment records an update of this map
	// takes, for a value larger than a datagram holds; 0 if an update
	// fits one datagram whole.
	fragments int
	// prefixes is set for an LPM trie, whose keys a receiver makes
	// canonical ([loader.CanonicalPrefixes]) before it looks them up or
	// applies them.
	prefixes bool
}

// maxRecord is the size of this map's largest record: an update with the
// longest stamp.
func (m *localMap) maxRecord() int { return 1 + wire.RelayedStampSize + m.keySize + m.valueSize }

// Table is the set of replicated local maps, indexed by local id for the
// sender and by schema fingerprint for the receiver.
type Table struct {
	maps    []localMap
	byFP    map[uint32]*localMap
	payload int
	mono    monoClock // the clock of the maps' clock fields
}

// Datagram payload limits: the smallest fits a header and one descriptor
// with the longest name, so every announce can be sent; the largest is
// what UDP carries.
const (
	minPayload = wire.HeaderSize + wire.DescriptorSize + wire.MaxNameLen
	maxPayload = 0xffff
)

// NewTable checks that every map can be replicated in datagrams of at most
// payload bytes and indexes them. A map whose largest change does not fit
// one datagram sends its updates in fragments; it refuses maps whose
// changes would take more than [wire.MaxFragments], two maps of one name,
// and fingerprint collisions.
func NewTable(maps []Map, payload int) (*Table, error) {
	if len(maps) == 0 {
		return nil, errors.New("no maps to replicate")
	}
	if payload < minPayload || payload > maxPayload {
		return nil, fmt.Errorf("datagram payload of %d bytes is outside %d..%d: check the MTU", payload, minPayload, maxPayload)
	}
	t := &Table{
		maps:    make([]localMap, len(maps)),
		byFP:    make(map[uint32]*localMap, len(maps)),
		payload: payload,
	}
	for i, m := range maps {
		if _, err := m.Desc.AppendTo(nil); err != nil {
			return nil, fmt.Errorf("map %q: %w", m.Desc.Name, err)
		}
		lm := &t.maps[i]
		*lm = localMap{
			Map:       m,
			index:     i,
			keySize:   int(m.Desc.KeySize),
			valueSize: int(m.Desc.ValueSize),
			prefixes:  ebpf.MapType(m.Desc.Type) == ebpf.LPMTrie,
		}
		var err error
		if lm.plan, err = newFieldPlan(m.Options, lm.valueSize, &t.mono); err != nil {
			return nil, fmt.Errorf("map %q: %w", m.Desc.Name, err)
		}
		if err := lm.describeFields(payload); err != nil {
			return nil, err
		}
		if lm.keySize == 0 {
			return nil, fmt.Errorf("map %q: key size 0 cannot be replicated", m.Desc.Name)
		}
		if err := lm.planFragments(payload); err != nil {
			return nil, err
		}
		for _, prev := range t.maps[:i] {
			switch {
			case prev.Desc.Name == m.Desc.Name:
				return nil, fmt.Errorf("map %q: two maps with this name (ids %d and %d); peers match maps by name", m.Desc.Name, prev.ID, m.ID)
			case prev.fp == lm.fp:
				return nil, fmt.Errorf("maps %q and %q: same schema fingerprint %#08x; rename one", prev.Desc.Name, m.Desc.Name, lm.fp)
			}
		}
		t.byFP[lm.fp] = lm
	}
	return t, nil
}

// planFragments decides whether an update of m fits a datagram of
// payload bytes whole, and otherwise how many fragments it takes. It
// refuses a map whose key leaves no room for a chunk, or whose values
// take more than [wire.MaxFragments].
func (m *localMap) planFragments(payload int) error {
	const headers = wire.HeaderSize + wire.StampBaseSize + wire.SectionHeaderSize
	if headers+m.maxRecord() <= payload {
		return nil
	}
	room := wire.FragmentRoom(payload, m.keySize)
	if m.fragments = wire.FragmentCount(m.valueSize, room); m.fragments == 0 {
		need := headers + 1 + wire.RelayedStampSize + m.keySize + wire.FragmentHeaderSize +
			(m.valueSize+wire.MaxFragments-1)/wire.MaxFragments
		return fmt.Errorf("map %q: a change of key %d and value %d bytes takes more than %d fragments of a %d-byte datagram payload: %w by at least %d bytes",
			m.Desc.Name, m.keySize, m.valueSize, wire.MaxFragments, payload, ErrRecordTooLarge, need-payload)
	}
	return nil
}

// largestFragmented is the value size of the largest map whose updates
// travel in fragments; 0 if there is none.
func (t *Table) largestFragmented() int {
	n := 0
	for i := range t.maps {
		if t.maps[i].fragments > 0 {
			n = max(n, t.maps[i].valueSize+t.maps[i].keySize+partialOverhead)
		}
	}
	return n
}

// byID finds the map the source reports as id; nil if it is not replicated.
func (t *Table) byID(id ebpf.MapID) *localMap {
	for i := range t.maps {
		if t.maps[i].ID == id {
			return &t.maps[i]
		}
	}
	return nil
}

// byName finds the local map named name; nil if there is none.
func (t *Table) byName(name string) *localMap {
	for i := range t.maps {
		if t.maps[i].Desc.Name == name {
			return &t.maps[i]
		}
	}
	return nil
}

// newKnowledge makes the knowledge of the maps of t, counting into stats,
// started at start.
func newKnowledge(t *Table, horizon time.Duration, clock *hlc.Clock, node uint32, stats *Stats, start time.Time) *knowledge.Store {
	sizes, arrays := make([]int, len(t.maps)), make([]bool, len(t.maps))
	for i := range t.maps {
		sizes[i] = t.maps[i].keySize
		// A sum map's keys are its counters' contributions, not the array's.
		arrays[i] = loader.ArrayType(ebpf.MapType(t.maps[i].Desc.Type)) && t.maps[i].Options.Merge != mapopt.Sum
	}
	return knowledge.New(knowledge.Config{KeySizes: sizes, Arrays: arrays, Horizon: horizon, Clock: clock, Node: node, Start: start,
		Restamped: &stats.Restamped, TombstonesDropped: &stats.TombstonesDropped})
}
