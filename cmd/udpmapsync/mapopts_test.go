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
		paths, specs, err := mapSpecs([]string{spec}, "")
		if err != nil {
			t.Fatal(err)
		}
		maps, err := loader.OpenMaps(paths)
		if err != nil {
			t.Fatal(err)
		}
		_, err = resolveOptions(maps, specs, time.Duration(0))
		maps[0].Close()
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", spec, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: error %v, want one saying %q", spec, err, want)
		}
	}
}
