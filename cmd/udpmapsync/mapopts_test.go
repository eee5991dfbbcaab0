package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/udpmapsync/udpmapsync/loader"
)

// A per-CPU map holds one value per CPU, so the options that name bytes
// of a value are refused for it, with the map and the fix; scanning is
// not.
func TestResolveOptionsPerCPU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for BPF maps")
	}
	em, err := ebpf.NewMap(&ebpf.MapSpec{Name: "pcopts", Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer em.Close()
	info, err := em.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	for opts, want := range map[string]string{
		"scan=1s":                            "",
		"scan=1s,local=0:4":                  "clock=, local= and refresh= name bytes of a value, and a per-CPU map holds one value per CPU",
		"clock=0:8:mono-ns":                  "leave them out for this map (scan= and vanished= work)",
		"scan=1s,refresh=0:8:30s":            "a per-CPU map holds one value per CPU",
		"scan=1s,vanished=delete":            "",
		"scan=1s,clock=0:4:mono-s,local=4:4": "--map id:",
	} {
		spec := fmt.Sprintf("id:%d,%s", id, opts)
		err := resolveSpec(t, spec)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", spec, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: error %v, want one saying %q", spec, err, want)
		}
	}
}

// merge=sum is refused, with the map and the fix, for a value that is not
// a vector of 64-bit counters, for counters that cannot fit and for an
// LPM trie; a per-CPU map of counters takes it.
func TestResolveOptionsSum(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for BPF maps")
	}
	for _, c := range []struct {
		spec ebpf.MapSpec
		opts string
		want string
	}{
		{ebpf.MapSpec{Name: "sumok", Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 64}, "merge=sum,origins=3", ""},
		{ebpf.MapSpec{Name: "sumpcpu", Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 8, MaxEntries: 64}, "merge=sum", ""},
		{ebpf.MapSpec{Name: "sum12", Type: ebpf.Hash, KeySize: 4, ValueSize: 12, MaxEntries: 64}, "merge=sum",
			"option merge=sum: merge=sum needs a value of 64-bit counters: the value is 12 bytes, not a multiple of 8"},
		{ebpf.MapSpec{Name: "sumbig", Type: ebpf.Hash, KeySize: 4, ValueSize: 8, MaxEntries: 1 << 22, Flags: 1}, "merge=sum,origins=64",
			"lower origins= (the most nodes that count a key) or the map's max_entries"},
		// A trie's lookup finds the longest prefix that holds a key's,
		// where the counter program would add a peer's count.
		{ebpf.MapSpec{Name: "sumlpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8, MaxEntries: 64, Flags: 1}, "merge=sum",
			"merge=sum on an lpm_trie"},
	} {
		em, err := ebpf.NewMap(&c.spec)
		if err != nil {
			t.Fatal(err)
		}
		info, err := em.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		spec := fmt.Sprintf("id:%d,%s", id, c.opts)
		err = resolveSpec(t, spec)
		em.Close()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s (%s): %v", spec, c.spec.Name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--map "+spec[:strings.IndexByte(spec, ',')])):
			t.Errorf("%s (%s): error %v, want one naming the map and saying %q", spec, c.spec.Name, err, c.want)
		}
	}
}

// resolveSpec opens the map of one --map value and resolves its options,
// as the daemon does at start-up.
func resolveSpec(t *testing.T, spec string) error {
	t.Helper()
	paths, specs, err := mapSpecs([]string{spec}, "")
	if err != nil {
		t.Fatal(err)
	}
	maps, err := loader.OpenMaps(paths)
	if err != nil {
		t.Fatal(err)
	}
	defer maps[0].Close()
	_, err = resolveOptions(maps, specs, time.Duration(0))
	return err
}
