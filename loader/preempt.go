package loader

import (
	"bufio"
	"compress/gzip"
	"os"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// ProcessPreemptible reports whether this kernel may preempt a BPF
// program that runs in process context (a syscall, cgroup or tracing
// program, or one run with BPF_PROG_RUN) between two of its instructions,
// and why it says so. On such a kernel (preempt=full or lazy, PREEMPT_RT)
// a program that updates its CPU's slot of a per-CPU map without an
// atomic instruction, read then written, can be preempted between the
// two; whatever another task on that CPU added to the slot meanwhile, an
// [Adder]'s add among them, is then overwritten. Programs in softirq
// (XDP, tc) are never preempted by a task. When the kernel does not say,
// it reports true.
func ProcessPreemptible() (bool, string) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return true, "uname failed: " + err.Error()
	}
	return preemptible(unix.ByteSliceToString(u.Version[:]), dynamicPreemption)
}

// preemptible is [ProcessPreemptible] for the kernel of uname's version,
// whose preemption model, if chosen at boot, model reads.
func preemptible(version string, model func() (string, bool)) (bool, string) {
	fields := strings.Fields(version)
	has := func(w string) bool { return slices.Contains(fields, w) }
	switch {
	case has("PREEMPT_RT"):
		return true, "the kernel is built with PREEMPT_RT (" + version + ")"
	case has("PREEMPT"), has("PREEMPT_LAZY"):
		return true, "the kernel is built to preempt kernel code (" + version + ")"
	case !has("PREEMPT_DYNAMIC"):
		return false, "the kernel is built without preemption of kernel code (" + version + ")"
	}
	if m, ok := model(); ok {
		return m == "full" || m == "lazy" || m == "laziest", "the kernel's preemption model is " + m
	}
	return true, "the kernel's preemption model is chosen at boot, and neither its command line, debugfs nor its config says which (" + version + ")"
}

// dynamicPreemption reads the preemption model a PREEMPT_DYNAMIC kernel
// runs with: from debugfs (the one in parentheses), the preempt= boot
// parameter, or else the config's default.
func dynamicPreemption() (string, bool) {
	if b, err := os.ReadFile("/sys/kernel/debug/sched/preempt"); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if len(f) > 2 && f[0] == '(' && f[len(f)-1] == ')' {
				return f[1 : len(f)-1], true
			}
		}
	}
	if b, err := os.ReadFile("/proc/cmdline"); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if f == "--" {
				break // what follows is init's
			}
			if m, ok := strings.CutPrefix(f, "preempt="); ok {
				return m, true
			}
		}
	}
	f, err := os.Open("/proc/config.gz")
	if err != nil {
		return "", false
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return "", false
	}
	for s := bufio.NewScanner(z); s.Scan(); {
		for _, c := range []struct{ option, model string }{
			{"CONFIG_PREEMPT_NONE=y", "none"}, {"CONFIG_PREEMPT_VOLUNTARY=y", "voluntary"},
			{"CONFIG_PREEMPT=y", "full"}, {"CONFIG_PREEMPT_LAZY=y", "lazy"},
		} {
			if s.Text() == c.option {
				return c.model, true
			}
		}
	}
	return "", false
}
