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
	numReasons
)

// logInterval is how often one reason may log: a flood of bad datagrams
// must cost counters, not log lines.
const logInterval = time.Second

// limiter lets at most one log line per [logInterval] through for each
// reason and counts the ones it held back. It is used by one goroutine at a time.
type limiter struct {
	next       [numReasons]time.Time
	suppressed [numReasons]uint64
}

// allow reports whether a line for r may be logged now and, if so, how many
// lines for r were suppressed since the previous one. Callers build their
// log arguments only after allow says yes, so a suppressed line costs no
// allocation.
func (l *limiter) allow(r reason) (suppressed uint64, ok bool) {
	now := time.Now()
	if now.Before(l.next[r]) {
		l.suppressed[r]++
		return 0, false
	}
	l.next[r] = now.Add(logInterval)
	suppressed, l.suppressed[r] = l.suppressed[r], 0
	return suppressed, true
}
