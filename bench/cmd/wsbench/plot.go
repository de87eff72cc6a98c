package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// plotName is the file name of a cell's plot; ext (svg, png, pdf) picks
// the format.
func plotName(c latencyCell, ext string) string {
	gc := ""
	if c.GC {
		gc = "-gc"
	}
	return fmt.Sprintf("latency-%dx%d-%dB%s.%s", c.Feeds, c.Rate, c.Size, gc, ext)
}

// writePlots writes one plot per latency cell into dir: every client's
// latency (log scale) against the percentile, spread as HdrHistogram plots
// it (the distance to 100 %% on a log scale), so that the tail is as wide as
// the median.
func writePlots(dir, ext string, rows []latencyRow) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cells, byCell := mergeLatency(rows)
	for _, c := range cells {
		if err := plotCell(filepath.Join(dir, plotName(c, ext)), c, byCell[c]); err != nil {
			return err
		}
	}
	return nil
}

func plotCell(path string, c latencyCell, ms []*latencyMerged) error {
	p := plot.New()
	p.Title.Text = "wire to handler latency: " + c.String()
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (µs, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	// Bottom right: the curves rise to the right, so that corner stays empty.
	p.Legend.Top, p.Legend.Left = false, false
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(-8), vg.Points(8)
	p.Add(plotter.NewGrid())
	xmax := 0.0
	for i, m := range ms {
		n := m.h.Count()
		if n == 0 {
			continue
		}
		// x = -log10(1-q): 0 at the minimum, 1 at p90, 2 at p99, ...; the
		// last point is the maximum, at 1-q = 1/n.
		last := math.Log10(float64(n))
		xmax = max(xmax, last)
		var xys plotter.XYs
		for x := 0.0; x < last; x += 0.02 {
			q := 1 - math.Pow(10, -x)
			xys = append(xys, plotter.XY{X: x, Y: max(float64(m.h.Quantile(q))/1e3, 0.01)})
		}
		xys = append(xys, plotter.XY{X: last, Y: max(float64(m.h.Max())/1e3, 0.01)})
		l, err := plotter.NewLine(xys)
		if err != nil {
			return err
		}
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(m.mode, l)
	}
	var ticks []plot.Tick
	for k, label := range []string{"", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"} {
		if float64(k) <= xmax+0.01 {
			ticks = append(ticks, plot.Tick{Value: float64(k), Label: label})
		}
	}
	ticks = append(ticks, plot.Tick{Value: math.Log10(2), Label: "50%"})
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.X.Min, p.X.Max = 0, xmax
	return p.Save(6*vg.Inch, 3.6*vg.Inch, path)
}
