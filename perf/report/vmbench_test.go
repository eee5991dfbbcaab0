package report

import (
	"strings"
	"testing"
)

// vmbenchOut is make vmbench's output in the shape its awk program prints,
// with the line make perf adds.
const vmbenchOut = `BenchmarkCaptureCost/none/user-2   20000   973 ns/op   367.9 ns/write
ok  	github.com/udpmapsync/udpmapsync/loader	211.402s

capture cost per map write, 9 rounds (in the VM the ratios matter, not the ns)
writer/hook/map           x no hook       range  fastest ns/write  fastest x
user/none                      1.00   1.00-1.00              5512       1.00
prog/fentry/watched            4.71   3.10-9.80               610       3.90

issue 22, target 8 (medians of the ratios above)
  watched program write, at most 2x a bare one                    4.71x  missed
  unwatched program write, at most 1.2x                           1.15x  met
  fentry batch element, at most the syscall backend's 1.35x       1.30x  met
vmbench: took 251 s
`

func TestParseVMBench(t *testing.T) {
	c, err := ParseVMBench([]byte(vmbenchOut))
	if err != nil {
		t.Fatal(err)
	}
	if c.Seconds != 251 || len(c.Checks) != 3 || !strings.Contains(c.Table, "prog/fentry/watched") || strings.Contains(c.Table, "issue 22") {
		t.Fatalf("parsed %+v", c)
	}
	if x := c.Checks[0]; x.What != "watched program write, at most 2x a bare one" || x.Ratio != 4.71 || x.Met {
		t.Errorf("first check %+v", x)
	}
	r := &Results{CaptureCost: c}
	if got := r.captureCostTarget(); got.Met == nil || *got.Met || !strings.Contains(got.Measured, "4.71×") || !strings.Contains(got.Measured, "251 s") {
		t.Errorf("one bound missed: %+v, want missed with the figures", got)
	}
	r.CaptureCost.Checks[0].Met = true
	if got := r.captureCostTarget(); got.Met == nil || !*got.Met {
		t.Errorf("every bound met: %+v, want met", got)
	}

	for _, bad := range []struct{ out, want string }{
		{"vmbench: not run: qemu-system-x86_64 is not installed\n", "qemu-system-x86_64 is not installed"},
		{"vmrun: cannot boot\nFAIL\nvmbench: took 20 s\n", `in 20 s (failed, or stopped by VMBENCH_TIMEOUT); its last line: "FAIL"`},
		{"issue 22, target 8 (medians)\n  watched program write 4.71x  maybe\n", "target line"},
	} {
		_, err := ParseVMBench([]byte(bad.out))
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: got %v, want an error saying %q", bad.out, err, bad.want)
			continue
		}
		r := &Results{CaptureCostNote: err.Error()}
		if got := r.captureCostTarget(); got.Met != nil || !strings.Contains(got.Measured, "make vmbench") {
			t.Errorf("not run: %+v, want not measured with the command", got)
		}
	}
}
