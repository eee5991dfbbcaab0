package main

import (
	"errors"
	"os"
	"testing"

	netnstest "github.com/udpmapsync/udpmapsync/netns-test"
	"golang.org/x/sys/unix"
)

// oneNode gives the test a fresh namespace with an empty conntrack table.
func oneNode(t testing.TB) *netnstest.Node {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	topo, err := netnstest.NewTopology(1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := topo.Close(); err != nil {
			t.Error(err)
		}
	})
	return topo.Nodes[0]
}

func newInjector(t testing.TB, n *netnstest.Node, batch int) *Injector {
	t.Helper()
	var inj *Injector
	if err := n.Do(func() (err error) { inj, err = NewInjector(batch); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inj.Close() })
	return inj
}

func TestInjectCreatesEveryEntry(t *testing.T) {
	n := oneNode(t)
	// 1000 is not a multiple of the batch: the last sendmsg is short.
	inj := newInjector(t, n, 64)
	if err := inj.Inject(entryBase, 0, 1000); err != nil {
		t.Fatal(err)
	}
	if inj.Refused != 0 {
		t.Fatalf("kernel refused %d entries: %v", inj.Refused, inj.FirstErr)
	}
	got, err := conntrackCount(n)
	if err != nil {
		t.Fatal(err)
	}
	if got != 1000 {
		t.Fatalf("conntrack table holds %d entries after injecting 1000", got)
	}

	// The same flows again: NLM_F_EXCL makes every request fail, and each
	// failure must be counted although no ack was asked for.
	if err := inj.Inject(entryBase, 500, 500); err != nil {
		t.Fatal(err)
	}
	if inj.Refused != 500 || !errors.Is(inj.FirstErr, unix.EEXIST) {
		t.Fatalf("re-injecting 500 entries: refused %d, first error %v; want 500 and EEXIST", inj.Refused, inj.FirstErr)
	}
}

// BenchmarkInject is the injector's rate on its own, with no conntrackd
// listening for events.
func BenchmarkInject(b *testing.B) {
	n := oneNode(b)
	inj := newInjector(b, n, 256)
	b.ReportAllocs()
	// Entries cannot be created twice, and the table is bounded by
	// nf_conntrack_max: inject in a fresh range per round.
	const perRound = 100000
	b.ResetTimer()
	for done := 0; done < b.N; done += perRound {
		k := min(perRound, b.N-done)
		if err := inj.Inject(entryBase, done%maxEntries, k); err != nil {
			b.Fatal(err)
		}
		if done+k < b.N {
			b.StopTimer()
			flush(b, n)
			b.StartTimer()
		}
	}
	if inj.Refused != 0 {
		b.Fatalf("kernel refused %d entries: %v", inj.Refused, inj.FirstErr)
	}
}

// flush empties the node's conntrack table.
func flush(b *testing.B, n *netnstest.Node) {
	b.Helper()
	out, err := n.Command(b.Context(), "conntrack", "-F").CombinedOutput()
	if err != nil {
		b.Fatalf("conntrack -F: %v: %s", err, out)
	}
}
