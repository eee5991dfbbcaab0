package seal

// WindowSize is how far behind the highest counter a [ReplayWindow] still
// accepts a counter it has not seen: counters last-WindowSize+1 to last.
// 8192 datagrams is tens of milliseconds of a busy sender's stream, more
// than datagrams are reordered between the sockets and the goroutines of
// a receiver, for 1 KiB per run.
const WindowSize = 8192

const (
	windowWordBits = 64
	// windowWords is the ring of bitmap words: the WindowSize counters
	// up to the highest span at most WindowSize/64 + 1 words, and the
	// ring must hold them all at distinct positions.
	windowWords = WindowSize/windowWordBits + 1
)

// ReplayWindow tells which counters of one run (one node, one epoch) are
// new: not seen before and not too old to tell. It is the sliding bitmap of
// RFC 6479 over the last [WindowSize] counters, as in WireGuard: Accept
// costs a few instructions, moving the window clears at most 129 words, and
// nothing allocates. The zero value is an empty window, ready to use; a
// ReplayWindow is not safe for concurrent use.
//
// Feed it only counters of datagrams that opened: a forged counter far
// ahead would move the window past the run's real datagrams.
type ReplayWindow struct {
	last uint64 // highest accepted counter; 0: none yet
	bits [windowWords]uint64
}

// Accept reports whether counter is new, and if so marks it seen. It
// rejects 0, which no run sends, a counter seen before, and one
// WindowSize or more behind the highest accepted so far. A counter ahead
// of the highest moves the window to it.
func (w *ReplayWindow) Accept(counter uint64) bool {
	if counter == 0 {
		return false
	}
	word := counter / windowWordBits
	if counter > w.last {
		// Clear the words between the old highest and the new one: they
		// hold bits of counters now out of the window. The old highest's
		// own word keeps its bits, all of them at or below it.
		lastWord := w.last / windowWordBits
		clear := min(word-lastWord, windowWords)
		for i := uint64(1); i <= clear; i++ {
			w.bits[(lastWord+i)%windowWords] = 0
		}
		w.last = counter
	} else if w.last-counter >= WindowSize {
		return false
	}
	slot := &w.bits[word%windowWords]
	bit := uint64(1) << (counter % windowWordBits)
	if *slot&bit != 0 {
		return false
	}
	*slot |= bit
	return true
}

// Reset empties the window, for a new run.
func (w *ReplayWindow) Reset() { *w = ReplayWindow{} }
