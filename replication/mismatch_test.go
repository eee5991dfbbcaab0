package replication

import (
	"bytes"
	"encoding/binary"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/wire"
)

// Two nodes whose map "flows" differs in a clock field: node 1 keeps a
// mono-s lifetime in the value's first 4 bytes, node 2 copies those bytes
// as they are. Neither applies the other's changes or snapshot, each
// counts the mismatch once and names it, in its log and its status.
func TestFieldsMismatch(t *testing.T) {
	lifetime := mapopt.Clock{Field: mapopt.Field{Name: "lifetime", Offset: 0, Size: 4}, Kind: mapopt.MonoS}
	n := memNet{opts: map[uint32]mapopt.Options{1: {Clocks: []mapopt.Clock{lifetime}}}}
	// Every record either node sends is of flows: sent counts them by
	// sender, so each node must count as many unknown. written says which
	// node's write below went out.
	var sent, written [3]atomic.Uint64
	n.drop = func(d []byte) bool {
		if k := wire.Kind(d[3]); k == wire.KindChanges || k == wire.KindSnapshot {
			from := binary.BigEndian.Uint32(d[8:])
			sent[from].Add(uint64(binary.BigEndian.Uint16(d[6:])))
			if bytes.Contains(d, []byte("akey")) || bytes.Contains(d, []byte("bkey")) {
				written[from].Add(1)
			}
		}
		return false
	}
	a := startMemNode(t, &n, 1, entries(50, 'a', 1))
	b := startMemNode(t, &n, 2, entries(50, 'b', 1))
	a.waitReady(t)
	b.waitReady(t)
	a.write("akey", "value--1", false)
	b.write("bkey", "value--2", false)
	waitCount(t, "node 1's datagrams with its write", &written[1], 1)
	waitCount(t, "node 2's datagrams with its write", &written[2], 1)
	waitCount(t, "node 2's unknown_map", &b.stats.UnknownMap, sent[1].Load())
	waitCount(t, "node 1's unknown_map", &a.stats.UnknownMap, sent[2].Load())

	if got, want := a.flows.snapshot(), with(entries(50, 'a', 1), "akey", "value--1"); !maps.Equal(got, want) {
		t.Errorf("node 1 holds %d entries, want its own %d: a change of node 2 was applied", len(got), len(want))
	}
	if got, want := b.flows.snapshot(), with(entries(50, 'b', 1), "bkey", "value--2"); !maps.Equal(got, want) {
		t.Errorf("node 2 holds %d entries, want its own %d: a change of node 1 was applied", len(got), len(want))
	}
	for _, c := range []struct {
		node *memNode
		why  string
	}{
		{a, "flows: this node treats lifetime (offset 0, 4 bytes) as a mono-s clock field, the peer does not"},
		{b, "flows: the peer treats bytes at offset 0, 4 bytes as a mono-s clock field, this node does not"},
	} {
		if s := c.node.stats.Snapshot(); s.MapMismatches != 1 || s.ChangesApplied != 0 || s.Malformed != 0 {
			t.Errorf("map_mismatches %d, changes_applied %d, malformed %d; want 1, 0, 0", s.MapMismatches, s.ChangesApplied, s.Malformed)
		}
		peers := c.node.n.Status().Peers
		if len(peers) != 1 || len(peers[0].Mismatches) != 1 || peers[0].Mismatches[0] != c.why {
			t.Errorf("status peers %+v, want one mismatch %q", peers, c.why)
		}
		logs := c.node.logs.String()
		for _, want := range []string{"map=flows", strings.TrimPrefix(c.why, "flows: "), "give every node the same clock= and local= options"} {
			if !strings.Contains(logs, want) {
				t.Errorf("log lacks %q:\n%s", want, logs)
			}
		}
	}
}

func with(m map[string]string, k, v string) map[string]string {
	m[k] = v
	return m
}

