package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
)

// TestAdvice checks that each loader error gets the advice for it, names
// the flag to change, and still matches the original error and its
// sentinel. The errors are built as loader builds them; those that need no
// kernel map are loader's own.
func TestAdvice(t *testing.T) {
	_, unknownBackend := loader.NewCapture(loader.CaptureOptions{Backend: "kprobe"})
	_, ringSize := loader.NewCapture(loader.CaptureOptions{RingSize: 3 << 12})
	_, badID := loader.OpenMaps([]string{"id:x"})
	pinned := loader.DefaultPinDir + "/flows"
	mapErr := func(spec string, pinned bool, format string, args ...any) error {
		return &loader.MapError{Spec: spec, Pinned: pinned, Err: fmt.Errorf(format, args...)}
	}
	capturePerm := func(missing ...string) error {
		return fmt.Errorf("load syscall capture: %w", &loader.PermissionError{
			Caps: []string{"CAP_BPF", "CAP_PERFMON"}, Missing: missing,
			Err: fmt.Errorf("program sys_exit_bpf: load program: %w", unix.EPERM)})
	}
	unsupported := fmt.Sprintf("udpmapsync replicates named hash, lru_hash and array maps with keys up to %d B and values up to %d B",
		loader.MaxKeySize, loader.MaxValueSize)

	for _, tc := range []struct {
		name     string
		err      error
		sentinel error
		flag     string // the flag the advice must name; "" for none
		want     string
	}{
		{"no maps pinned", fmt.Errorf("list maps pinned in %s: %w: none is pinned there", loader.DefaultPinDir, loader.ErrNoMaps),
			loader.ErrNoMaps, "--map",
			"list maps pinned in /sys/fs/bpf/udpmapsync: no maps to replicate: none is pinned there; pin the maps to replicate there, or pass --map PATH|name:NAME|id:N for each"},
		{"no pin directory", fmt.Errorf("list maps pinned in %s: %w: the directory does not exist", loader.DefaultPinDir, loader.ErrNoMaps),
			loader.ErrNoMaps, "--map",
			"list maps pinned in /sys/fs/bpf/udpmapsync: no maps to replicate: the directory does not exist; pin the maps to replicate there, or pass --map PATH|name:NAME|id:N for each"},
		{"unknown backend", unknownBackend, loader.ErrUnknownBackend, "--capture",
			`--capture: capture backend "kprobe": unknown capture backend; use auto, fentry or syscall`},
		{"ring size", ringSize, loader.ErrRingSize, "--ring-size",
			"--ring-size: capture ring size 12288: invalid capture ring size: want a power of two of at least 4096 bytes, such as 8MiB"},
		{"fentry refused", fmt.Errorf("load fentry capture: %w", fmt.Errorf("%w: %w", loader.ErrFentryRefused, unix.EPERM)),
			loader.ErrFentryRefused, "--capture syscall",
			"load fentry capture: kernel refused fentry/fexit programs: operation not permitted; run with --capture syscall (it cannot see writes made by BPF programs)"},
		{"capture without a capability", capturePerm("CAP_PERFMON"), loader.ErrPermission, "",
			"load syscall capture: program sys_exit_bpf: load program: operation not permitted: needs CAP_BPF and CAP_PERFMON; this process lacks CAP_PERFMON;" +
				" run udpmapsync as root or grant it CAP_PERFMON (deploy/systemd/udpmapsync.service and deploy/kubernetes/daemonset.yaml grant what it needs)"},
		{"capture without capabilities, auto", fmt.Errorf("capture: fentry: %v; syscall: %w", capturePerm("CAP_BPF", "CAP_PERFMON"), capturePerm("CAP_BPF", "CAP_PERFMON")),
			loader.ErrPermission, "", "run udpmapsync as root or grant it CAP_BPF and CAP_PERFMON ("},
		{"capture refused with the capabilities", capturePerm(), loader.ErrPermission, "",
			"although this process holds CAP_BPF and CAP_PERFMON (they count only in the initial user namespace; lockdown or a security module may refuse too);" +
				" run udpmapsync in the host's user namespace"},
		{"map by name without CAP_SYS_ADMIN", &loader.MapError{Spec: "name:flows", Err: &loader.PermissionError{
			Caps: []string{"CAP_SYS_ADMIN"}, Missing: []string{"CAP_SYS_ADMIN"}, Err: fmt.Errorf("list maps: %w", unix.EPERM)}},
			loader.ErrPermission, "--map",
			"--map name:flows: list maps: operation not permitted: needs CAP_SYS_ADMIN, which this process lacks;" +
				" finding a map by name or id needs CAP_SYS_ADMIN: run as root or grant it, or give the map's pinned path (--map PATH)"},
		{"pin without access", &loader.MapError{Spec: pinned, Pinned: true, Err: &loader.PermissionError{
			Err: fmt.Errorf("open pinned object: %w", unix.EACCES)}},
			loader.ErrPermission, "--map",
			"pinned map /sys/fs/bpf/udpmapsync/flows (no --map given): open pinned object: permission denied" +
				" (needs no capability: the file's permissions or a security module refused it); run udpmapsync as root, or give its user access to the file"},
		{"bad spec", badID, loader.ErrBadSpec, "--map",
			`--map id:x: malformed map spec: id "x" is not a decimal number; give a pinned path, name:NAME (at most 15 characters) or id:N (--map PATH|name:NAME|id:N)`},
		{"no map by that name", mapErr("name:flows", false, "%w: no map is named flows", loader.ErrMapNotFound), loader.ErrMapNotFound, "--map",
			"--map name:flows: no such map: no map is named flows; bpftool map show lists the maps with their names and ids"},
		{"no map by that id", mapErr("id:7", false, "%w: no map has id 7", loader.ErrMapNotFound), loader.ErrMapNotFound, "--map",
			"--map id:7: no such map: no map has id 7; bpftool map show lists the maps with their names and ids"},
		{"no map at that path", mapErr("/sys/fs/bpf/x", false, "%w: nothing is pinned at this path", loader.ErrMapNotFound), loader.ErrMapNotFound, "--map",
			"--map /sys/fs/bpf/x: no such map: nothing is pinned at this path; give the path of a map pinned on bpffs, or the map as name:NAME or id:N"},
		{"ambiguous name", mapErr("name:flows", false, "%w: 2 maps are named flows (ids 5, 6)", loader.ErrAmbiguousName), loader.ErrAmbiguousName, "--map",
			"--map name:flows: ambiguous map name: 2 maps are named flows (ids 5, 6); give the map as its pinned path or as id:N (bpftool map show lists the ids)"},
		{"unsupported map", mapErr("id:5", false, "%w: key size 513 B is over the 512 B limit", loader.ErrUnsupportedMap), loader.ErrUnsupportedMap, "--map",
			"--map id:5: map cannot be replicated: key size 513 B is over the 512 B limit; " + unsupported + "; leave this --map out"},
		{"unsupported pinned map", mapErr(pinned, true, "%w: type DevMap is not one of hash, lru_hash, array, percpu_hash, lru_percpu_hash, percpu_array and lpm_trie", loader.ErrUnsupportedMap), loader.ErrUnsupportedMap, "--map",
			"pinned map /sys/fs/bpf/udpmapsync/flows (no --map given): map cannot be replicated: type DevMap is not one of hash, lru_hash, array, percpu_hash, lru_percpu_hash, percpu_array and lpm_trie; " +
				unsupported + "; unpin it from /sys/fs/bpf/udpmapsync, or pass --map PATH|name:NAME|id:N for each map to replicate"},
		{"map given twice", mapErr("id:5", false, "%w: flows (id 5) is also given as /sys/fs/bpf/flows", loader.ErrDuplicateMap), loader.ErrDuplicateMap, "--map",
			"--map id:5: duplicate map: flows (id 5) is also given as /sys/fs/bpf/flows; give each map once"},
		{"map pinned twice", mapErr(pinned, true, "%w: flows (id 5) is also pinned at %s/a", loader.ErrDuplicateMap, loader.DefaultPinDir), loader.ErrDuplicateMap, "--map",
			"pinned map /sys/fs/bpf/udpmapsync/flows (no --map given): duplicate map: flows (id 5) is also pinned at /sys/fs/bpf/udpmapsync/a;" +
				" remove one of its pins, or pass --map PATH|name:NAME|id:N for each map to replicate"},
		{"one name twice", mapErr("id:6", false, "%w: this map (id 6) and map 5, given as id:5, are both named flows", loader.ErrDuplicateName), loader.ErrDuplicateName, "--map",
			"--map id:6: duplicate map name: this map (id 6) and map 5, given as id:5, are both named flows; nodes match maps by name: rename one of the maps, or replicate only one"},
		{"one name pinned twice", mapErr(pinned, true, "%w: this map (id 6) and map 5, pinned at %s/a, are both named flows", loader.ErrDuplicateName, loader.DefaultPinDir),
			loader.ErrDuplicateName, "--map",
			"nodes match maps by name: rename one of the maps, or replicate only one (unpin it from /sys/fs/bpf/udpmapsync, or pass --map PATH|name:NAME|id:N for each map to replicate)"},
		{"other map error", mapErr("id:5", false, "map info: %w", unix.EIO), unix.EIO, "--map",
			"--map id:5: map info: input/output error"},
		{"wrapped map error", fmt.Errorf("open maps: %w", mapErr("id:7", false, "%w: no map has id 7", loader.ErrMapNotFound)), loader.ErrMapNotFound, "--map",
			"--map id:7: open maps: open map id:7: no such map: no map has id 7; bpftool map show lists the maps with their names and ids"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.err == nil {
				t.Fatal("no error to advise on")
			}
			if !errors.Is(tc.err, tc.sentinel) {
				t.Fatalf("test error %v does not match %v", tc.err, tc.sentinel)
			}
			got := advice(tc.err)
			if !strings.Contains(got.Error(), tc.want) {
				t.Errorf("advice:\n got %q\nwant %q in it", got, tc.want)
			}
			if !strings.Contains(got.Error(), tc.flag) {
				t.Errorf("advice %q does not name %s", got, tc.flag)
			}
			if !errors.Is(got, tc.err) || !errors.Is(got, tc.sentinel) {
				t.Errorf("advice %v no longer matches the original error or %v", got, tc.sentinel)
			}
			var me *loader.MapError
			if errors.As(tc.err, &me) && (!errors.As(got, &me) || me == nil) {
				t.Errorf("advice %v hides the MapError", got)
			}
		})
	}
}

