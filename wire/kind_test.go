package wire

import (
	"strings"
	"testing"
)

// Every kind has a name, so that errors and logs never print a number
// for a kind that exists.
func TestKindNames(t *testing.T) {
	seen := map[string]Kind{}
	for k := Kind(1); k <= maxKind; k++ {
		name := k.String()
		if strings.HasPrefix(name, "Kind(") {
			t.Errorf("kind %d has no name: run go generate ./wire", uint8(k))
		}
		if prev, ok := seen[name]; ok {
			t.Errorf("kinds %d and %d are both named %s", prev, k, name)
		}
		seen[name] = k
	}
	if got := (maxKind + 1).String(); !strings.HasPrefix(got, "Kind(") {
		t.Errorf("a kind past the last is named %q", got)
	}
}
