package loader

import "testing"

// The preemption model is read from uname's version, and for a kernel
// that chooses it at boot from what the model reader finds.
func TestPreemptible(t *testing.T) {
	none := func() (string, bool) { return "", false }
	model := func(m string) func() (string, bool) { return func() (string, bool) { return m, true } }
	for _, c := range []struct {
		version string
		model   func() (string, bool)
		want    bool
	}{
		{"#1 SMP PREEMPT_DYNAMIC @0", model("none"), false},
		{"#1 SMP PREEMPT_DYNAMIC @0", model("voluntary"), false},
		{"#1 SMP PREEMPT_DYNAMIC @0", model("full"), true},
		{"#1 SMP PREEMPT_DYNAMIC @0", model("lazy"), true},
		{"#1 SMP PREEMPT_DYNAMIC @0", none, true}, // unknown: at risk
		{"#1 SMP PREEMPT Tue Jan 2 10:00:00 UTC 2024", none, true},
		{"#1 SMP PREEMPT_RT Debian 6.1.0-rt", none, true},
		{"#1 SMP PREEMPT_LAZY Fedora", none, true},
		{"#1 SMP Debian 6.1.140-1 (2025-05-22)", model("full"), false}, // static, not preemptible
	} {
		if got, why := preemptible(c.version, c.model); got != c.want {
			t.Errorf("%q: %v (%s), want %v", c.version, got, why, c.want)
		}
	}
}
