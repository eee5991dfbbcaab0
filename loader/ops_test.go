package loader

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/ops"
)

// The capture programs number the operations in their own header; the
// ring buffer samples carry those numbers, which Read hands out as ops.Op.
func TestOpsAgreeWithBPFHeader(t *testing.T) {
	src, err := os.ReadFile("../bpf/capture.h")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]ops.Op{"CAPTURE_OP_UPDATE": ops.Update, "CAPTURE_OP_DELETE": ops.Delete, "CAPTURE_OP_TOUCH": opTouch} {
		m := regexp.MustCompile(`(?m)^#define ` + name + `\s+(\d+)\s*$`).FindSubmatch(src)
		if m == nil {
			t.Errorf("bpf/capture.h does not define %s", name)
			continue
		}
		if got, _ := strconv.Atoi(string(m[1])); got != int(want) {
			t.Errorf("bpf/capture.h: %s is %d, ops.%s is %d", name, got, want, want)
		}
	}
}

// The capture programs wake the reader after IdleWake of quiet; the number
// compiled into them is the one the reader's PollWindow is derived from.
func TestWakeContract(t *testing.T) {
	if PollWindow < 2*IdleWake {
		t.Fatalf("PollWindow %v is less than twice IdleWake %v: a silent change could wait for the next one", PollWindow, IdleWake)
	}
	for name, load := range map[string]func() (*ebpf.CollectionSpec, error){
		"syscall": loadCaptureSyscall, "fentry": loadCaptureFentry,
	} {
		spec, err := load()
		if err != nil {
			t.Fatal(err)
		}
		var ns uint64
		if err := spec.Variables["idle_ns"].Get(&ns); err != nil {
			t.Fatal(err)
		}
		if time.Duration(ns) != IdleWake {
			t.Errorf("%s programs: idle_ns is %d, loader.IdleWake %v", name, ns, IdleWake)
		}
	}
}
