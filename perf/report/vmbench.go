package report

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// VMBenchCommand measures issue 22's target 8 on its own: the fentry
// capture runs in the qemu VM only, since this host refuses fentry.
const VMBenchCommand = "make vmbench (root, qemu-system-x86_64; about 4 minutes)"

// CaptureCost is what `make vmbench` printed within `make perf`: the
// capture's cost per map write and batch element in the Debian 6.1 VM,
// and its verdict on issue 22's target 8.
type CaptureCost struct {
	// Table is the ratios' table as vmbench printed it.
	Table string
	// Checks are the lines of the target, in vmbench's order.
	Checks []CaptureCheck
	// Seconds is how long make vmbench took, boot and build included.
	Seconds float64
}

// CaptureCheck is one line of target 8: what is bounded, the median ratio
// measured and whether it is within the bound.
type CaptureCheck struct {
	What  string
	Ratio float64
	Met   bool
}

// vmbench's output: the table's title, the target's title, and the line
// the Makefile adds with the time it took or why it did not run.
const (
	vmbenchTable   = "capture cost per map write"
	vmbenchTarget  = "issue 22, target 8"
	vmbenchTook    = "vmbench: took "
	vmbenchNotRun  = "vmbench: not run: "
	vmbenchSkipped = "skipped"
)

// ParseVMBench reads the output of make vmbench as make perf saves it. It
// returns why there is no figure when vmbench did not run, failed, or
// printed no target line.
func ParseVMBench(out []byte) (*CaptureCost, error) {
	c := &CaptureCost{}
	var table strings.Builder
	section := ""
	var last string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) != "" && !strings.HasPrefix(line, vmbenchTook) {
			last = strings.TrimSpace(line)
		}
		switch {
		case strings.HasPrefix(line, vmbenchNotRun):
			return nil, fmt.Errorf("%s", strings.TrimPrefix(line, vmbenchNotRun))
		case strings.HasPrefix(line, vmbenchTook):
			s, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimPrefix(line, vmbenchTook), " s"), 64)
			if err != nil {
				return nil, fmt.Errorf("vmbench output: %q: %w", line, err)
			}
			c.Seconds = s
		case strings.HasPrefix(line, vmbenchTable):
			section = vmbenchTable
			table.WriteString(line + "\n")
		case strings.HasPrefix(line, vmbenchTarget):
			section = vmbenchTarget
		case section == vmbenchTable && strings.TrimSpace(line) != "":
			table.WriteString(line + "\n")
		case section == vmbenchTarget && strings.HasPrefix(line, "  "):
			f := strings.Fields(line)
			if len(f) < 2 || f[len(f)-1] == vmbenchSkipped {
				continue
			}
			ratio, err := strconv.ParseFloat(strings.TrimSuffix(f[len(f)-2], "x"), 64)
			verdict := f[len(f)-1]
			if err != nil || (verdict != "met" && verdict != "missed") {
				return nil, fmt.Errorf("vmbench output: target line %q", line)
			}
			c.Checks = append(c.Checks, CaptureCheck{What: strings.Join(f[:len(f)-2], " "), Ratio: ratio, Met: verdict == "met"})
		}
	}
	if len(c.Checks) == 0 {
		return nil, fmt.Errorf("make vmbench printed no target line in %.0f s (failed, or stopped by VMBENCH_TIMEOUT); its last line: %q", c.Seconds, last)
	}
	c.Table = table.String()
	return c, nil
}

// captureCostTarget is issue 22's #8, from make vmbench run within make
// perf, or not measured with the reason and the command that measures it.
func (r *Results) captureCostTarget() Target {
	t := Target{Goal: "#8 fentry backend (VM): a watched BPF program write ≤ 2× a bare one, unwatched ≤ 1.2×; a batch element at most the syscall backend's"}
	c := r.CaptureCost
	if c == nil {
		t.Measured = fmt.Sprintf("not measured: %s; %s measures it", r.CaptureCostNote, VMBenchCommand)
		return t
	}
	var each []string
	met := true
	for _, x := range c.Checks {
		each = append(each, fmt.Sprintf("%s: %.2f×", x.What, x.Ratio))
		met = met && x.Met
	}
	t.Measured = strings.Join(each, "; ") + fmt.Sprintf(" (medians over the rounds, Debian 6.1 VM under qemu TCG; make vmbench in this run took %.0f s)", c.Seconds)
	t.Met = ptr(met && len(c.Checks) == 3)
	return t
}

// captureCostSection is the vmbench table, when it ran.
func (r *Results) captureCostSection() string {
	if r.CaptureCost == nil {
		return ""
	}
	return fmt.Sprintf("\n## Capture cost in the VM (`make vmbench`)\n\nThe fentry capture backend runs only where the kernel allows fentry: this host refuses it, so make perf ran make vmbench, which boots Debian's 6.1 kernel under qemu (TCG, 2 vCPUs) and runs BenchmarkCaptureCost and BenchmarkCaptureBatchCost there in rounds; each ratio is to the same writer without a hook in the same round (%.0f s in all).\n\n```\n%s```\n", r.CaptureCost.Seconds, r.CaptureCost.Table)
}
