package replication

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/ops"
)

// A daemon restarted on the node whose datapath writes: what the datapath
// changed while no daemon ran (a changed key, a new one, a deleted one) is
// found against the state the last run saved, and becomes this node's
// writes, stamped anew and sent; what did not change keeps its version.
// Without the state file a changed key would be unstamped and lose to the
// peers' older copy.
func TestRestartFindsWritesMadeWhileDown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	flows := newFakeTarget(4, 8)
	tab := mustTable(t, testPayload, testMap("flows", 10, 4, 8, flows))
	run := func() *Node {
		src := &chanSource{ch: make(chan loader.Change, 16)}
		n := newTestNode(t, Config{Node: ourNode, Epoch: ourEpoch, Table: tab, Source: src, Transport: newFakeTransport(),
			StateFile: path})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- n.Run(ctx) }()
		for _, k := range []string{"same", "chng", "gone"} {
			if _, ok := flows.state[k]; ok {
				continue
			}
			flows.UpdateBatch([]byte(k), []byte("value--1"))
			src.ch <- loader.Change{MapID: 10, Op: ops.Update, Key: []byte(k), Value: []byte("value--1")}
		}
		time.Sleep(50 * time.Millisecond)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		return n
	}
	first := run()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("no state file after a stop: %v", err)
	}
	same, _ := knownVersion(first.know, 0, "same")

	// While no daemon runs.
	flows.UpdateBatch([]byte("chng"), []byte("value--2"))
	flows.UpdateBatch([]byte("new!"), []byte("value--3"))
	flows.DeleteBatch([]byte("gone"))

	n := newTestNode(t, Config{Node: ourNode, Epoch: ourEpoch + 1, Table: tab, Source: &chanSource{ch: make(chan loader.Change)},
		Transport: newFakeTransport(), StateFile: path})
	n.restore()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the state file is still there after it was read (%v): a crash would reuse it", err)
	}
	if v, known := knownVersion(n.know, 0, "same"); !known || v != same {
		t.Fatalf("the unchanged key has version %+v (known: %v), want the saved %+v", v, known, same)
	}
	sent := map[string]ops.Op{}
	n.relay.drain(func(_ int, op ops.Op, v knowledge.Version, key, _ []byte) {
		if v.Origin != ourNode || v.Stamp <= same.Stamp {
			t.Errorf("%s sent as %+v, want a new write of this node", key, v)
		}
		sent[string(key)] = op
	})
	if len(sent) != 3 || sent["chng"] != ops.Update || sent["new!"] != ops.Update || sent["gone"] != ops.Delete {
		t.Fatalf("sent %v; want the changed and new keys as updates and the deleted one as a delete", sent)
	}
}

// A state file of another boot, or damaged, is not used.
func TestStateOfAnotherBootIgnored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	tab := mustTable(t, testPayload, testMap("flows", 10, 4, 8, newFakeTarget(4, 8)))
	n := newTestNode(t, Config{Node: ourNode, Epoch: ourEpoch, Table: tab, StateFile: path})
	other := []byte("\x00" + stateMagic + "00000000-0000-0000-0000-000000000000\n\x04")
	other = binary.BigEndian.AppendUint32(other, crc32.Checksum(other, crc32.MakeTable(crc32.Castagnoli)))
	for name, data := range map[string][]byte{
		"another boot": other,
		"damaged":      []byte("\x00" + stateMagic + "garbage"),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := n.restoreState(path); err == nil || name == "another boot" && !errors.Is(err, errStateMismatch) {
			t.Errorf("%s: restored, or refused for the wrong reason: %v", name, err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s: the file was left behind", name)
		}
	}
}

// A peer's write applied while the daemon stops, after its maps were read
// for the state file, is in the file too. It was not: the next run then
// took the applied value for a write its datapath made while no daemon
// ran, stamped it anew, and its stale copy beat the peer's later writes
// of the key (TestAttackKeyed, a node restarted while another wrote).
func TestStateKeepsWritesAppliedWhileStopping(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	f := newFixtureWith(t, Config{StateFile: path})
	sv, err := f.n.startState(path)
	if err != nil {
		t.Fatal(err)
	}
	applied := hlc.Make(time.Now().UnixMilli(), 0)
	f.handle(peerA, f.stampedDatagram(t, 1, "key1", "late", applied, peerNode))
	if err := sv.finish(); err != nil {
		t.Fatal(err)
	}

	// The same map, still holding the applied value.
	n := newTestNode(t, Config{Node: ourNode, Epoch: ourEpoch + 1, Table: f.tab, Transport: newFakeTransport(), StateFile: path})
	n.restore()
	if v, known := knownVersion(n.know, 0, "key1"); !known || v != (knowledge.Version{Stamp: applied, Origin: peerNode}) {
		t.Fatalf("after the restart key1's version is %+v (known: %v), want the peer's write applied while stopping", v, known)
	}
	sent := 0
	n.relay.drain(func(int, ops.Op, knowledge.Version, []byte, []byte) { sent++ })
	if sent != 0 {
		t.Fatalf("the restart sent %d writes of its own, want none", sent)
	}
}
