package probe

import (
	"math/rand/v2"
	"testing"
)

// A table that removes with MovesBack finds every key still in it after
// any sequence of puts and removes, in tables small enough that runs
// wrap around the end, checked against a map.
func TestRemoveKeepsRuns(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{4, 7, 16, 61} {
		slots := make([]uint64, n) // 0: empty
		want := map[uint64]bool{}
		find := func(h uint64) int {
			for i := Home(h, n); ; i = Next(i, n) {
				switch slots[i] {
				case h:
					return i
				case 0:
					return -1
				}
			}
		}
		for range 20000 {
			h := r.Uint64()>>62<<62 | r.Uint64N(uint64(2*n)) | 1 // few distinct hashes, clustered homes
			if i := find(h); i >= 0 {
				delete(want, h)
				for j := Next(i, n); slots[j] != 0; j = Next(j, n) {
					if MovesBack(Home(slots[j], n), i, j) {
						slots[i], i = slots[j], j
					}
				}
				slots[i] = 0
			} else if len(want) < n-1 {
				i := Home(h, n)
				for slots[i] != 0 {
					i = Next(i, n)
				}
				slots[i], want[h] = h, true
			}
			for k := range want {
				if find(k) < 0 {
					t.Fatalf("n=%d: key %#x lost after a removal", n, k)
				}
			}
		}
	}
}

func TestHomeAndNext(t *testing.T) {
	if Home(0, 10) != 0 || Home(^uint64(0), 10) != 9 || Home(1<<63, 10) != 5 {
		t.Errorf("Home: %d %d %d, want 0 9 5", Home(0, 10), Home(^uint64(0), 10), Home(1<<63, 10))
	}
	if Next(3, 10) != 4 || Next(9, 10) != 0 {
		t.Errorf("Next: %d %d, want 4 0", Next(3, 10), Next(9, 10))
	}
}
