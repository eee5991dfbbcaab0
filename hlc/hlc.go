// Package hlc is a hybrid logical clock: stamps that follow physical time
// and never run backwards, and that a node advances past every stamp it
// receives, so a change made after seeing another one always carries the
// larger stamp (Kulkarni et al., "Logical Physical Clocks", 2014).
//
// A [Stamp] packs milliseconds since the Unix epoch into its high 48 bits
// and a counter into its low 16: within one millisecond, or while the
// clock waits for physical time to catch up with a received stamp, the
// counter counts. Stamps of different nodes can be equal; the replication
// protocol breaks such ties by node id.
package hlc

import (
	"fmt"
	"sync"
	"time"
)

// Stamp is one hybrid logical clock reading. The zero Stamp is no stamp.
type Stamp uint64

// counterBits is the width of the logical counter.
const counterBits = 16

// MaxSkew is how far ahead of this node's physical clock a received stamp
// may be. A clock is advanced past every stamp within it; a stamp further
// ahead is refused (see [Clock.Observe]), so one node with a wrong clock,
// or one forged datagram, cannot drag every clock into the future.
const MaxSkew = 10 * time.Second

// Make returns the stamp of physical time ms (milliseconds since the Unix
// epoch) and counter c.
func Make(ms int64, c uint16) Stamp { return Stamp(uint64(ms)<<counterBits | uint64(c)) }

// Millis returns the stamp's physical part, in milliseconds since the Unix
// epoch.
func (s Stamp) Millis() int64 { return int64(s >> counterBits) }

// Counter returns the stamp's logical counter.
func (s Stamp) Counter() uint16 { return uint16(s) }

// Time returns the stamp's physical part as a time.
func (s Stamp) Time() time.Time { return time.UnixMilli(s.Millis()) }

// String formats the stamp as its physical time and counter.
func (s Stamp) String() string {
	if s == 0 {
		return "unstamped"
	}
	return fmt.Sprintf("%s+%d", s.Time().UTC().Format("2006-01-02T15:04:05.000Z"), s.Counter())
}

// Clock is one node's hybrid logical clock. It is safe for concurrent use.
type Clock struct {
	mu     sync.Mutex
	last   Stamp
	offset time.Duration
	now    func() time.Time
}

// New returns a clock reading physical time from now (time.Now if nil),
// shifted by offset: a test hook that lets one node run ahead of or
// behind the others.
func New(now func() time.Time, offset time.Duration) *Clock {
	if now == nil {
		now = time.Now
	}
	return &Clock{now: now, offset: offset}
}

func (c *Clock) physical() int64 { return c.now().Add(c.offset).UnixMilli() }

// Now returns a stamp for a local event: larger than every stamp this
// clock returned or observed before.
func (c *Clock) Now() Stamp { return c.At(c.now()) }

// At is [Clock.Now] for a caller that read the physical time t itself, to
// share one clock read among many events. A t older than the last stamp
// only counts up the counter.
func (c *Clock) At(t time.Time) Stamp {
	pt := Make(t.Add(c.offset).UnixMilli(), 0)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = max(c.last+1, pt)
	return c.last
}

// Observe advances the clock past a received stamp, so that every later
// [Clock.Now] is larger. It refuses a stamp more than [MaxSkew] ahead of
// this node's physical time, leaving the clock as it was, and reports
// whether it took s.
func (c *Clock) Observe(s Stamp) bool {
	if s > c.Limit() {
		return false
	}
	c.mu.Lock()
	c.last = max(c.last, s)
	c.mu.Unlock()
	return true
}

// Limit returns the largest stamp [Clock.Observe] takes now: a caller
// checking many stamps reads it once.
func (c *Clock) Limit() Stamp {
	return Make(c.physical()+MaxSkew.Milliseconds(), 1<<counterBits-1)
}

// Last returns the largest stamp this clock returned or observed.
func (c *Clock) Last() Stamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
