package main

import (
	"fmt"
	"io"
	"slices"

	"github.com/wspool/wspool/bench/internal/runner"
)

// clientOrder is the order of clients in tables; wspool is compared with
// every other.
var clientOrder = []string{runner.ModeWspool, runner.ModeRaw, runner.ModeGws, runner.ModeFrames}

type tpKey struct{ feeds, size int }

// tpGroup is one (feeds, size) configuration's runs, by client and round.
type tpGroup struct {
	key   tpKey
	runs  map[string]map[int]tpRow // mode -> round -> row
	modes []string                 // clients present, in clientOrder
}

func groupThroughput(rows []tpRow) []*tpGroup {
	var out []*tpGroup
	byKey := map[tpKey]*tpGroup{}
	for _, t := range rows {
		k := tpKey{t.Feeds, t.Size}
		g := byKey[k]
		if g == nil {
			g = &tpGroup{key: k, runs: map[string]map[int]tpRow{}}
			byKey[k] = g
			out = append(out, g)
		}
		if g.runs[t.Mode] == nil {
			g.runs[t.Mode] = map[int]tpRow{}
		}
		g.runs[t.Mode][t.Round] = t
	}
	for _, g := range out {
		for _, m := range clientOrder {
			if g.runs[m] != nil {
				g.modes = append(g.modes, m)
			}
		}
	}
	return out
}

// med is the median of f over a client's rounds.
func (g *tpGroup) med(mode string, f func(tpRow) float64) float64 {
	var xs []float64
	for _, r := range g.runs[mode] {
		xs = append(xs, f(r))
	}
	return median(xs)
}

// ratio is the median over rounds of f(wspool)/f(other) within the same
// round (same process, minutes apart at most), with its range.
func (g *tpGroup) ratio(other string, f func(tpRow) float64) (med, lo, hi float64, ok bool) {
	var xs []float64
	for round, w := range g.runs[runner.ModeWspool] {
		o, found := g.runs[other][round]
		if found && f(o) > 0 {
			xs = append(xs, f(w)/f(o))
		}
	}
	if len(xs) == 0 {
		return 0, 0, 0, false
	}
	return median(xs), slices.Min(xs), slices.Max(xs), true
}

func (g *tpGroup) ratioCell(other string, f func(tpRow) float64) string {
	m, lo, hi, ok := g.ratio(other, f)
	if !ok || hi > 1000 {
		return "-" // nothing to compare with (e.g. no allocation at all)
	}
	return fmt.Sprintf("%.2f [%.2f-%.2f]", m, lo, hi)
}

func (g *tpGroup) rounds() int {
	n := 0
	for _, m := range g.modes {
		n = max(n, len(g.runs[m]))
	}
	return n
}

func msgsPerSec(r tpRow) float64 { return r.MsgsPerSec }
func cpuPerM(r tpRow) float64    { return r.CPUPerMillion }
func allocsPer(r tpRow) float64  { return r.AllocsPerMsg }
func bytesPer(r tpRow) float64   { return r.BytesPerMsg }

// others are the clients wspool is compared with in a group.
func (g *tpGroup) others() []string {
	return slices.DeleteFunc(slices.Clone(g.modes), func(m string) bool { return m == runner.ModeWspool })
}

func (r *results) printThroughput(w io.Writer) []target {
	groups := groupThroughput(r.Throughput)
	if len(groups) == 0 {
		return nil
	}
	modes := groups[0].modes
	var targets []target
	fmt.Fprintf(w, "### Throughput: firehose server process -> one client process, no-op handler\n\n")
	fmt.Fprintf(w, "Clients: wspool (Client for one feed, Pool for 16), raw = gorilla ReadMessage loop, gws = lxzan/gws ReadLoop with its defaults, gobwas = a bare gobwas/ws frame loop (header, payload into one reused buffer, 16 KiB bufio; nothing else). Medians over rounds; ratios are medians of per-round wspool/other (min-max in brackets).\n\n")
	header := []string{"feeds", "size"}
	for _, m := range modes {
		header = append(header, m+" msgs/s")
	}
	var rows [][]string
	for _, g := range groups {
		row := []string{fmt.Sprint(g.key.feeds), fmt.Sprintf("%d B", g.key.size)}
		for _, m := range modes {
			row = append(row, rate(g.med(m, msgsPerSec)))
		}
		for _, o := range g.others() {
			row = append(row, g.ratioCell(o, msgsPerSec))
		}
		rows = append(rows, append(row, fmt.Sprint(g.rounds())))
	}
	for _, o := range groups[0].others() {
		header = append(header, "wspool/"+o)
	}
	table(w, append(header, "rounds"), rows)

	fmt.Fprintf(w, "CPU is the client process's user+sys seconds per million messages; allocations are the client process's heap allocations per message. The CPU ratio is wspool's CPU over the other's (lower is better for wspool).\n\n")
	header = []string{"feeds", "size"}
	for _, m := range modes {
		header = append(header, "CPU s/M "+m)
	}
	for _, o := range groups[0].others() {
		header = append(header, "CPU wspool/"+o)
	}
	for _, m := range modes {
		header = append(header, "allocs/msg "+m)
	}
	for _, m := range modes {
		header = append(header, "B/msg "+m)
	}
	rows = nil
	for _, g := range groups {
		row := []string{fmt.Sprint(g.key.feeds), fmt.Sprintf("%d B", g.key.size)}
		for _, m := range modes {
			row = append(row, fmt.Sprintf("%.3f", g.med(m, cpuPerM)))
		}
		for _, o := range g.others() {
			row = append(row, g.ratioCell(o, cpuPerM))
		}
		for _, m := range modes {
			row = append(row, fmt.Sprintf("%.3f", g.med(m, allocsPer)))
		}
		for _, m := range modes {
			row = append(row, fmt.Sprintf("%.0f", g.med(m, bytesPer)))
		}
		rows = append(rows, row)
	}
	table(w, header, rows)

	worst := 0.0
	for _, g := range groups {
		k := fmt.Sprintf("%d feeds, %d B", g.key.feeds, g.key.size)
		if m, _, _, ok := g.ratio(runner.ModeRaw, msgsPerSec); ok {
			targets = append(targets, target{"throughput >= 0.95x raw gorilla (" + k + ")", fmt.Sprintf("%.2fx", m), status(m >= 0.95)})
		}
		if m, _, _, ok := g.ratio(runner.ModeGws, msgsPerSec); ok {
			targets = append(targets, target{"throughput >= gws (" + k + ")", fmt.Sprintf("%.2fx", m), status(m >= 1)})
		}
		if m, _, _, ok := g.ratio(runner.ModeFrames, cpuPerM); ok {
			targets = append(targets, target{"CPU per message <= 1.5x the gobwas frame loop (" + k + ")", fmt.Sprintf("%.2fx", m), status(m <= 1.5)})
		}
		worst = max(worst, g.med(runner.ModeWspool, allocsPer))
	}
	// The harness itself allocates a little during a window (MemStats,
	// timers, the runtime): 1% of slack over one allocation per message.
	targets = append(targets, target{"<= 1 heap alloc per delivered message (wspool, worst config; 1% slack for the harness)",
		fmt.Sprintf("%.3f", worst), status(worst <= 1.01)})
	return targets
}

