package counter

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/udpmapsync/udpmapsync/hlc"
	"github.com/udpmapsync/udpmapsync/knowledge"
)

// origins is the most contributions a key holds in these tests.
const origins = 16

// node is one node's copy of a key: its state and its map's value.
type node struct {
	id    uint32
	key   Key
	value []uint64
	held  bool // the map holds the key
}

func (n *node) merge(t *testing.T, c Contribution) {
	t.Helper()
	delta := make([]uint64, len(c.Words))
	reset, add, err := n.key.Merge(c, origins, delta)
	if err != nil {
		t.Fatal(err)
	}
	if reset {
		clear(n.value)
		n.held = false
	}
	if add {
		for i, d := range delta {
			n.value[i] += d
		}
		n.held = true
	}
}

// send reads n's contribution as a scan does and returns it.
func (n *node) send(t *testing.T, stamp hlc.Stamp) (Contribution, bool) {
	t.Helper()
	local := make([]uint64, len(n.value))
	n.key.Local(n.id, n.value, local)
	changed, err := n.key.SetOwn(n.id, stamp, local, origins)
	if err != nil {
		t.Fatal(err)
	}
	if !changed {
		return Contribution{}, false
	}
	c, _ := n.key.Own(n.id)
	c.Words = slices.Clone(c.Words)
	return c, true
}

// Three nodes increment one key; their contributions are delivered lost,
// repeated and reordered, then all once more: every node holds the exact
// total, whatever came twice.
func TestMergeIdempotent(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	nodes := []*node{{id: 1, value: make([]uint64, 2)}, {id: 2, value: make([]uint64, 2)}, {id: 3, value: make([]uint64, 2)}}
	var sent []Contribution
	var total [2]uint64
	for stamp := hlc.Stamp(1); stamp < 2000; stamp++ {
		n := nodes[r.IntN(3)]
		inc := [2]uint64{uint64(1 + r.IntN(5)), uint64(100 + r.IntN(1000))}
		n.value[0] += inc[0]
		n.value[1] += inc[1]
		total[0] += inc[0]
		total[1] += inc[1]
		if c, ok := n.send(t, stamp); ok {
			sent = append(sent, c)
		}
		// deliver a random earlier contribution to a random node, maybe
		// again, maybe stale
		if len(sent) > 0 && r.IntN(2) == 0 {
			c := sent[r.IntN(len(sent))]
			if to := nodes[r.IntN(3)]; to.id != c.Origin {
				to.merge(t, c)
			}
		}
	}
	for _, n := range nodes { // the last contribution of each
		c, ok := n.key.Own(n.id)
		if !ok {
			t.Fatalf("node %d sent nothing", n.id)
		}
		for _, to := range nodes {
			if to != n {
				to.merge(t, c)
				to.merge(t, c) // twice: nothing more
			}
		}
	}
	for _, n := range nodes {
		if [2]uint64(n.value) != total {
			t.Errorf("node %d holds %v, want %v", n.id, n.value, total)
		}
	}
}

// A reset clears every contribution counted before it, on a node that
// hears the reset itself and on one that hears it only through a
// contribution counted from it.
func TestReset(t *testing.T) {
	a, b, c := &node{id: 1, value: make([]uint64, 1)}, &node{id: 2, value: make([]uint64, 1)}, &node{id: 3, value: make([]uint64, 1)}
	a.value[0] = 5
	ca, _ := a.send(t, 10)
	b.value[0] = 7
	cb, _ := b.send(t, 11)
	for _, n := range []*node{b, c} {
		n.merge(t, ca)
	}
	for _, n := range []*node{a, c} {
		n.merge(t, cb)
	}
	for _, n := range []*node{a, b, c} {
		if n.value[0] != 12 {
			t.Fatalf("node %d: %d before the reset, want 12", n.id, n.value[0])
		}
	}
	// b deletes the key: a hears the reset, c does not.
	r := knowledge.Version{Stamp: 20, Origin: 2}
	for _, n := range []*node{a, b} {
		if !n.key.ApplyReset(r) {
			t.Fatalf("node %d: reset not applied", n.id)
		}
		clear(n.value)
	}
	if a.key.ApplyReset(knowledge.Version{Stamp: 19, Origin: 3}) {
		t.Fatal("an older reset applied")
	}
	b.value[0] = 3
	cb, _ = b.send(t, 21)
	a.merge(t, cb)
	c.merge(t, cb) // c learns the reset from the contribution
	a.merge(t, ca) // a's contribution from before the reset, late: nothing
	for _, n := range []*node{a, b, c} {
		if n.value[0] != 3 {
			t.Errorf("node %d: %d after the reset, want 3", n.id, n.value[0])
		}
	}
}

