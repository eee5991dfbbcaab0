package metrics

import (
	"fmt"
	"sync"
	"time"

	"github.com/udpmapsync/udpmapsync/loader"
)

// DefaultEntriesTTL is how long a map's entry count is reused before the
// map is walked again.
const DefaultEntriesTTL = 5 * time.Second

// countBatch is how many entries one batch read of a map returns: more
// than any hash bucket holds, few enough that the buffers stay small
// (256 × 4.5 KiB at the largest key and value sizes).
const countBatch = 256

// Dumper reads a map a batch at a time, as [loader.Map.Dump] does.
type Dumper interface {
	Dump(keys, values []byte, fn func(keys, values []byte) error) error
}

// CountedMap is one map whose entries an [EntryCounter] counts.
type CountedMap struct {
	Name                           string
	KeySize, ValueSize, MaxEntries uint32
	Map                            Dumper
}

// LoaderMaps describes the replicated maps for [NewEntryCounter].
func LoaderMaps(maps []*loader.Map) []CountedMap {
	out := make([]CountedMap, len(maps))
	for i, m := range maps {
		out[i] = CountedMap{Name: m.Name, KeySize: m.KeySize, ValueSize: m.ValueSize, MaxEntries: m.MaxEntries, Map: m}
	}
	return out
}

// MapEntries is the entry count of one map.
type MapEntries struct {
	Name    string
	Entries uint64
	// At is when the map was counted: a count is up to the counter's TTL
	// old.
	At time.Time
	// Err is why the map could not be counted; Entries is then the last
	// count, if any.
	Err error
}

// EntryCounter counts the entries of maps by reading them with batch
// lookups, and keeps each count for a TTL, so that frequent scrapes of a
// map with a million entries do not each cost a full walk. An array
// always holds MaxEntries entries, written or not.
type EntryCounter struct {
	ttl time.Duration
	now func() time.Time

	mu   sync.Mutex // one walk at a time; guards maps
	maps []counted
}

type counted struct {
	CountedMap
	last         MapEntries
	keys, values []byte
}

// NewEntryCounter counts maps' entries, each at most once per ttl (zero
// means [DefaultEntriesTTL]).
func NewEntryCounter(maps []CountedMap, ttl time.Duration) *EntryCounter {
	if ttl <= 0 {
		ttl = DefaultEntriesTTL
	}
	c := &EntryCounter{ttl: ttl, now: time.Now}
	for _, m := range maps {
		c.maps = append(c.maps, counted{CountedMap: m})
	}
	return c
}

// Counts returns every map's entry count, in the order the maps were
// given, walking the maps whose count is older than the TTL.
func (c *EntryCounter) Counts() []MapEntries {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]MapEntries, len(c.maps))
	for i := range c.maps {
		m := &c.maps[i]
		if now := c.now(); m.last.At.IsZero() || now.Sub(m.last.At) >= c.ttl {
			n, err := m.count()
			if err == nil {
				m.last.Entries = n
			}
			m.last = MapEntries{Name: m.Name, Entries: m.last.Entries, At: now, Err: err}
		}
		out[i] = m.last
	}
	return out
}

// count walks the map once.
func (m *counted) count() (uint64, error) {
	if m.keys == nil {
		n := int(max(min(m.MaxEntries, countBatch), 1))
		m.keys = make([]byte, n*int(max(m.KeySize, 1)))
		m.values = make([]byte, n*int(max(m.ValueSize, 1)))
	}
	var n uint64
	err := m.Map.Dump(m.keys, m.values, func(keys, _ []byte) error {
		n += uint64(len(keys) / int(max(m.KeySize, 1)))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("count entries of map %s: %w", m.Name, err)
	}
	return n, nil
}
