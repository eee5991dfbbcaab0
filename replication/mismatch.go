package replication

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/mapopt"
	"github.com/udpmapsync/udpmapsync/wire"
)

// A map is the same map on two nodes when its name, its schema and the
// byte ranges of its values that do not travel as the map holds them
// (clock, local and lock fields) are the same: all three go into the
// fingerprint every change section carries, so a section of a peer whose
// map differs names no local map and is never applied. The options that
// act on one node alone (scan, refresh, vanished) stay out of it.

// wireFields are the fields of a value as its descriptor carries them, in
// their canonical form ([wire.CheckFields]): each clock field, each run
// of local bytes and the spin lock, in order of offset. Nil when the
// plan has none.
func (p *fieldPlan) wireFields() []wire.Field {
	if p == nil {
		return nil
	}
	var fs []wire.Field
	for _, c := range p.clocks {
		fs = append(fs, wire.Field{Kind: clockFieldKind(c.Kind), Offset: uint16(c.Offset), Size: uint16(c.Size)})
	}
	for _, s := range p.local {
		fs = append(fs, wire.Field{Kind: wire.FieldLocal, Offset: uint16(s.from), Size: uint16(s.to - s.from)})
	}
	for _, s := range p.lock {
		fs = append(fs, wire.Field{Kind: wire.FieldLock, Offset: uint16(s.from), Size: uint16(s.to - s.from)})
	}
	slices.SortFunc(fs, func(a, b wire.Field) int { return int(a.Offset) - int(b.Offset) })
	return fs
}

func clockFieldKind(k mapopt.ClockKind) wire.FieldKind {
	switch k {
	case mapopt.MonoS:
		return wire.FieldMonoS
	case mapopt.BootNS:
		return wire.FieldBootNS
	case mapopt.BootS:
		return wire.FieldBootS
	}
	return wire.FieldMonoNS
}

// mapMismatch is a peer's map that differs from the local map of its
// name: the fingerprint of the peer's, and how they differ.
type mapMismatch struct {
	fp  uint32
	why string
}

// The advice of a mismatch in schema, in a per-CPU value, and in fields.
const (
	schemaFix = "create the map alike on every node: same type, key and value size, max entries"
	cpusFix   = "a per-CPU map's values travel whole, one slot per possible CPU: give every node the same number of possible CPUs " +
		"(/sys/devices/system/cpu/possible; the possible_cpus= boot parameter sets it) and the same value size, or leave this map out"
	fieldsFix = "give every node the same clock= and local= options for this map, and the same value layout"
)

// maxDifferences bounds the phrases kept of one mismatch: a peer may
// announce up to [wire.MaxFields] fields, and the status keeps them.
const maxDifferences = 8

// differences says how peer, a peer's descriptor of m's name, differs
// from m: one phrase per schema number or byte range that differs, at
// most [maxDifferences] and then how many more, and what to do about it.
func (m *localMap) differences(peer *wire.Descriptor) (why []string, fix string) {
	var out []string
	local := &m.Desc
	schema := func(what string, l, p any) {
		out = append(out, fmt.Sprintf("the peer's %s is %v, this node's %v", what, p, l))
	}
	if local.Type != peer.Type {
		schema("type", ebpf.MapType(local.Type), ebpf.MapType(peer.Type))
	}
	if local.KeySize != peer.KeySize {
		schema("key size", local.KeySize, peer.KeySize)
	}
	fix = schemaFix
	if local.ValueSize != peer.ValueSize {
		if m.CPUs > 0 && local.Type == peer.Type {
			out = append(out, m.perCPUDifference(peer.ValueSize))
			fix = cpusFix
		} else {
			schema("value size", local.ValueSize, peer.ValueSize)
		}
	}
	if local.MaxEntries != peer.MaxEntries {
		schema("max entries", local.MaxEntries, peer.MaxEntries)
		fix = schemaFix
	}
	if len(out) > 0 {
		return out, fix // the fields of another layout say nothing more
	}
	for _, f := range peer.Fields {
		if slices.Contains(local.Fields, f) {
			continue
		}
		if g, ok := sameBytes(local.Fields, f); ok {
			out = append(out, fmt.Sprintf("the peer treats %s as a %s field, this node as a %s field", m.bytes(f), f.Kind, g.Kind))
		} else {
			out = append(out, fmt.Sprintf("the peer treats %s as a %s field, this node does not", m.bytes(f), f.Kind))
		}
	}
	for _, g := range local.Fields {
		if _, ok := sameBytes(peer.Fields, g); !ok {
			out = append(out, fmt.Sprintf("this node treats %s as a %s field, the peer does not", m.bytes(g), g.Kind))
		}
	}
	if len(out) > maxDifferences {
		out = append(out[:maxDifferences], fmt.Sprintf("and %d more", len(out)-maxDifferences))
	}
	return out, fieldsFix
}

