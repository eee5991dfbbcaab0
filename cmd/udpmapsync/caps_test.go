package main

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/privileges"
)

// holding returns an effective set of exactly caps.
func holding(caps ...int) func(int) bool {
	return func(c int) bool {
		for _, h := range caps {
			if h == c {
				return true
			}
		}
		return false
	}
}

// required is the numbers of privileges.Required but those in without.
func required(without ...int) []int {
	var out []int
next:
	for _, c := range privileges.Required {
		for _, w := range without {
			if c.Number == w {
				continue next
			}
		}
		out = append(out, c.Number)
	}
	return out
}

// grants are the three ways the message offers to grant the whole set.
func grants() []string {
	var names, k8s []string
	for _, c := range privileges.Required {
		names = append(names, c.Name)
		k8s = append(k8s, strings.TrimPrefix(c.Name, "CAP_"))
	}
	return []string{
		"run udpmapsync as root",
		"AmbientCapabilities=" + strings.Join(names, " "),
		"CapabilityBoundingSet=" + strings.Join(names, " "),
		"securityContext.capabilities.add: [" + strings.Join(k8s, ", ") + "]",
	}
}

func TestCapabilityErrorNone(t *testing.T) {
	if err := capabilityError(privileges.MissingFrom(holding(required()...))); err != nil {
		t.Errorf("with every required capability: %v", err)
	}
	// The kernel grants what CAP_BPF and CAP_PERFMON allow to
	// CAP_SYS_ADMIN too, but not SO_RCVBUFFORCE.
	if err := capabilityError(privileges.MissingFrom(holding(unix.CAP_SYS_ADMIN, unix.CAP_NET_ADMIN))); err != nil {
		t.Errorf("with CAP_SYS_ADMIN and CAP_NET_ADMIN: %v", err)
	}
}

// TestCapabilityErrorEach drops each capability in turn: the message names
// it, says why it is needed and every way to grant the whole set, and
// names no other.
func TestCapabilityErrorEach(t *testing.T) {
	for _, c := range privileges.Required {
		t.Run(c.Name, func(t *testing.T) {
			err := capabilityError(privileges.MissingFrom(holding(required(c.Number)...)))
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			t.Log(msg)
			for _, want := range append([]string{
				"missing capability " + c.Name + ":\n",
				"\n  " + c.Name + ": " + c.Why + "\n",
				"grant it: ",
			}, grants()...) {
				if !strings.Contains(msg, want) {
					t.Errorf("message lacks %q", want)
				}
			}
			for _, o := range privileges.Required {
				if o.Name != c.Name && strings.Contains(msg, o.Why) {
					t.Errorf("message explains %s, which is not missing", o.Name)
				}
			}
		})
	}
}

func TestCapabilityErrorAll(t *testing.T) {
	err := capabilityError(privileges.MissingFrom(holding()))
	if err == nil {
		t.Fatal("no error with no capabilities")
	}
	msg := err.Error()
	var names []string
	for _, c := range privileges.Required {
		names = append(names, c.Name)
		if !strings.Contains(msg, "\n  "+c.Name+": "+c.Why+"\n") {
			t.Errorf("message lacks a line for %s: %s", c.Name, msg)
		}
	}
	if want := "missing capabilities " + strings.Join(names, ", ") + ":\n"; !strings.HasPrefix(msg, want) {
		t.Errorf("message does not start with %q: %s", want, msg)
	}
	for _, want := range append([]string{"grant them: "}, grants()...) {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q: %s", want, msg)
		}
	}
	// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON only.
	err = capabilityError(privileges.MissingFrom(holding(unix.CAP_SYS_ADMIN)))
	if err == nil || !strings.HasPrefix(err.Error(), "missing capability CAP_NET_ADMIN:") {
		t.Errorf("with CAP_SYS_ADMIN alone: %v; want only CAP_NET_ADMIN missing", err)
	}
}

// TestCheckCapabilitiesMatchesProc compares what checkCapabilities reads
// with the effective set in /proc/self/status.
func TestCheckCapabilitiesMatchesProc(t *testing.T) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	var eff uint64
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			if eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := capabilityError(privileges.MissingFrom(func(c int) bool { return eff&(1<<c) != 0 }))
	got := checkCapabilities()
	if (got == nil) != (want == nil) || got != nil && got.Error() != want.Error() {
		t.Errorf("checkCapabilities() = %v; from CapEff %#x: %v", got, eff, want)
	}
}
