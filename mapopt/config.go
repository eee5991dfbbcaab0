package mapopt

import (
	"errors"
	"fmt"
	"strconv"

	"sigs.k8s.io/yaml"
)

// ErrConfig is a configuration file that cannot be read as one: bad YAML,
// an unknown key, a map without its spec.
var ErrConfig = errors.New("bad configuration file")

// configFile is the configuration file's layout, in YAML, the form
// Kubernetes operators write:
//
//	maps:
//	  - map: /sys/fs/bpf/ct          # as --map takes it: PATH, name:NAME or id:N
//	    scan: 1s
//	    vanished: keep
//	    clock: [lifetime:mono-s]
//	    refresh: [lifetime:30s]
//	    local: [ifindex, nh.mac]
//	  - map: name:ratelimit
//	    merge: sum                   # counters: every node holds the cluster-wide total
//	    origins: 3
type configFile struct {
	Maps []struct {
		Map      string   `json:"map"`
		Scan     string   `json:"scan,omitempty"`
		Vanished string   `json:"vanished,omitempty"`
		Refresh  []string `json:"refresh,omitempty"`
		Clock    []string `json:"clock,omitempty"`
		Local    []string `json:"local,omitempty"`
		Merge    string   `json:"merge,omitempty"`
		Origins  int      `json:"origins,omitempty"`
	} `json:"maps"`
}

// ParseConfig reads a configuration file's maps with their options, as
// --map would give them; [Resolve] checks the options. Unknown keys are
// refused, so a misspelt option does not pass unnoticed.
func ParseConfig(data []byte) ([]Spec, error) {
	var f configFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	specs := make([]Spec, 0, len(f.Maps))
	for i, m := range f.Maps {
		if m.Map == "" {
			return nil, fmt.Errorf("%w: entry %d of maps has no map: (a pinned path, name:NAME or id:N)", ErrConfig, i+1)
		}
		sp := Spec{Map: m.Map}
		add := func(key string, values ...string) {
			for _, v := range values {
				if v != "" {
					sp.Options = append(sp.Options, Option{Key: key, Value: v})
				}
			}
		}
		add(keyScan, m.Scan)
		add(keyVanished, m.Vanished)
		add(keyRefresh, m.Refresh...)
		add(keyClock, m.Clock...)
		add(keyLocal, m.Local...)
		add(keyMerge, m.Merge)
		if m.Origins != 0 {
			add(keyOrigins, strconv.Itoa(m.Origins))
		}
		specs = append(specs, sp)
	}
	return specs, nil
}
