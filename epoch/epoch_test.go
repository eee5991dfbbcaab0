package epoch

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is a wall clock time well after 1970.
var clock = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func mustNext(t testing.TB, path string, now time.Time) uint64 {
	t.Helper()
	e, err := Next(path, now)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func stored(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestNextGrows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "epoch")
	e1 := mustNext(t, path, clock)
	if e1 != uint64(clock.UnixNano()) {
		t.Errorf("first epoch %d, want the clock, %d", e1, clock.UnixNano())
	}
	if got := stored(t, path); got != strconv.FormatUint(e1, 10)+"\n" {
		t.Errorf("file holds %q after epoch %d", got, e1)
	}
	// The same instant again, as a fast restart may see it: one more.
	if e2 := mustNext(t, path, clock); e2 != e1+1 {
		t.Errorf("epoch at the same instant %d, want %d", e2, e1+1)
	}
	// The clock moves on: the clock.
	later := clock.Add(time.Second)
	if e3 := mustNext(t, path, later); e3 != uint64(later.UnixNano()) {
		t.Errorf("epoch a second later %d, want %d", e3, later.UnixNano())
	}
	prev := uint64(later.UnixNano())
	for i := range 20 {
		e := mustNext(t, path, later.Add(time.Duration(i)*time.Nanosecond))
		if e <= prev {
			t.Fatalf("epoch %d after %d", e, prev)
		}
		prev = e
	}
}

func TestNextClockBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "epoch")
	e1 := mustNext(t, path, clock)
	// The clock steps back an hour: the epoch still grows, by one.
	e2 := mustNext(t, path, clock.Add(-time.Hour))
	if e2 != e1+1 {
		t.Errorf("epoch after the clock stepped back %d, want %d", e2, e1+1)
	}
	// A clock before 1970, or at it, as on a board without a battery.
	for _, now := range []time.Time{time.Unix(0, 0), time.Unix(-1000, 0), {}} {
		e := mustNext(t, path, now)
		if e != e2+1 {
			t.Errorf("epoch at %v: %d, want %d", now, e, e2+1)
		}
		e2 = e
	}
}

func TestNextFromZero(t *testing.T) {
	// Without a file and with a clock at 1970, the first epoch is 1:
	// never 0.
	path := filepath.Join(t.TempDir(), "epoch")
	if e := mustNext(t, path, time.Unix(0, 0)); e != 1 {
		t.Errorf("first epoch at 1970: %d, want 1", e)
	}
}

func TestNextCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "udpmapsync")
	path := filepath.Join(dir, "epoch")
	mustNext(t, path, clock)
	for _, c := range []struct {
		path string
		want os.FileMode
	}{
		{dir, 0o700 | os.ModeDir},
		{path, 0o600},
		{path + ".lock", 0o600},
	} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode() != c.want {
			t.Errorf("%s has mode %v, want %v", c.path, fi.Mode(), c.want)
		}
	}
	// Nothing else is left beside it.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 {
		t.Errorf("the directory holds %d files, want the epoch file and its lock", len(entries))
	}
}

func TestNextLeftoverTemp(t *testing.T) {
	// A crash between writing the temporary file and renaming it leaves
	// the temporary file; it does not get in the way, nor lend its mode.
	dir := t.TempDir()
	path := filepath.Join(dir, "epoch")
	if err := os.WriteFile(path+".tmp", []byte("garbage"), 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path+".tmp", 0o666)
	e := mustNext(t, path, clock)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode() != 0o600 {
		t.Errorf("epoch file mode %v (%v), want 0600", fi.Mode(), err)
	}
	if got := stored(t, path); got != fmt.Sprintf("%d\n", e) {
		t.Errorf("file holds %q", got)
	}
}

