package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
)

// CTEntry is the value of the flows and lru_flows maps, a Cilium-like
// conntrack entry: Expires is a mono-ns clock field, Lifetime a mono-s
// one, Ifindex is the node's own.
type CTEntry = datapathCtEntry

// LockedEntry is the value of the locked map, a LoxiLB-like one under a
// bpf_spin_lock: the datapath writes every word with one value while it
// holds the lock, so a value whose words differ was torn.
type LockedEntry = datapathLockedEntry

// Torn reports whether e's words differ: read without the lock while the
// datapath wrote it.
func (e *LockedEntry) Torn() bool {
	for _, w := range e.Words {
		if w != e.Words[0] {
			return true
		}
	}
	return false
}

// Node is one node's datapath: its own maps, created with BTF and named
// flows, lru_flows and locked on every node, and the programs writing
// them.
type Node struct {
	Flows, LRUFlows, Locked *ebpf.Map
	// Counters and CountersPerCPU are a rate limiter's counters per
	// client (a hash and a per-CPU hash of 4-byte keys and [Counter]
	// values), bumped in place by [Node.Count], [Node.CountPerCPU] and
	// [Node.Limit].
	Counters, CountersPerCPU *ebpf.Map
	objs                     datapathObjects
}

// Counter is the value of the counters maps: a client's packets and
// bytes.
type Counter = datapathCounter

// New creates a node's maps and loads its programs.
func New() (*Node, error) { return load(nil) }

// Attach loads the programs on an existing flows map (a hash of 4-byte
// keys and [CTEntry] values, at most 4096 entries, created elsewhere:
// by bpftool, without BTF) and creates the other maps.
func Attach(flows *ebpf.Map) (*Node, error) {
	return load(&ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{"flows": flows}})
}

func load(opts *ebpf.CollectionOptions) (*Node, error) {
	n := &Node{}
	if err := loadDatapathObjects(&n.objs, opts); err != nil {
		return nil, fmt.Errorf("load the test datapath: %w", err)
	}
	n.Flows, n.LRUFlows, n.Locked = n.objs.Flows, n.objs.LruFlows, n.objs.Locked
	n.Counters, n.CountersPerCPU = n.objs.Counters, n.objs.CountersPercpu
	return n, nil
}

// Close releases the maps and programs.
func (n *Node) Close() error { return n.objs.Close() }

// Refresh plays one packet on each of the flows first..first+count-1 that
// exist: packets and bytes up, Expires and Lifetime moved to the node's
// clock plus timeout, in place.
func (n *Node) Refresh(first, count uint32, timeout time.Duration, bytesPerPacket uint32) error {
	return run(n.objs.Refresh, datapathArgs{First: first, Count: count, TimeoutNs: uint64(timeout.Nanoseconds()),
		TimeoutS: uint32(timeout / time.Second), Bytes: bytesPerPacket})
}

// Churn inserts the keys first..first+count-1 into
// lru_flows, evicting others once it is full, and deletes them again.
func (n *Node) Churn(first, count uint32) error {
	return run(n.objs.Churn, datapathArgs{First: first, Count: count})
}

// Bump writes every word of the locked entries first..first+count-1 that
// exist with their next value, under their lock.
func (n *Node) Bump(first, count uint32) error {
	return run(n.objs.Bump, datapathArgs{First: first, Count: count})
}

// Count plays repeat packets of bytesPerPacket bytes from each of the
// clients first..first+count-1 in one run of the program: each packet
// adds 1 and bytesPerPacket to the client's Counters in place with
// atomic adds, creating it at zero.
func (n *Node) Count(first, count, bytesPerPacket, repeat uint32) error {
	return run(n.objs.Count, datapathArgs{First: first, Count: count, Bytes: bytesPerPacket, Repeat: repeat})
}

// CountPerCPU is [Node.Count] on CountersPerCPU, in the slot of the CPU
// the calling thread runs on.
func (n *Node) CountPerCPU(first, count, bytesPerPacket, repeat uint32) error {
	return run(n.objs.CountPercpu, datapathArgs{First: first, Count: count, Bytes: bytesPerPacket, Repeat: repeat})
}

// Limit plays one packet of client through the rate limiter: it counts
// it in Counters and reports whether it passed, that is whether the
// client's packets, this one included, are at most limit.
func (n *Node) Limit(client, limit uint32) (bool, error) {
	ret, err := runOnce(n.objs.Limit, datapathArgs{First: client, Limit: limit})
	if err != nil {
		return false, err
	}
	switch ret {
	case 2: // XDP_PASS
		return true, nil
	case 1: // XDP_DROP
		return false, nil
	}
	return false, fmt.Errorf("run %s: returned %d", n.objs.Limit, ret)
}

// run runs prog once on a packet that starts with args; it must pass.
func run(prog *ebpf.Program, args datapathArgs) error {
	ret, err := runOnce(prog, args)
	if err != nil {
		return err
	}
	if ret != 2 { // XDP_PASS
		return fmt.Errorf("run %s: returned %d", prog, ret)
	}
	return nil
}

// runOnce runs prog once on a packet that starts with args (once: a
// repeat count makes cilium/ebpf run it again whole when a signal
// interrupts it) and returns what it returned.
func runOnce(prog *ebpf.Program, args datapathArgs) (uint32, error) {
	var pkt bytes.Buffer
	if err := binary.Write(&pkt, binary.NativeEndian, args); err != nil {
		return 0, err
	}
	pkt.Write(make([]byte, 64-pkt.Len())) // more than an Ethernet header
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt.Bytes()})
	if err != nil {
		return 0, fmt.Errorf("run %s: %w", prog, err)
	}
	return ret, nil
}
