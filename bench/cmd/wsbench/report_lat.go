package main

import (
	"fmt"
	"io"
	"slices"

	"github.com/wspool/wspool/bench/internal/hist"
	"github.com/wspool/wspool/bench/internal/runner"
)

// latencyKey identifies a cell of the latency table.
func latencyKey(r latencyRow) latencyCell {
	return latencyCell{Feeds: r.Feeds, Rate: r.Rate, Size: r.Size, GC: r.GCLoad > 0}
}

// latencyMerged is one client in one cell, its rounds merged.
type latencyMerged struct {
	mode      string
	h         *hist.Hist
	sent      int64
	cpu, wall float64
	gcs       uint32
	alloc     []float64 // bytes allocated per second, per round
}

// mergeLatency groups rows by cell (in the order first seen) and merges each
// client's rounds.
func mergeLatency(rows []latencyRow) ([]latencyCell, map[latencyCell][]*latencyMerged) {
	var cells []latencyCell
	byCell := map[latencyCell][]*latencyMerged{}
	for _, r := range rows {
		k := latencyKey(r)
		ms, ok := byCell[k]
		if !ok {
			cells = append(cells, k)
		}
		i := slices.IndexFunc(ms, func(m *latencyMerged) bool { return m.mode == r.Mode })
		if i < 0 {
			ms = append(ms, &latencyMerged{mode: r.Mode, h: new(hist.Hist)})
			i = len(ms) - 1
			byCell[k] = ms
		}
		m := ms[i]
		if r.Hist != nil {
			m.h.Add(r.Hist)
		}
		m.sent += r.Sent
		m.cpu += r.CPUSeconds
		m.wall += r.Seconds
		m.gcs += r.GCs
		m.alloc = append(m.alloc, r.AllocBytesPerSec)
	}
	return cells, byCell
}

func (r *results) printLatency(w io.Writer) []target {
	if len(r.Latency) == 0 {
		return nil
	}
	fmt.Fprintf(w, "### Latency: wire to handler\n\n")
	fmt.Fprintf(w, "A server process stamps every message with the wall clock just before it writes it (one write per batch of messages due; at most one batch per timer wake-up, about 1 ms); each client reads the clock at its handler's first statement and records the difference into a log-linear histogram per feed (3 %% buckets, no allocation). Only messages stamped in the window count; 'nominal' is rate x window x feeds (a server that fell behind catches up in bursts stamped when written, so 'timed' may exceed it; a message still unread after a grace period is missing from it). wspool reads with default options: the handler on the reader goroutine, or (wspool+queue) behind WithQueue(Queue{Messages: 1024}) on the queue's goroutine. gws is lxzan/gws with its defaults (OnMessage), raw is gorilla's ReadMessage loop, gobwas the bare frame loop. With the GC load the client process also allocates a steady stream of short-lived 1 KiB pointer slices and holds a linked list of 64-byte nodes that every collection marks; %s.\n\n", gcSettingsOf(r.Latency))
	cells, byCell := mergeLatency(r.Latency)
	var rows [][]string
	var targets []target
	for _, c := range cells {
		ms := byCell[c]
		byMode := map[string]*latencyMerged{}
		for _, m := range ms {
			byMode[m.mode] = m
		}
		for _, m := range ms {
			cpu := 0.0
			if m.wall > 0 {
				cpu = 100 * m.cpu / m.wall
			}
			rows = append(rows, []string{c.String(), m.mode, us(m.h.Quantile(0.5)), us(m.h.Quantile(0.9)), us(m.h.Quantile(0.99)),
				us(m.h.Quantile(0.999)), us(m.h.Max()), fmt.Sprintf("%d / %d", m.h.Count(), m.sent), fmt.Sprintf("%.0f%%", cpu),
				fmt.Sprintf("%.0f", median(m.alloc)/(1<<20)), fmt.Sprint(m.gcs)})
		}
		ws := byMode[runner.ModeWspool]
		if ws == nil || ws.h.Count() == 0 {
			continue
		}
		for _, q := range []struct {
			name string
			q    float64
		}{{"p99", 0.99}, {"p99.9", 0.999}} {
			mine := float64(ws.h.Quantile(q.q))
			for _, ref := range []string{runner.ModeGws, runner.ModeRaw} {
				if o := byMode[ref]; o != nil && o.h.Count() > 0 {
					x := mine / float64(o.h.Quantile(q.q))
					targets = append(targets, target{fmt.Sprintf("latency %s <= %s (%s)", q.name, ref, c), fmt.Sprintf("%.2fx", x), status(x <= 1)})
				}
			}
			if o := byMode[runner.ModeFrames]; o != nil && o.h.Count() > 0 {
				x := mine / float64(o.h.Quantile(q.q))
				targets = append(targets, target{fmt.Sprintf("latency %s <= 1.5x the frame loop (%s)", q.name, c), fmt.Sprintf("%.2fx", x), status(x <= 1.5)})
			}
		}
	}
	table(w, []string{"cell", "client", "p50", "p90", "p99", "p99.9", "max", "timed / nominal", "CPU (of a core)", "MB/s allocated", "GCs"}, rows)
	return targets
}

// gcSettingsOf returns the collector settings the latency runs reported.
func gcSettingsOf(rows []latencyRow) string {
	var seen []string
	for _, r := range rows {
		if !slices.Contains(seen, r.GC) {
			seen = append(seen, r.GC)
		}
	}
	if len(seen) == 0 {
		return "collector settings unknown"
	}
	return fmt.Sprint(seen)
}
