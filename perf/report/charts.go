package report

import (
	"fmt"
	"image/color"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// throughputChart draws replicated changes/s per system, a bar per node
// count, with the raw batch-write rate as a dashed line.
func (r *Results) throughputChart(path string) error {
	profile := ""
	if len(r.Raw) > 0 {
		profile = r.Raw[0].Profile
	}
	systems := []string{UDPMapSync, UDPMapSyncSealed, GRPCStream, GRPCUnary, Conntrackd}
	p := plot.New()
	p.Title.Text = "Replicated changes/s until converged (" + profile + ")"
	p.Y.Label.Text = "changes/s"
	p.Y.Min = 0
	w := vg.Points(28)
	var counts []int // the cluster sizes measured at full speed: 2, 3 and 4 by default
	for _, x := range r.Runs {
		if x.Profile == profile && x.Rate == 0 && x.Skipped == "" && !slices.Contains(counts, x.Nodes) {
			counts = append(counts, x.Nodes)
		}
	}
	slices.Sort(counts)
	for i, nodes := range counts {
		vals := make(plotter.Values, len(systems))
		for j, s := range systems {
			if x := r.Find(s, nodes, profile, 0); x != nil {
				vals[j] = x.PerSec
			} else if s == Conntrackd && r.Conntrackd != nil && r.Conntrackd.Nodes == nodes {
				vals[j] = r.Conntrackd.ChangesPerSec
			}
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return fmt.Errorf("throughput chart: %w", err)
		}
		bars.Color = plotutil.Color(i)
		bars.LineStyle.Width = 0
		bars.Offset = vg.Length(2*i-len(counts)+1) * w / 2
		p.Add(bars)
		p.Legend.Add(fmt.Sprintf("%d nodes", nodes), bars)
	}
	if raw := r.RawRate(profile); raw > 0 {
		line := plotter.NewFunction(func(float64) float64 { return raw })
		line.Color = color.Gray{Y: 80}
		line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		line.XMin, line.XMax = -0.5, float64(len(systems))-0.5
		p.Add(line)
		p.Legend.Add("raw batch writes, no replication", line)
		p.Y.Max = raw * 1.1
	}
	p.NominalX(systems...)
	p.Legend.Top = true
	if err := p.Save(8*vg.Inch, 4.5*vg.Inch, path); err != nil {
		return fmt.Errorf("throughput chart: %w", err)
	}
	return nil
}

// latencyChart draws the latency CDF of every fixed-rate run, on a log
// time axis.
func (r *Results) latencyChart(path string) error {
	p := plot.New()
	p.Title.Text = "Write-to-apply latency, CDF"
	p.X.Label.Text = "latency (µs)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Label.Text = "fraction of changes"
	p.Y.Min, p.Y.Max = 0, 1
	p.Add(plotter.NewGrid())
	i := 0
	for _, x := range r.Runs {
		if x.Latency == nil || x.Skipped != "" {
			continue
		}
		xys := make(plotter.XYs, 0, len(x.Latency.CDF))
		for _, pt := range x.Latency.CDF {
			xys = append(xys, plotter.XY{X: max(pt[0], 1), Y: pt[1]})
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("latency chart: %w", err)
		}
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(x.Nodes - 2)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s, %d nodes, %s/s", x.System, x.Nodes, si(float64(x.Rate))), l)
		i++
	}
	if i == 0 {
		p.Add(plotter.NewFunction(func(float64) float64 { return 0 }))
		p.X.Scale = plot.LinearScale{}
		p.X.Tick.Marker = plot.DefaultTicks{}
		p.Title.Text += " (no latency measured)"
	}
	p.Legend.Left = false
	p.Legend.Top = false
	p.Legend.YOffs = vg.Points(20)
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	if err := p.Save(9*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("latency chart: %w", err)
	}
	return nil
}