// Only the options that change what a value's bytes mean on the wire go
// into a map's fingerprint: clock, local and lock fields. Scanning,
// refresh and the vanished rule act on one node alone.
func TestFingerprintFields(t *testing.T) {
	base := mapopt.Options{Clocks: []mapopt.Clock{{Field: mapopt.Field{Name: "lifetime", Offset: 0, Size: 4}, Kind: mapopt.MonoS}}}
	fp := func(o mapopt.Options) uint32 {
		m := testMap("flows", 10, 4, 8, nopTarget{})
		m.Options = o
		return mustTable(t, testPayload, m).maps[0].fp
	}
	plain, want := fp(mapopt.Options{}), fp(base)
	if schema := testMap("flows", 10, 4, 8, nopTarget{}).Desc; plain != schema.Fingerprint() {
		t.Error("a map without fields has another fingerprint than its schema's")
	}
	if want == plain {
		t.Error("a clock field leaves the fingerprint unchanged")
	}
	local := base
	local.Scan, local.Vanished, local.RefreshPeriod = time.Second, mapopt.Delete, 30*time.Second
	local.Refresh = []mapopt.Field{{Name: "lifetime", Offset: 0, Size: 4}}
	if fp(local) != want {
		t.Error("scan, vanished or refresh change the fingerprint")
	}
	for name, o := range map[string]mapopt.Options{
		"clock kind":   {Clocks: []mapopt.Clock{{Field: base.Clocks[0].Field, Kind: mapopt.MonoNS}}},
		"clock offset": {Clocks: []mapopt.Clock{{Field: mapopt.Field{Offset: 4, Size: 4}, Kind: mapopt.MonoS}}},
		"local field":  {Clocks: base.Clocks, Local: []mapopt.Field{{Offset: 4, Size: 2}}},
		"spin lock":    {Clocks: base.Clocks, Lock: &mapopt.Field{Offset: 4, Size: 4}},
	} {
		if fp(o) == want || fp(o) == plain {
			t.Errorf("another %s leaves the fingerprint unchanged", name)
		}
	}
	// Two adjacent local fields are the bytes of one: the same map.
	one := mapopt.Options{Local: []mapopt.Field{{Offset: 0, Size: 4}}}
	two := mapopt.Options{Local: []mapopt.Field{{Offset: 0, Size: 2}, {Offset: 2, Size: 2}}}
	if fp(one) != fp(two) {
		t.Error("local fields over the same bytes, named apart, change the fingerprint")
	}
}

// A peer announcing many fields is described in a bounded number of
// phrases, since the status keeps them.
func TestDifferencesBounded(t *testing.T) {
	m := &mustTable(t, testPayload, testMap("flows", 10, 4, 64, nopTarget{})).maps[0]
	peer := m.Desc
	for off := range uint16(20) { // local and lock bytes by turns: 20 fields
		peer.Fields = append(peer.Fields, wire.Field{Kind: wire.FieldLocal + wire.FieldKind(off%2), Offset: off, Size: 1})
	}
	if err := wire.CheckFields(peer.Fields, peer.ValueSize); err != nil {
		t.Fatal(err)
	}
	why, fix := m.differences(&peer)
	if len(why) != maxDifferences+1 || why[maxDifferences] != "and 12 more" || fix != fieldsFix ||
		why[1] != "the peer treats bytes at offset 1, 1 byte as a spin lock field, this node does not" {
		t.Errorf("differences: %d phrases %q, fix %q", len(why), why, fix)
	}
}

// Per-CPU maps under last-writer-wins replicate every CPU's slot, so
// nodes must have as many possible CPUs. A host cannot change its own
// count, so node 2 here describes its map as a node with 3 possible CPUs
// would (a descriptor adjusted at the replication level: 3 slots of 8
// bytes), against node 1's 2. Neither applies the other's changes; each
// counts the mismatch and names the CPUs and the fix. Two nodes with 2
// CPUs each replicate the whole value.
func TestPerCPUCountMismatch(t *testing.T) {
	n := memNet{cpus: map[uint32]uint32{1: 2, 2: 3, 3: 2}}
	a := startMemNode(t, &n, 1, nil)
	b := startMemNode(t, &n, 2, nil)
	c := startMemNode(t, &n, 3, nil)
	a.waitReady(t)
	b.waitReady(t)
	c.waitReady(t)
	a.write("akey", "slot-0..slot-1..", false)
	b.write("bkey", "slot-0..slot-1..slot-2..", false)
	waitCount(t, "node 2's unknown_map", &b.stats.UnknownMap, 1)
	waitCount(t, "node 1's unknown_map", &a.stats.UnknownMap, 1)
	waitSame(t, a, c) // node 3, alike, holds node 1's write

	if got := b.flows.snapshot(); len(got) != 1 {
		t.Errorf("node 2 holds %v, want its own write only", got)
	}
	if got, want := a.flows.snapshot(), map[string]string{"akey": "slot-0..slot-1.."}; !maps.Equal(got, want) {
		t.Errorf("node 1 holds %v, want %v", got, want)
	}
	for _, c := range []struct {
		node *memNode
		why  string
	}{
		{a, "flows: the peer's per-CPU value is 24 B in all, 3 possible CPUs if its value size is this node's; this node's is 16 B, 2 possible CPUs of 8 B"},
		{b, "flows: the peer's per-CPU value is 16 B in all, 2 possible CPUs if its value size is this node's; this node's is 24 B, 3 possible CPUs of 8 B"},
	} {
		if s := c.node.stats.Snapshot(); s.MapMismatches == 0 || s.Malformed != 0 {
			t.Errorf("map_mismatches %d, malformed %d; want some and 0", s.MapMismatches, s.Malformed)
		}
		var found bool
		for _, p := range c.node.n.Status().Peers {
			found = found || slices.Contains(p.Mismatches, c.why)
		}
		if !found {
			t.Errorf("status peers %+v: none has the mismatch %q", c.node.n.Status().Peers, c.why)
		}
		logs := c.node.logs.String()
		for _, want := range []string{"map=flows", strings.TrimPrefix(c.why, "flows: "), "give every node the same number of possible CPUs"} {
			if !strings.Contains(logs, want) {
				t.Errorf("log lacks %q:\n%s", want, logs)
			}
		}
	}
}
