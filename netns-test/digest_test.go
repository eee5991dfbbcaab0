package netnstest

import (
	"encoding/binary"
	"maps"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// progWrite writes key (4 bytes) of m from a BPF program run with
// BPF_PROG_TEST_RUN: an update to value (a 32-bit number, as the 8-byte
// values of the flows map hold it), or a delete if value is 0. The
// syscall backend, the one this host's kernel lets the daemon attach,
// sees bpf(2) calls only, so no daemon captures this write: it stands
// for a write or delete whose capture was lost.
func progWrite(t *testing.T, m *ebpf.Map, key uint32, value int32) {
	t.Helper()
	insns := asm.Instructions{
		asm.StoreImm(asm.R10, -4, int64(int32(key)), asm.Word),
		asm.Mov.Imm(asm.R1, value),
		asm.StoreMem(asm.R10, -16, asm.R1, asm.DWord),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, -4),
	}
	if value == 0 {
		insns = append(insns, asm.FnMapDeleteElem.Call())
	} else {
		insns = append(insns, asm.Mov.Reg(asm.R3, asm.R10), asm.Add.Imm(asm.R3, -16), asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call())
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 0), asm.Return())
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, Instructions: insns, License: "GPL"})
	if err != nil {
		t.Fatalf("load the writing program: %v", err)
	}
	defer prog.Close()
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 64)}); err != nil {
		t.Fatalf("run the writing program: %v", err)
	}
}

// TestDigestHealsDivergence plants, on one of two converged nodes, writes
// no daemon captures (made by a BPF program, which the syscall backend
// cannot see): a delete, a change of a value, and a new key. The digest
// rounds (--digest-interval 1s) find and repair each, and both nodes end
// with the same map without a full resync.
func TestDigestHealsDivergence(t *testing.T) {
	spec := MapSpec{Name: "flows", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 65536}
	digest := []string{"--digest-interval", "1s"}
	c := newScenario(t, ClusterConfig{Nodes: 2, Maps: []MapSpec{spec}, NodeArgs: map[int][]string{node1: digest, node2: digest}})
	want := Contents{}
	var changes []Change
	for k := range uint32(500) {
		key, val := binary.NativeEndian.AppendUint32(nil, k), binary.NativeEndian.AppendUint64(nil, uint64(k)+1000)
		changes = append(changes, Change{Map: "flows", Key: key, Value: val})
		want[string(key)] = string(val)
	}
	if err := c.Write(t.Context(), node1, changes); err != nil {
		t.Fatal(err)
	}
	converge(t, c, map[string]Contents{"flows": want})
	time.Sleep(2500 * time.Millisecond) // past the 2 s a bucket must be quiet to count

	m := c.open[node2][0]
	progWrite(t, m, 7, 0)        // a delete the capture lost
	progWrite(t, m, 8, 88888)    // a value changed unseen
	progWrite(t, m, 1000, 10000) // a key added unseen
	start := time.Now()
	var a, b Contents
	for {
		ra, err := c.Read(node1)
		if err != nil {
			t.Fatal(err)
		}
		rb, err := c.Read(node2)
		if err != nil {
			t.Fatal(err)
		}
		a, b = ra["flows"], rb["flows"]
		if maps.Equal(a, b) {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("the nodes still differ 30 s after the planted writes: %s", Compare(a, b))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("healed %v after the planted writes", time.Since(start).Round(time.Millisecond))
	k := func(n uint32) string { return string(binary.NativeEndian.AppendUint32(nil, n)) }
	if _, ok := a[k(7)]; ok {
		t.Error("key 7, deleted unseen on node2, came back there instead of being deleted on node1")
	}
	if v := a[k(1000)]; v != string(binary.NativeEndian.AppendUint64(nil, 10000)) {
		t.Errorf("key 1000, added unseen on node2, = %x on both", v)
	}
	if v := a[k(8)]; v != want[k(8)] && v != string(binary.NativeEndian.AppendUint64(nil, 88888)) {
		t.Errorf("key 8 = %x, neither node's value", v)
	}
	s := counters(t, c)
	logCounters(t, c, s, "digest_rounds", "digest_found", "digest_busy", "digest_repairs", "digest_healed", "digest_bytes", "resyncs_received")
	var found, healed uint64
	for i := range s {
		found, healed = found+s[i]["digest_found"], healed+s[i]["digest_healed"]
		if r := s[i]["resyncs_received"]; r > 1 {
			t.Errorf("%s took %d full resyncs; the digest rounds were to heal it", c.Topology.Nodes[i].Name, r)
		}
	}
	if found == 0 || healed == 0 {
		t.Errorf("digest_found %d, digest_healed %d: the repair was not the digest rounds'", found, healed)
	}
}
