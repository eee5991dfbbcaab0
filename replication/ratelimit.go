package replication

import "time"

// reason names a kind of trouble that is logged at a limited rate.
type reason uint8

const (
	reasonMalformed reason = iota
	reasonUnknownMap
	reasonForged
	reasonApply
	reasonSchema
	reasonSend
	reasonResync
	reasonOverflow
	reasonSync
	reasonPeer
	reasonAuth
	reasonFuture
	reasonCookie
	reasonFragment
	reasonHold
	numReasons
)

// logInterval is the period over which each reason may log burst lines:
// a flood of bad datagrams must cost counters, not log lines.
const logInterval = time.Second

// burst is how many lines a reason may log per logInterval: one, but for
// the peers coming and going, of which a cluster's start shows several
// at once and each is worth a line.
func burst(r reason) int {
	if r == reasonPeer {
		return 8
	}
	return 1
}

// limiter lets at most burst(r) log lines per [logInterval] through for
// each reason r and counts the ones it held back. It is used by one
// goroutine at a time.
type limiter struct {
	time       Time                  // nil: the system's
	since      [numReasons]time.Time // start of the reason's current interval
	lines      [numReasons]int       // lines let through in it
	suppressed [numReasons]uint64
}

// allow reports whether a line for r may be logged now and, if so, how many
// lines for r were suppressed since the previous one. Callers build their
// log arguments only after allow says yes, so a suppressed line costs no
// allocation.
func (l *limiter) allow(r reason) (suppressed uint64, ok bool) {
	var now time.Time
	if l.time != nil {
		now = l.time.Now()
	} else {
		now = time.Now()
	}
	if now.Sub(l.since[r]) >= logInterval {
		l.since[r], l.lines[r] = now, 0
	}
	if l.lines[r] >= burst(r) {
		l.suppressed[r]++
		return 0, false
	}
	l.lines[r]++
	suppressed, l.suppressed[r] = l.suppressed[r], 0
	return suppressed, true
}