func TestNextCorrupt(t *testing.T) {
	for _, tc := range []struct{ name, text, says string }{
		{"empty", "", "is empty"},
		{"blank", "\n  \n", "is empty"},
		{"not a number", "hello\n", "not hold a decimal number"},
		{"negative", "-5\n", "not hold a decimal number"},
		{"hex", "0x10\n", "not hold a decimal number"},
		{"two numbers", "12 13\n", "not hold a decimal number"},
		{"too large", "18446744073709551616\n", "larger than any epoch"},
		{"the largest", strconv.FormatUint(math.MaxUint64, 10), "none is left"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "epoch")
			if err := os.WriteFile(path, []byte(tc.text), 0o600); err != nil {
				t.Fatal(err)
			}
			e, err := Next(path, clock)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Next with %q in the file = %d, %v; want ErrCorrupt", tc.text, e, err)
			}
			for _, want := range []string{path, tc.says, "if no udpmapsync daemon runs", "clock", "rm " + path} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if got := stored(t, path); got != tc.text {
				t.Errorf("a failed Next changed the file to %q", got)
			}
		})
	}
	// Surrounding whitespace is not corruption.
	path := filepath.Join(t.TempDir(), "epoch")
	os.WriteFile(path, []byte(" 42 \n\n"), 0o600)
	if e := mustNext(t, path, time.Unix(0, 0)); e != 43 {
		t.Errorf("epoch after \" 42 \": %d, want 43", e)
	}
}

func TestNextErrors(t *testing.T) {
	dir := t.TempDir()
	// The epoch file's directory is a file.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := Next(filepath.Join(file, "epoch"), clock); err == nil {
		t.Error("Next under a regular file succeeded")
	}
	// The epoch file is a directory.
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o700)
	if _, err := Next(sub, clock); err == nil || !strings.Contains(err.Error(), sub) {
		t.Errorf("Next of a directory: %v", err)
	}
}

// TestNextConcurrent has two goroutines take 200 epochs each from one file
// with a clock that stands still: every epoch is distinct.
func TestNextConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "epoch")
	const n = 200
	got := make([][]uint64, 2)
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			prev := uint64(0)
			for range n {
				e, err := Next(path, clock)
				if err != nil {
					t.Error(err)
					return
				}
				if e <= prev {
					t.Errorf("goroutine %d: epoch %d after %d", g, e, prev)
				}
				prev = e
				got[g] = append(got[g], e)
			}
		})
	}
	wg.Wait()
	checkDistinct(t, got, 2*n)
}

func checkDistinct(t *testing.T, got [][]uint64, want int) {
	t.Helper()
	seen := make(map[uint64]bool)
	for _, es := range got {
		for _, e := range es {
			if seen[e] {
				t.Fatalf("epoch %d handed out twice", e)
			}
			seen[e] = true
		}
	}
	if len(seen) != want {
		t.Fatalf("%d epochs, want %d", len(seen), want)
	}
}

// TestNextProcesses is TestNextConcurrent with two processes, as two
// daemons of one host: this test binary, run again as helpers.
func TestNextProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the test binary twice")
	}
	path := filepath.Join(t.TempDir(), "epoch")
	const n = 200
	cmds := make([]*exec.Cmd, 2)
	outs := make([]strings.Builder, 2)
	for i := range cmds {
		cmds[i] = exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmds[i].Env = append(os.Environ(), "EPOCH_HELPER_FILE="+path, "EPOCH_HELPER_N="+strconv.Itoa(n))
		cmds[i].Stdout = &outs[i]
		cmds[i].Stderr = os.Stderr
	}
	for _, c := range cmds {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
	}
	got := make([][]uint64, 2)
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("helper %d: %v", i, err)
		}
		for line := range strings.Lines(outs[i].String()) {
			if !strings.HasPrefix(line, "epoch ") {
				continue
			}
			e, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(line, "epoch ")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			got[i] = append(got[i], e)
		}
	}
	checkDistinct(t, got, 2*n)
	last, _ := strconv.ParseUint(strings.TrimSpace(stored(t, path)), 10, 64)
	for _, es := range got {
		for _, e := range es {
			if e > last {
				t.Fatalf("epoch %d handed out, but the file holds %d", e, last)
			}
		}
	}
}

// TestHelperProcess takes epochs for TestNextProcesses, printing them.
func TestHelperProcess(t *testing.T) {
	path := os.Getenv("EPOCH_HELPER_FILE")
	if path == "" {
		t.Skip("a helper of TestNextProcesses")
	}
	n, _ := strconv.Atoi(os.Getenv("EPOCH_HELPER_N"))
	prev := uint64(0)
	for range n {
		e := mustNext(t, path, clock)
		if e <= prev {
			t.Fatalf("epoch %d after %d", e, prev)
		}
		prev = e
		fmt.Printf("epoch %d\n", e)
	}
}

// BenchmarkNext is what a daemon's start pays: two fsyncs and a rename
// dominate.
func BenchmarkNext(b *testing.B) {
	path := filepath.Join(b.TempDir(), "epoch")
	b.ReportAllocs()
	for b.Loop() {
		mustNext(b, path, clock)
	}
}