// perCPUDifference says how a peer's per-CPU value of size bytes in all
// differs from this node's: most likely in the number of possible CPUs,
// which it names if the peer's value size is this node's.
func (m *localMap) perCPUDifference(size uint32) string {
	slot := m.Desc.ValueSize / m.CPUs
	if size%slot == 0 {
		return fmt.Sprintf("the peer's per-CPU value is %d B in all, %d possible CPUs if its value size is this node's; this node's is %d B, %d possible CPUs of %d B",
			size, size/slot, m.Desc.ValueSize, m.CPUs, slot)
	}
	return fmt.Sprintf("the peer's per-CPU value is %d B in all; this node's is %d B, %d possible CPUs of %d B", size, m.Desc.ValueSize, m.CPUs, slot)
}

// sameBytes finds the field of fs over exactly f's bytes.
func sameBytes(fs []wire.Field, f wire.Field) (wire.Field, bool) {
	for _, g := range fs {
		if g.Offset == f.Offset && g.Size == f.Size {
			return g, true
		}
	}
	return wire.Field{}, false
}

// bytes names the byte range of f for people: the member names this
// node's options give the fields within it, if any, then the offset and
// size.
func (m *localMap) bytes(f wire.Field) string {
	where := fmt.Sprintf("offset %d, %d bytes", f.Offset, f.Size)
	if f.Size == 1 {
		where = fmt.Sprintf("offset %d, 1 byte", f.Offset)
	}
	var names []string
	within := func(g mapopt.Field) {
		numeric := g.Name == fmt.Sprintf("%d:%d", g.Offset, g.Size) // given as OFFSET:SIZE: where says it
		if g.Offset >= int(f.Offset) && g.Offset+g.Size <= f.End() && !numeric {
			names = append(names, g.Name)
		}
	}
	for _, c := range m.Options.Clocks {
		within(c.Field)
	}
	for _, g := range m.Options.Local {
		within(g)
	}
	if l := m.Options.Lock; l != nil {
		within(*l)
	}
	if len(names) == 0 {
		return "bytes at " + where
	}
	return strings.Join(names, ", ") + " (" + where + ")"
}

// mismatches lists the peer's maps that differ from ours, by name.
func (p *peer) mismatches() []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(p.mismatch)) {
		out = append(out, name+": "+p.mismatch[name].why)
	}
	return out
}

// describeFields puts the map's fields into its descriptor and takes its
// fingerprint, checking that its announce fits a datagram of payload
// bytes.
func (m *localMap) describeFields(payload int) error {
	m.Desc.Fields = m.plan.wireFields()
	if err := wire.CheckFields(m.Desc.Fields, m.Desc.ValueSize); err != nil {
		return fmt.Errorf("map %q: %w", m.Desc.Name, err)
	}
	if need := wire.HeaderSize + m.Desc.EncodedSize(); need > payload {
		return fmt.Errorf("map %q: its descriptor with %d fields needs %d bytes, more than the %d-byte datagram payload: name fewer fields or raise the MTU",
			m.Desc.Name, len(m.Desc.Fields), need, payload)
	}
	m.fp = m.Desc.Fingerprint()
	return nil
}
