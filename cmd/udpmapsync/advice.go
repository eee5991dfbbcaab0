package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
)

// specForms are the forms of a --map value.
const specForms = "PATH|name:NAME|id:N"

// advised is an error with what to do about it in terms of the command
// line. Its message replaces the original's; errors.Is and errors.As still
// see the original.
type advised struct {
	msg string
	err error
}

func (a *advised) Error() string { return a.msg }
func (a *advised) Unwrap() error { return a.err }

// advice returns an error of loader.OpenMaps or loader.NewCapture with what
// to do about it, naming the flags: loader reports facts and sentinels
// (loader.ErrNoMaps, ...), and only the command knows its flags. The result
// still matches err with errors.Is and errors.As. Errors it has nothing to
// add to, and nil, are returned unchanged.
func advice(err error) error {
	if err == nil {
		return nil
	}
	var me *loader.MapError
	if errors.As(err, &me) {
		return mapAdvice(err, me)
	}
	var pe *loader.PermissionError
	switch {
	case errors.Is(err, loader.ErrNoMaps):
		return &advised{fmt.Sprintf("%v; pin the maps to replicate there, or pass --map %s for each", err, specForms), err}
	case errors.Is(err, loader.ErrUnknownBackend):
		return &advised{fmt.Sprintf("--capture: %v; use auto, fentry or syscall", err), err}
	case errors.Is(err, loader.ErrRingSize):
		return &advised{fmt.Sprintf("--ring-size: %v, such as %dMiB", err, loader.DefaultRingSize>>20), err}
	case errors.Is(err, loader.ErrFentryRefused):
		return &advised{fmt.Sprintf("%v; run with --capture syscall (it cannot see writes made by BPF programs)", err), err}
	case errors.As(err, &pe):
		return &advised{fmt.Sprintf("%v; %s", err, grant(pe)), err}
	}
	return err
}

// mapAdvice is advice for an error about one map: given with --map, or
// found pinned in the default directory because no --map was given.
func mapAdvice(err error, me *loader.MapError) error {
	var what string // what the error is about, for the message
	if me.Pinned {
		what = "pinned map " + me.Spec + " (no --map given)"
	} else {
		what = "--map " + me.Spec
	}
	msg := what + ": " + me.Err.Error()
	if err != error(me) { // wrapped: keep what was put around it
		msg = what + ": " + err.Error()
	}
	// for the maps found pinned: the ways to replicate others instead
	instead := fmt.Sprintf("unpin it from %s, or pass --map %s for each map to replicate", loader.DefaultPinDir, specForms)
	byID := strings.HasPrefix(me.Spec, "id:") || strings.HasPrefix(me.Spec, "name:")

	var pe *loader.PermissionError
	var hint string
	switch {
	case errors.As(err, &pe):
		if !me.Pinned && byID && slices.Contains(pe.Missing, "CAP_SYS_ADMIN") {
			hint = "finding a map by name or id needs CAP_SYS_ADMIN: run as root or grant it, or give the map's pinned path (--map PATH)"
		} else {
			hint = grant(pe)
		}
	case errors.Is(err, loader.ErrBadSpec):
		hint = fmt.Sprintf("give a pinned path, name:NAME (at most 15 characters) or id:N (--map %s)", specForms)
	case errors.Is(err, loader.ErrMapNotFound) && byID:
		hint = "bpftool map show lists the maps with their names and ids"
	case errors.Is(err, loader.ErrMapNotFound):
		hint = "give the path of a map pinned on bpffs, or the map as name:NAME or id:N"
	case errors.Is(err, loader.ErrAmbiguousName):
		hint = "give the map as its pinned path or as id:N (bpftool map show lists the ids)"
	case errors.Is(err, loader.ErrUnsupportedMap):
		hint = fmt.Sprintf("udpmapsync replicates named hash, lru_hash and array maps with keys up to %d B and values up to %d B; leave this --map out",
			loader.MaxKeySize, loader.MaxValueSize)
		if me.Pinned {
			hint = strings.TrimSuffix(hint, "; leave this --map out") + "; " + instead
		}
	case errors.Is(err, loader.ErrDuplicateMap):
		hint = "give each map once"
		if me.Pinned {
			hint = "remove one of its pins, or pass --map " + specForms + " for each map to replicate"
		}
	case errors.Is(err, loader.ErrDuplicateName):
		hint = "nodes match maps by name: rename one of the maps, or replicate only one"
		if me.Pinned {
			hint += " (" + instead + ")"
		}
	}
	if hint != "" {
		msg += "; " + hint
	}
	return &advised{msg, err}
}

// grant says how to get past a refusal for lack of privilege.
func grant(pe *loader.PermissionError) string {
	switch {
	case len(pe.Missing) > 0:
		return "run udpmapsync as root or grant it " + strings.Join(pe.Missing, " and ") +
			" (deploy/systemd/udpmapsync.service and deploy/kubernetes/daemonset.yaml grant what it needs)"
	case len(pe.Caps) > 0:
		return "run udpmapsync in the host's user namespace (as root on the host, or in a privileged container), " +
			"and check /sys/kernel/security/lockdown and the security modules (SELinux, AppArmor)"
	}
	return "run udpmapsync as root, or give its user access to the file"
}

// optionAdvice says what to do about an error of package mapopt.
func optionAdvice(err error) error {
	var oe *mapopt.Error
	if !errors.As(err, &oe) {
		return err
	}
	var hint string
	switch {
	case errors.Is(err, mapopt.ErrUnknownOption), errors.Is(err, mapopt.ErrBadValue), errors.Is(err, mapopt.ErrRepeated):
		hint = "the options are scan=DURATION, vanished=keep|delete, refresh=FIELD:PERIOD, clock=FIELD:mono-ns|mono-s|boot-ns|boot-s " +
			"local=FIELD, merge=lww|sum and origins=N (sum maps), FIELD a member name of the value or OFFSET:SIZE in bytes (README, \"Map options\")"
	case errors.Is(err, mapopt.ErrNoField):
		hint = "bpftool btf dump id ID (the map's btf_id in bpftool map show) lists the value's members; nested ones are named a.b"
	case errors.Is(err, mapopt.ErrNoBTF):
		hint = "the map was created without BTF (bpftool map create makes none): give the field's bytes as OFFSET:SIZE, or create the map from a BPF object with BTF"
	case errors.Is(err, mapopt.ErrOutOfRange):
		hint = "check the offset and size against the value's layout"
	case errors.Is(err, mapopt.ErrOverlap):
		hint = "a clock or refresh field cannot be local (local bytes are never sent), two clock fields cannot share a byte, and no field may cover the spin lock"
	case errors.Is(err, mapopt.ErrClockSize):
		hint = "a clock field is a __u32 or __u64 holding the clock's value (name the member, or give OFFSET:4 or OFFSET:8)"
	case errors.Is(err, mapopt.ErrCounterValue):
		hint = "a merge=sum map's value is __u64 counters and nothing else: count in __u64 fields, or replicate the map without merge=sum (last writer wins)"
	case errors.Is(err, mapopt.ErrCounterMemory):
		hint = "every key the map holds, and every key reset within --tombstone-horizon (as many again at most), keeps the contributions of up to origins= nodes in the daemon's memory (README, \"Counters\")"
	case errors.Is(err, mapopt.ErrNeedsScan):
		hint = "add scan=DURATION to this map's options, or set --scan-interval"
	}
	if hint == "" {
		return err
	}
	return &advised{fmt.Sprintf("--map %s; %s", strings.TrimPrefix(err.Error(), "map "), hint), err}
}
