package netnstest

import (
	"os"
	"testing"
)

// NewPair creates a two-node topology for a test of another package,
// removed when the test ends. Without root the test is skipped.
func NewPair(t testing.TB) (a, b *Node) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	topo, err := NewTopology(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	return topo.Nodes[0], topo.Nodes[1]
}
