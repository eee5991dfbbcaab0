package seal

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
)

// replayModel is the specification of ReplayWindow: a set of every counter
// ever accepted.
type replayModel struct {
	last uint64
	seen map[uint64]bool
}

func (m *replayModel) accept(c uint64) bool {
	if c == 0 || m.seen[c] || (c <= m.last && m.last-c >= WindowSize) {
		return false
	}
	if m.seen == nil {
		m.seen = make(map[uint64]bool)
	}
	m.seen[c] = true
	m.last = max(m.last, c)
	return true
}

func TestReplayWindow(t *testing.T) {
	var w ReplayWindow
	steps := []struct {
		c    uint64
		want bool
	}{
		{0, false},
		{1, true},
		{1, false},
		{3, true},
		{2, true},
		{2, false},
		{WindowSize + 4, true},
		{5, true},  // WindowSize-1 behind: still in
		{5, false}, // ... and seen
		{4, false}, // WindowSize behind: out, though never seen
		{6, true},
		{3 * WindowSize, true}, // a jump past a whole window
		{WindowSize + 4, false},
		{2*WindowSize + 1, true},
		{2 * WindowSize, false},
		{3 * WindowSize, false},
		{0, false},
	}
	for i, s := range steps {
		if got := w.Accept(s.c); got != s.want {
			t.Fatalf("step %d: Accept(%d) = %v, want %v", i, s.c, got, s.want)
		}
	}
	w.Reset()
	if !w.Accept(1) || w.Accept(1) {
		t.Fatal("Reset did not empty the window")
	}
}

func TestReplayWindowTop(t *testing.T) {
	const top = math.MaxUint64
	var w ReplayWindow
	for _, s := range []struct {
		c    uint64
		want bool
	}{
		{top - WindowSize - 10, true},
		{top, true},
		{top, false},
		{top - 1, true},
		{top - WindowSize + 1, true},
		{top - WindowSize, false},
		{top - WindowSize - 10, false},
		{1, false},
		{0, false},
		{top - 1, false},
	} {
		if got := w.Accept(s.c); got != s.want {
			t.Fatalf("Accept(max - %d) = %v, want %v", top-s.c, got, s.want)
		}
	}
}

// TestReplayWindowModel runs random streams through the window and the
// model: in order with losses, reordered, replayed, with jumps, near 0 and
// near the top of the range.
func TestReplayWindowModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for run := range 200 {
		var w ReplayWindow
		var m replayModel
		base := []uint64{0, 0, 1 << 40, math.MaxUint64 - 3*WindowSize}[run%4]
		spread := []uint64{16, 200, WindowSize / 2, WindowSize, 2 * WindowSize, 100 * WindowSize}[run%6]
		next := base
		for i := range 5000 {
			var c uint64
			switch r := rng.IntN(10); {
			case r < 5: // the stream, with losses
				next += 1 + rng.Uint64N(3)
				c = next
			case r < 8: // late, maybe a replay
				c = next - rng.Uint64N(min(spread, next-base+1))
			case r < 9: // ahead
				c = next + rng.Uint64N(spread)
			default: // anywhere near
				c = base + rng.Uint64N(3*WindowSize)
			}
			if got, want := w.Accept(c), m.accept(c); got != want {
				t.Fatalf("run %d, step %d: Accept(%d) = %v, model says %v (last %d)", run, i, c, got, want, m.last)
			}
		}
	}
}

// FuzzReplayWindow checks ReplayWindow against the model on streams the
// fuzzer makes: each 9 bytes of the input are a counter, as a step
// relative to the highest so far or, when the first byte is odd, as
// itself.
func FuzzReplayWindow(f *testing.F) {
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x00\x01"))
	seed := make([]byte, 0, 9*8)
	for _, step := range []int64{1, 1, 3, -2, WindowSize, -WindowSize + 1, -WindowSize, 1 << 40} {
		seed = append(seed, 0)
		seed = binary.BigEndian.AppendUint64(seed, uint64(step))
	}
	f.Add(seed)
	f.Add([]byte("\x01\xff\xff\xff\xff\xff\xff\xff\xff\x01\xff\xff\xff\xff\xff\xff\xff\xfe\x00\xff\xff\xff\xff\xff\xff\xe0\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var w ReplayWindow
		var m replayModel
		for ; len(data) >= 9; data = data[9:] {
			v := binary.BigEndian.Uint64(data[1:])
			c := v
			if data[0]&1 == 0 {
				c = m.last + v // a step, wrapping: forwards or back
			}
			if got, want := w.Accept(c), m.accept(c); got != want {
				t.Fatalf("Accept(%d) = %v, model says %v (last %d)", c, got, want, m.last)
			}
		}
	})
}

func BenchmarkReplayWindow(b *testing.B) {
	b.Run("in-order", func(b *testing.B) {
		var w ReplayWindow
		var c uint64
		b.ReportAllocs()
		for b.Loop() {
			c++
			w.Accept(c)
		}
	})
	b.Run("reordered", func(b *testing.B) {
		var w ReplayWindow
		var c uint64
		b.ReportAllocs()
		for b.Loop() {
			c += 2
			w.Accept(c)
			w.Accept(c - 1)
		}
	})
	b.Run("jumps", func(b *testing.B) {
		// The worst case: every counter moves the window past itself.
		var w ReplayWindow
		var c uint64
		b.ReportAllocs()
		for b.Loop() {
			c += 2 * WindowSize
			w.Accept(c)
		}
	})
}