// A counter that went down in place, below what its contributions
// account for, is seen: a delete and a new count before the scan, or a
// smaller value written, is read as a reset. Growth and peers' adds are
// not.
func TestWentDown(t *testing.T) {
	a, b := &node{id: 1, value: make([]uint64, 1)}, &node{id: 2, value: make([]uint64, 1)}
	a.value[0], b.value[0] = 4, 6
	ca, _ := a.send(t, 1)
	cb, _ := b.send(t, 2)
	a.merge(t, cb)
	b.merge(t, ca)
	a.value[0] += 3 // counted on
	if a.key.WentDown(a.id, a.value) {
		t.Fatal("an increment read as going down")
	}
	ca, _ = a.send(t, 3)
	for _, v := range []uint64{6, 12} { // below b's 6 and a's 7 together; below a's own 7 after b's
		if !a.key.WentDown(a.id, []uint64{v - 1}) {
			t.Errorf("a value of %d, after %d: not read as going down", v-1, a.value[0])
		}
	}
	if b.merge(t, ca); b.key.WentDown(b.id, b.value) {
		t.Errorf("a peer's add read as going down: %d", b.value[0])
	}
}

func TestOriginsFull(t *testing.T) {
	var k Key
	delta := make([]uint64, 1)
	for o := range uint32(3) {
		if _, _, err := k.Merge(Contribution{Origin: o + 1, Stamp: 1, Words: []uint64{1}}, 3, delta); err != nil {
			t.Fatal(err)
		}
	}
	_, add, err := k.Merge(Contribution{Origin: 9, Stamp: 1, Words: []uint64{1}}, 3, delta)
	if !errors.Is(err, ErrOriginsFull) || add || k.Origins() != 3 {
		t.Errorf("a fourth origin of three: %v, add %v, %d held", err, add, k.Origins())
	}
	// a held origin still merges
	if _, add, err := k.Merge(Contribution{Origin: 2, Stamp: 2, Words: []uint64{5}}, 3, delta); err != nil || !add || delta[0] != 4 {
		t.Errorf("a held origin: %v, add %v, delta %d", err, add, delta[0])
	}
}

// A node that lost its counts in a crash sends a contribution below the
// one it sent before: its peer keeps the higher one (subtracting the
// difference could wrap a value below zero), and the node, given its own
// back, takes the larger of each word, once, and sends it on.
func TestCrashedOrigin(t *testing.T) {
	a, b := &node{id: 1, value: make([]uint64, 2)}, &node{id: 2, value: []uint64{1, 1263}}
	before, _ := b.send(t, 1)
	a.merge(t, before)
	b = &node{id: 2, value: []uint64{2, 138}} // restarted: cleared, counted anew
	after, _ := b.send(t, 2)
	a.merge(t, after)
	if want := []uint64{1, 1263}; !slices.Equal(a.value, want) {
		t.Errorf("after the lower contribution node 1 holds %v, want %v", a.value, want)
	}
	delta := make([]uint64, 2)
	if !b.key.Regain(2, before, 3, delta) || !slices.Equal(delta, []uint64{0, 1125}) {
		t.Fatalf("node 2 regains %v, want [0 1125]", delta)
	}
	if b.key.Regain(2, before, 4, delta) {
		t.Errorf("node 2 regains its contribution a second time")
	}
	for i, d := range []uint64{0, 1125} {
		b.value[i] += d
	}
	mine, _ := b.key.Own(2)
	a.merge(t, Contribution{Reset: mine.Reset, Origin: 2, Stamp: mine.Stamp, Words: slices.Clone(mine.Words)})
	if want := []uint64{2, 1263}; !slices.Equal(a.value, want) || !slices.Equal(b.value, want) {
		t.Errorf("nodes hold %v and %v, want %v", a.value, b.value, want)
	}
}
