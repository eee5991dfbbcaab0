package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/loader"
	"github.com/udpmapsync/udpmapsync/mapopt"
)

// mapSpecs are the maps of --map, then those of the --config file, as
// the loader's specs and with their options.
func mapSpecs(values []string, config string) ([]string, []mapopt.Spec, error) {
	paths, specs, err := splitSpecs(values)
	if err != nil || config == "" {
		return paths, specs, err
	}
	data, err := os.ReadFile(config)
	if err != nil {
		return nil, nil, fmt.Errorf("--config: %w", err)
	}
	more, err := mapopt.ParseConfig(data)
	if err != nil {
		return nil, nil, fmt.Errorf("--config %s: %w (see README, \"Map options\")", config, err)
	}
	for _, sp := range more {
		paths, specs = append(paths, sp.Map), append(specs, sp)
	}
	return paths, specs, nil
}

// splitSpecs splits each --map value, SPEC,option=value,..., into the
// map spec the loader opens and its options.
func splitSpecs(values []string) ([]string, []mapopt.Spec, error) {
	specs := make([]mapopt.Spec, len(values))
	paths := make([]string, len(values))
	for i, v := range values {
		sp, err := mapopt.ParseSpec(v)
		if err != nil {
			return nil, nil, optionAdvice(err)
		}
		specs[i], paths[i] = sp, sp.Map
	}
	return paths, specs, nil
}

// resolveOptions checks each opened map's options against its value
// layout; specs[i] are the options of maps[i] (none for the maps found
// pinned), scan the --scan-interval every map has unless it sets its own.
// A map whose value holds a bpf_spin_lock is set to take it.
func resolveOptions(maps []*loader.Map, specs []mapopt.Spec, scan time.Duration) ([]mapopt.Options, error) {
	out := make([]mapopt.Options, len(maps))
	for i, m := range maps {
		name, opts := m.Name, []mapopt.Option(nil)
		if i < len(specs) {
			name, opts = specs[i].Map, specs[i].Options
		}
		vt, err := m.ValueType()
		if err != nil {
			return nil, fmt.Errorf("--map %s: %w", name, err)
		}
		o, err := mapopt.Resolve(name, opts, scan, mapopt.Layout{ValueSize: int(m.ValueSize), Value: vt})
		if err != nil {
			return nil, optionAdvice(err)
		}
		if o.Vanished == mapopt.Delete && m.Type == ebpf.Array {
			return nil, fmt.Errorf("--map %s: vanished=delete on an array map, whose entries never vanish: leave it out", name)
		}
		if o.Lock != nil {
			m.UseSpinLock()
		}
		out[i] = o
	}
	return out, nil
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
			"and local=FIELD, FIELD a member name of the value or OFFSET:SIZE in bytes (README, \"Map options\")"
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
	case errors.Is(err, mapopt.ErrNeedsScan):
		hint = "add scan=DURATION to this map's options, or set --scan-interval"
	}
	if hint == "" {
		return err
	}
	return &advised{fmt.Sprintf("--map %s; %s", strings.TrimPrefix(err.Error(), "map "), hint), err}
}
