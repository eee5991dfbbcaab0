// Package loader is everything in udpmapsync that touches the BPF syscall:
// it resolves --map specs to maps, loads and attaches the capture programs,
// reads captured changes from the ring buffer and applies received changes
// with batch syscalls. It knows nothing of the network.
package loader

import "github.com/cilium/ebpf"

// DefaultPinDir is where maps are looked for when no --map is given: every
// map pinned directly below it is replicated.
const DefaultPinDir = "/sys/fs/bpf/udpmapsync"

// Map is one replicated map on this node. Name and the schema fields are
// what nodes compare to decide that two maps are the same map.
type Map struct {
	Name       string
	Type       ebpf.MapType
	KeySize    uint32
	ValueSize  uint32
	MaxEntries uint32
	Flags      uint32     // map_flags at creation; informational, not compared
	ID         ebpf.MapID // local to this kernel; never sent

	m *ebpf.Map
}
