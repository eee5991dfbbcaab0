package replication

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/ops"
	"github.com/udpmapsync/udpmapsync/wire"
)

// A snapshot carries an array's every entry, the zeros nobody wrote
// unstamped. Taken as "the server's unstamped entry over the requester's
// own", they replaced a write of the requester's datapath that its
// sender had not yet stamped (still in the capture, or lost to it): a
// write lost on every node, as after TestScenarioPartition's heal, when
// the two sides fully resync from each other while the writers write
// (simulated arrays: 37 of 1,500 seeds). The zeros are not taken, and
// nothing of them goes back to the server.
func TestSnapshotKeepsArrayWrites(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for BPF maps")
	}
	em, err := ebpf.NewMap(&ebpf.MapSpec{Name: "arr", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { em.Close() })
	arr := Map{ID: 12, Target: openLoaderMap(t, em),
		Desc: wire.Descriptor{Name: "arr", Type: uint32(ebpf.Array), KeySize: 4, ValueSize: 8, MaxEntries: 4}}
	f := newFixtureWith(t, Config{}, arr)
	fp := f.tab.byID(12).fp
	index := func(i uint32) []byte { return binary.NativeEndian.AppendUint32(nil, i) }
	// The datapath writes entry 1; the sender has yet to read it.
	if err := em.Put(uint32(1), []byte("written!")); err != nil {
		t.Fatal(err)
	}

	f.handle(peerA, f.peerDatagram(t, 1, 1, "key1", "1"))
	f.n.client.begin(f.n.peers.byNode[peerNode], time.Now())
	f.handle(peerA, f.syncStart(wire.SyncStart{AsOf: 1}))
	id := f.n.client.id
	var b changesBuilder
	b.start()
	stamped := hlc.Make(1_600_000_000_000, 0)
	for i := range uint32(4) {
		stamp, origin, val := uint64(0), uint32(0), make([]byte, 8)
		if i == 2 {
			stamp, origin, val = uint64(stamped), peerNode, []byte("theirs!!")
		}
		if !b.w.Append(fp, ops.Update, stamp, origin, index(i), val) {
			t.Fatal("test datagram full")
		}
	}
	f.handle(peerA, b.finishKind(wire.KindSnapshot, peerNode, 1, wire.SyncSeq(id, 1)))
	f.handle(peerA, syncEnd(id, 1))
	if f.n.client.phase != syncIdle {
		t.Fatalf("resync phase %d after its end, want idle", f.n.client.phase)
	}

	for i, want := range []string{"\x00\x00\x00\x00\x00\x00\x00\x00", "written!", "theirs!!", "\x00\x00\x00\x00\x00\x00\x00\x00"} {
		var got []byte
		if err := em.Lookup(uint32(i), &got); err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("entry %d holds %q after the snapshot, want %q", i, got, want)
		}
	}
	f.n.relay.drain(func(m int, _ ops.Op, v knowledge.Version, key, val []byte) {
		if m == f.tab.byID(12).index && bytes.Equal(val, make([]byte, 8)) {
			t.Errorf("entry %x's zeros went back to the server at %+v", key, v)
		}
	})
}
