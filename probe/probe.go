// Package probe is the arithmetic of the linear-probing hash tables of
// udpmapsync (the knowledge's keys, the scans' prints): where a hash's
// probe run starts, the slot after another, and which entries move back
// when a slot is emptied. Each table keeps its own slots and loops; they
// share these, so that the delicate part is written once.
package probe

import "math/bits"

// Home is where the probe run of hash h starts in a table of n slots: the
// high bits of h scaled to n, a multiplication rather than a modulo. h
// must be spread over all 64 bits (shift a shorter hash to the top).
func Home(h uint64, n int) int {
	hi, _ := bits.Mul64(h, uint64(n))
	return int(hi)
}

// Next is the slot after i in a table of n slots, wrapping to 0.
func Next(i, n int) int {
	if i++; i == n {
		return 0
	}
	return i
}

// MovesBack reports whether, once slot i is emptied, the entry at j,
// further on in the same probe run, moves back into i: unless its home
// lies cyclically in (i, j], a look-up of it would stop at the hole.
// Removal without tombstones walks j on from i until an empty slot,
// moving back each entry this says and emptying its slot in turn.
func MovesBack(home, i, j int) bool {
	return i <= j && (home <= i || home > j) || i > j && home <= i && home > j
}