func TestAdvicePassesThrough(t *testing.T) {
	if advice(nil) != nil {
		t.Error("advice(nil) is not nil")
	}
	for _, err := range []error{
		errors.New("capture: no maps to watch"),
		fmt.Errorf("capture: kernel without BTF (CONFIG_DEBUG_INFO_BTF): %w", unix.ENOENT),
		fmt.Errorf("load syscall capture: %w", unix.EPERM), // EPERM alone: loader found no privilege to name
	} {
		if got := advice(err); got != err {
			t.Errorf("advice(%v) = %v, want it unchanged", err, got)
		}
	}
}

// Each kind of bad map option gets advice that names --map, the map and
// the option, and still matches its sentinel.
func TestOptionAdvice(t *testing.T) {
	for _, tc := range []struct {
		spec     string
		sentinel error
		want     string
	}{
		{"/sys/fs/bpf/ct,speed=1s", mapopt.ErrUnknownOption, "the options are scan=DURATION"},
		{"/sys/fs/bpf/ct,local=lifetime", mapopt.ErrNoBTF, "give the field's bytes as OFFSET:SIZE"},
		{"/sys/fs/bpf/ct,local=60:4", mapopt.ErrOutOfRange, "check the offset and size"},
		{"/sys/fs/bpf/ct,clock=0:2:mono-s", mapopt.ErrClockSize, "a clock field is a __u32 or __u64"},
		{"/sys/fs/bpf/ct,clock=0:4:mono-s,local=2:4", mapopt.ErrOverlap, "two clock fields cannot share a byte"},
		{"/sys/fs/bpf/ct,refresh=0:4:30s", mapopt.ErrNeedsScan, "add scan=DURATION to this map's options, or set --scan-interval"},
	} {
		_, specs, err := splitSpecs([]string{tc.spec})
		if err == nil {
			_, err = mapopt.Resolve(specs[0].Map, specs[0].Options, 0, mapopt.Layout{ValueSize: 16})
			err = optionAdvice(err)
		}
		if !errors.Is(err, tc.sentinel) || !strings.HasPrefix(err.Error(), "--map /sys/fs/bpf/ct") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want %v with %q", tc.spec, err, tc.sentinel, tc.want)
		}
	}
	if _, _, err := splitSpecs([]string{"/sys/fs/bpf/ct,scan"}); !errors.Is(err, mapopt.ErrBadValue) || !strings.Contains(err.Error(), "option scan") {
		t.Errorf("a bare option: %v", err)
	}
}

// --config adds its maps after those of --map, with their options.
func TestConfigFile(t *testing.T) {
	path := t.TempDir() + "/maps.yaml"
	if err := os.WriteFile(path, []byte("maps:\n  - map: /sys/fs/bpf/ct\n    scan: 1s\n    local: [8:4]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	paths, specs, err := mapSpecs([]string{"name:other,scan=2s"}, path)
	if err != nil || len(paths) != 2 || paths[0] != "name:other" || paths[1] != "/sys/fs/bpf/ct" ||
		len(specs[1].Options) != 2 || specs[1].Options[1] != (mapopt.Option{Key: "local", Value: "8:4"}) {
		t.Errorf("got %v %v %v", paths, specs, err)
	}
	if err := os.WriteFile(path, []byte("maps:\n  - map: x\n    scna: 1s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := mapSpecs(nil, path); !errors.Is(err, mapopt.ErrConfig) || !strings.HasPrefix(err.Error(), "--config "+path) {
		t.Errorf("a misspelt key: %v", err)
	}
}
