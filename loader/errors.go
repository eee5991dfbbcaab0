package loader

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

// The errors of [OpenMaps] and [NewCapture] wrap these, with the operation
// and the object (map spec, directory, backend) in front; test for them with
// errors.Is. What to do about one is for the caller to say: this package
// knows nothing of command lines.
var (
	// ErrNoMaps is returned by [OpenMaps] given no specs when the pin
	// directory does not exist or no map is pinned directly under it.
	ErrNoMaps = errors.New("no maps to replicate")

	// ErrBadSpec is a malformed map spec: an empty name:NAME, one longer
	// than the kernel keeps, or an id:N that is not a decimal number.
	ErrBadSpec = errors.New("malformed map spec")

	// ErrMapNotFound is a map spec that names no map: nothing, or an object
	// that is not a map, is pinned at the path, or no map has the id or name.
	ErrMapNotFound = errors.New("no such map")

	// ErrAmbiguousName is a name:NAME spec that more than one map matches:
	// the kernel does not keep map names unique.
	ErrAmbiguousName = errors.New("ambiguous map name")

	// ErrUnsupportedMap is a map that cannot be replicated: its type is
	// not hash, LRU hash or array, its key is over [MaxKeySize] or its value
	// over [MaxValueSize] bytes, or it has no name (nodes match maps by
	// name).
	ErrUnsupportedMap = errors.New("map cannot be replicated")

	// ErrDuplicateMap is a map that two specs (or two pins) resolve to.
	ErrDuplicateMap = errors.New("duplicate map")

	// ErrDuplicateName is two different maps with one name: nodes match
	// maps by name, so they could not tell them apart.
	ErrDuplicateName = errors.New("duplicate map name")

	// ErrUnknownBackend is a [CaptureOptions.Backend] other than
	// [BackendAuto], [BackendFentry] and [BackendSyscall].
	ErrUnknownBackend = errors.New("unknown capture backend")

	// ErrRingSize is a [CaptureOptions.RingSize] that is not a power of two
	// of at least a page.
	ErrRingSize = errors.New("invalid capture ring size")

	// ErrFentryRefused is returned for [BackendFentry] when the kernel
	// refuses fentry/fexit programs although the process holds the
	// capabilities they need: a locked-down or sandboxed kernel. It stands
	// in for cilium/ebpf's advice to raise RLIMIT_MEMLOCK, which is wrong
	// there. The error also matches unix.EPERM.
	ErrFentryRefused = errors.New("kernel refused fentry/fexit programs")

	// ErrPermission is matched by every [*PermissionError]: a BPF command
	// the kernel refused for lack of privilege.
	ErrPermission = errors.New("insufficient privilege")
)

// MapError is an error of [OpenMaps] about one map: one it was given as a
// spec, or one it found pinned in the pin directory.
type MapError struct {
	Spec   string // the spec as given; for a map found pinned, its path
	Pinned bool   // found in the pin directory rather than given as a spec
	Err    error
}

func (e *MapError) Error() string {
	if e.Pinned {
		return "open pinned map " + e.Spec + ": " + e.Err.Error()
	}
	return "open map " + e.Spec + ": " + e.Err.Error()
}

func (e *MapError) Unwrap() error { return e.Err }

// PermissionError is a BPF command the kernel refused with EPERM or
// EACCES. It matches [ErrPermission] and unwraps to the kernel's error.
type PermissionError struct {
	// Caps are the capabilities the command needs, as capabilities(7)
	// spells them; none for one that only a file's permissions or a
	// security module refuse. CAP_SYS_ADMIN stands in for CAP_BPF and
	// CAP_PERFMON.
	Caps []string
	// Missing are those of Caps this process (the calling thread) lacks
	// from its effective set. Empty with Caps set, the kernel refused
	// despite them: they count only in the initial user namespace, and
	// lockdown or a security module can refuse anyway.
	Missing []string
	Err     error
}

// memlockHint is what cilium/ebpf adds to an EPERM from creating a map or
// loading a program.
const memlockHint = " (MEMLOCK may be too low, consider rlimit.RemoveMemlock)"

// Error leaves out cilium/ebpf's guess that RLIMIT_MEMLOCK is too low when
// capabilities are missing: then they are the cause.
func (e *PermissionError) Error() string {
	switch {
	case len(e.Missing) == len(e.Caps) && len(e.Caps) > 0:
		return fmt.Sprintf("%s: needs %s, which this process lacks", strings.Replace(e.Err.Error(), memlockHint, "", 1), and(e.Missing))
	case len(e.Missing) > 0:
		return fmt.Sprintf("%s: needs %s; this process lacks %s", strings.Replace(e.Err.Error(), memlockHint, "", 1), and(e.Caps), and(e.Missing))
	case len(e.Caps) > 0:
		return fmt.Sprintf("%v although this process holds %s (they count only in the initial user namespace; lockdown or a security module may refuse too)", e.Err, and(e.Caps))
	}
	return fmt.Sprintf("%v (needs no capability: the file's permissions or a security module refused it)", e.Err)
}

func (e *PermissionError) Unwrap() error { return e.Err }

// Is makes a PermissionError match [ErrPermission].
func (e *PermissionError) Is(target error) bool { return target == ErrPermission }

func and(names []string) string {
	if len(names) <= 1 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// The capabilities the BPF commands of this package need.
const (
	capBPF      = "CAP_BPF"
	capPerfmon  = "CAP_PERFMON"
	capSysAdmin = "CAP_SYS_ADMIN"
)

var capNumbers = map[string]int{capBPF: unix.CAP_BPF, capPerfmon: unix.CAP_PERFMON, capSysAdmin: unix.CAP_SYS_ADMIN}

// captureCaps are what loading and attaching the capture need: CAP_BPF for
// its maps and programs, CAP_PERFMON for tracing programs that read other
// processes' writes.
var captureCaps = []string{capBPF, capPerfmon}

// permissionError returns err as a [*PermissionError] if the kernel refused
// it for lack of privilege (EPERM, EACCES), with the capabilities caps the
// command needs; other errors are returned as they are.
func permissionError(err error, caps ...string) error {
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
		return err
	}
	return &PermissionError{Caps: caps, Missing: missingCaps(caps), Err: err}
}

// missingCaps returns those of caps that the calling thread lacks from its
// effective set; all of them if the set cannot be read.
func missingCaps(caps []string) []string {
	if len(caps) == 0 {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return caps
	}
	has := func(c int) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	var missing []string
	for _, name := range caps {
		c := capNumbers[name]
		if has(c) || (c != unix.CAP_SYS_ADMIN && has(unix.CAP_SYS_ADMIN)) {
			continue
		}
		missing = append(missing, name)
	}
	return missing
}
