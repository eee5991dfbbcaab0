package loader

import (
	"os"
	"regexp"
	"strconv"
	"testing"

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
