package replication

import (
	"time"

	"golang.org/x/sys/unix"
)

// Time is where a node reads the time and waits: the system's clock, or
// a simulator's virtual one (see package sim). Every decision the
// protocol takes on time takes it from here, so that a simulator can run
// a whole cluster at virtual time and replay it.
type Time interface {
	// Now returns the current time.
	Now() time.Time
	// Sleep pauses the calling goroutine for d.
	Sleep(d time.Duration)
}

// SystemTime is the system's clock.
type SystemTime struct{}

// Now returns time.Now().
func (SystemTime) Now() time.Time { return time.Now() }

// Sleep sleeps for d on this thread. Polling needs sub-millisecond
// sleeps, which neither the ring buffer's epoll deadline (it rounds down
// to whole milliseconds, so a shorter deadline returns at once and the
// poll loop spins) nor Go's timers (about 1 ms here) provide.
func (SystemTime) Sleep(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}
