package main

import (
	"fmt"
	"os"
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
		o, err := mapopt.Resolve(name, opts, scan, mapopt.Layout{ValueSize: int(m.ValueSize), Value: vt, MaxEntries: int(m.MaxEntries)})
		if err != nil {
			return nil, optionAdvice(err)
		}
		if o.Vanished == mapopt.Delete && loader.ArrayType(m.Type) {
			return nil, fmt.Errorf("--map %s: vanished=delete on an array map, whose entries never vanish: leave it out", name)
		}
		if o.Merge == mapopt.Sum && m.Type == ebpf.LPMTrie {
			// The counter program's lookup would find the longest prefix
			// that holds a key's and add a peer's count there.
			return nil, fmt.Errorf("--map %s: merge=sum on an lpm_trie: a trie's lookup finds the longest prefix that holds a key's, "+
				"so counts would land on another key; keep the counters in a hash map, or leave merge=sum out", name)
		}
		if m.CPUs > 0 && (len(o.Clocks) > 0 || len(o.Local) > 0 || len(o.Refresh) > 0 || o.Lock != nil) {
			return nil, fmt.Errorf("--map %s: clock=, local= and refresh= name bytes of a value, and a per-CPU map holds one value per CPU: "+
				"leave them out for this map (scan= and vanished= work)", name)
		}
		if o.Lock != nil {
			m.UseSpinLock()
		}
		out[i] = o
	}
	return out, nil
}
