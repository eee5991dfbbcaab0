package hlc

import (
	"testing"
	"time"
)

// fixed is a physical clock the test moves by hand.
type fixed struct{ t time.Time }

func (f *fixed) now() time.Time { return f.t }

func TestNowIsMonotonicWhenPhysicalTimeStands(t *testing.T) {
	f := &fixed{t: time.UnixMilli(1_700_000_000_000)}
	c := New(f.now, 0)
	a, b := c.Now(), c.Now()
	if a != Make(1_700_000_000_000, 0) || b != Make(1_700_000_000_000, 1) {
		t.Fatalf("two stamps in one millisecond: %v, %v", a, b)
	}
	f.t = f.t.Add(-time.Hour) // the clock is stepped back
	if s := c.Now(); s <= b {
		t.Fatalf("stamp after a backward step %v not after %v", s, b)
	}
	f.t = f.t.Add(2 * time.Hour)
	if s := c.Now(); s != Make(f.t.UnixMilli(), 0) {
		t.Fatalf("physical time moved ahead, stamp %v", s)
	}
}

func TestObserveOrdersLaterLocalEvents(t *testing.T) {
	f := &fixed{t: time.UnixMilli(1_700_000_000_000)}
	c := New(f.now, 0)
	remote := Make(f.t.UnixMilli()+5_000, 7) // a peer whose clock runs 5 s ahead
	if !c.Observe(remote) {
		t.Fatal("a stamp within MaxSkew was refused")
	}
	if s := c.Now(); s <= remote {
		t.Fatalf("a write after receiving %v got %v", remote, s)
	}
}

func TestObserveRefusesStampsBeyondMaxSkew(t *testing.T) {
	f := &fixed{t: time.UnixMilli(1_700_000_000_000)}
	c := New(f.now, 0)
	before := c.Now()
	far := Make(f.t.Add(MaxSkew).UnixMilli()+1, 0)
	if c.Observe(far) {
		t.Fatal("a stamp beyond MaxSkew was taken")
	}
	if c.Last() != before {
		t.Fatalf("a refused stamp moved the clock to %v", c.Last())
	}
	if !c.Observe(far - 1<<counterBits) {
		t.Fatal("a stamp exactly MaxSkew ahead was refused")
	}
	if c.Observe(^Stamp(0)) {
		t.Fatal("the largest stamp was taken")
	}
}

func TestOffsetShiftsPhysicalTime(t *testing.T) {
	f := &fixed{t: time.UnixMilli(1_700_000_000_000)}
	c := New(f.now, 2*time.Second)
	if s := c.Now(); s.Millis() != 1_700_000_002_000 {
		t.Fatalf("offset clock stamp %v", s)
	}
}

func TestStampParts(t *testing.T) {
	s := Make(1_700_000_000_123, 9)
	if s.Millis() != 1_700_000_000_123 || s.Counter() != 9 {
		t.Fatalf("parts of %v", s)
	}
	if got := s.String(); got != "2023-11-14T22:13:20.123Z+9" {
		t.Fatalf("String() = %q", got)
	}
	if Stamp(0).String() != "unstamped" {
		t.Fatal("zero stamp string")
	}
}

func BenchmarkNow(b *testing.B) {
	c := New(nil, 0)
	for b.Loop() {
		c.Now()
	}
}
