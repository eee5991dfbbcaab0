package netnstest

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/control"
)

// TestDaemonFieldsMismatch runs two daemons on a map of the same name and
// schema, where node1 names a mono-s clock field at offset 8 and node2
// does not: their values' bytes mean different things on the wire, so
// neither applies the other's writes, and `udpmapsync status` on each
// names the map, the peer and the bytes, and exits "not in sync".
func TestDaemonFieldsMismatch(t *testing.T) {
	const writes = 10
	spec := MapSpec{Name: "ctflows", Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 1024,
		NodeOptions: map[int]string{0: "clock=8:4:mono-s"}}
	c := startCluster(t, ClusterConfig{Nodes: 2, Maps: []MapSpec{spec}})
	for i := range 2 {
		var changes []Change
		for k := range uint32(writes) {
			changes = append(changes, Change{Map: spec.Name, Key: binary.NativeEndian.AppendUint32(nil, uint32(i)<<16|k),
				Value: binary.NativeEndian.AppendUint64(make([]byte, 8), uint64(k+1))})
		}
		if err := c.Write(t.Context(), i, changes); err != nil {
			t.Fatal(err)
		}
	}

	// Each node drops the other's writes as changes of no local map.
	query := func(i int) *control.Status {
		t.Helper()
		st, err := control.Query(c.Daemons[i].ControlSocket, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if query(0).Totals["unknown_map"] >= writes && query(1).Totals["unknown_map"] >= writes {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unknown_map %d and %d, want %d on each", query(0).Totals["unknown_map"], query(1).Totals["unknown_map"], writes)
		}
	}
	for i, why := range []string{
		"this node treats bytes at offset 8, 4 bytes as a mono-s clock field, the peer does not",
		"the peer treats bytes at offset 8, 4 bytes as a mono-s clock field, this node does not",
	} {
		got, err := c.Read(i)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(got[spec.Name]); n != writes {
			t.Errorf("node%d holds %d entries, want its own %d", i+1, n, writes)
		}
		st := query(i)
		if len(st.Peers) != 1 || len(st.Peers[0].Mismatches) != 1 || st.Peers[0].Mismatches[0] != spec.Name+": "+why ||
			st.Totals["map_mismatches"] != 1 || st.Totals["changes_applied"] != 0 {
			t.Errorf("node%d: peers %+v, map_mismatches %d, changes_applied %d", i+1, st.Peers, st.Totals["map_mismatches"], st.Totals["changes_applied"])
		}
		code, out, errOut := status(t, c.Daemons[i].ControlSocket)
		if code != 1 || !strings.Contains(out, "MISMATCH: peer ") || !strings.Contains(out, "map ctflows: "+why) ||
			!strings.Contains(errOut, "map ctflows differs from node ") {
			t.Errorf("node%d: udpmapsync status exited %d:\n%s\n%s", i+1, code, out, errOut)
		}
	}
}
