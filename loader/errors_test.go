package loader

import (
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

func TestPermissionError(t *testing.T) {
	eperm := fmt.Errorf("load program: %w%s", unix.EPERM, memlockHint)
	for _, tc := range []struct {
		err  *PermissionError
		want string
	}{
		{&PermissionError{Caps: captureCaps, Missing: captureCaps, Err: eperm},
			"load program: operation not permitted: needs CAP_BPF and CAP_PERFMON, which this process lacks"},
		{&PermissionError{Caps: captureCaps, Missing: []string{capPerfmon}, Err: eperm},
			"load program: operation not permitted: needs CAP_BPF and CAP_PERFMON; this process lacks CAP_PERFMON"},
		{&PermissionError{Caps: []string{capSysAdmin}, Err: unix.EPERM},
			"operation not permitted although this process holds CAP_SYS_ADMIN (they count only in the initial user namespace; lockdown or a security module may refuse too)"},
		{&PermissionError{Err: unix.EACCES},
			"permission denied (needs no capability: the file's permissions or a security module refused it)"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("%#v:\n got %q\nwant %q", tc.err, got, tc.want)
		}
		wrapped := fmt.Errorf("open map id:1: %w", tc.err)
		if !errors.Is(wrapped, ErrPermission) || !errors.Is(wrapped, tc.err.Err) {
			t.Errorf("%v: does not match ErrPermission and its kernel error", wrapped)
		}
	}
}

func TestPermissionErrorOnlyForRefusals(t *testing.T) {
	if err := permissionError(unix.ENOENT, capBPF); err != unix.ENOENT {
		t.Errorf("permissionError(ENOENT) = %v, want ENOENT unchanged", err)
	}
	if permissionError(nil) != nil {
		t.Error("permissionError(nil) is not nil")
	}
	// The tests run as root: nothing is missing.
	var pe *PermissionError
	if err := permissionError(fmt.Errorf("x: %w", unix.EPERM), capBPF, capPerfmon, capSysAdmin); !errors.As(err, &pe) || len(pe.Missing) != 0 {
		t.Errorf("as root: %v (%#v), want a PermissionError missing nothing", err, pe)
	}
}
