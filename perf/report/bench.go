package report

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
)

// Benchmark is one line of `go test -bench -benchmem` output.
type Benchmark struct {
	Package, Name string
	Iterations    int
	NsPerOp       float64
	BytesPerOp    float64
	AllocsPerOp   float64
	// Metrics are the other figures, "value unit" (e.g. "68.2 ns/change").
	Metrics []string `json:",omitempty"`
}

// ParseBench reads `go test -bench . -benchmem` output of one or more
// packages.
func ParseBench(out []byte) []Benchmark {
	var bs []Benchmark
	pkg := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(p, "github.com/udpmapsync/udpmapsync/")
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		n, err := strconv.Atoi(f[1])
		if err != nil {
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			name = name[:i] // the GOMAXPROCS suffix
		}
		b := Benchmark{Package: pkg, Name: name, Iterations: n, AllocsPerOp: -1}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			switch f[i+1] {
			case "ns/op":
				b.NsPerOp = v
			case "B/op":
				b.BytesPerOp = v
			case "allocs/op":
				b.AllocsPerOp = v
			default:
				b.Metrics = append(b.Metrics, f[i]+" "+f[i+1])
			}
		}
		bs = append(bs, b)
	}
	return bs
}