func mib(b float64) string { return fmt.Sprintf("%.1f", b/(1<<20)) }

func (r *results) printBig(w io.Writer) []target {
	groups := groupThroughput(r.Big)
	if len(groups) == 0 {
		return nil
	}
	g := groups[0]
	size := g.key.size
	fmt.Fprintf(w, "### One feed of %s MiB messages\n\n", mib(float64(size)))
	fmt.Fprintf(w, "A stream of %d-byte text messages from the firehose server, one feed, each client in turn, every run after two GCs (so no buffer pool carries over). Per message: wall time (1/rate), client CPU, heap bytes allocated. First message: from before the dial until it was delivered (the server builds its frame after the handshake, the same for every client), and the bytes allocated meanwhile. Medians over rounds; ratios are medians of per-round wspool/other.\n\n", size)
	perMsgMs := func(r tpRow) float64 {
		if r.MsgsPerSec == 0 {
			return 0
		}
		return 1e3 / r.MsgsPerSec
	}
	cpuMs := func(r tpRow) float64 { return r.CPUPerMillion / 1e3 }
	firstS := func(r tpRow) float64 { return r.FirstSeconds }
	firstB := func(r tpRow) float64 { return float64(r.FirstBytes) }
	var rows [][]string
	for _, m := range g.modes {
		row := []string{m,
			fmt.Sprintf("%.2f", g.med(m, perMsgMs)), fmt.Sprintf("%.2f", g.med(m, cpuMs)),
			mib(g.med(m, bytesPer)), fmt.Sprintf("%.1f", g.med(m, allocsPer)),
			fmt.Sprintf("%.0f", g.med(m, firstS)*1e3), mib(g.med(m, firstB)),
		}
		if m == runner.ModeWspool {
			row = append(row, "", "", "")
		} else {
			row = append(row, g.ratioCell(m, perMsgMs), g.ratioCell(m, bytesPer), g.ratioCell(m, firstB))
		}
		rows = append(rows, append(row, fmt.Sprint(len(g.runs[m]))))
	}
	table(w, []string{"client", "ms/msg", "CPU ms/msg", "MiB alloc/msg", "allocs/msg", "first msg ms", "first msg MiB alloc",
		"wspool/this time", "wspool/this alloc", "wspool/this first alloc", "rounds"}, rows)
	var targets []target
	k := fmt.Sprintf("%s MiB message", mib(float64(size)))
	if m, _, _, ok := g.ratio(runner.ModeRaw, perMsgMs); ok {
		targets = append(targets, target{k + ": time <= 1.0x gorilla ReadMessage (stream)", fmt.Sprintf("%.2fx", m), status(m <= 1)})
	}
	if m, _, _, ok := g.ratio(runner.ModeRaw, bytesPer); ok {
		targets = append(targets, target{k + ": bytes allocated <= 1.0x gorilla ReadMessage (stream)", fmt.Sprintf("%.2fx", m), status(m <= 1)})
	}
	if m, _, _, ok := g.ratio(runner.ModeRaw, firstB); ok {
		targets = append(targets, target{k + ": bytes allocated <= 1.0x gorilla ReadMessage (first message, dial included)", fmt.Sprintf("%.2fx", m), status(m <= 1)})
	}
	return targets
}
