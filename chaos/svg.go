package chaos

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"sort"
	"strings"
)

// The picture's geometry, in SVG user units.
const (
	svgW      = 1500
	svgLeft   = 80
	svgRight  = 250 // the legend
	faultTop  = 78
	laneH     = 22
	ownTop    = 200
	ownH      = 250
	lagTop    = 490
	lagH      = 150
	svgH      = 790
	plotRight = svgW - svgRight
)

// kindColor gives each fault kind its own color; the lane gives its
// category.
var kindColor = map[string]string{
	FaultKill: "#d62728", FaultTerm: "#ff7f0e", FaultPause: "#9467bd", FaultRolling: "#8c564b",
	FaultScaleOut: "#2ca02c", FaultScaleIn: "#17becf",
	FaultEtcdLeader: "#d62728", FaultEtcdFollower: "#ff7f0e", FaultEtcdQuorum: "#7f0000", FaultEtcdRestart: "#1f77b4",
	FaultEtcdPartition: "#e377c2", FaultRedisLatency: "#bcbd22", FaultRedisCut: "#7f7f7f",
	FaultRedisKill: "#d62728", FaultRedisFailover: "#1f77b4",
}

// keeperColors has no red: red marks shards without an owner.
var keeperColors = []string{"#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f",
	"#bab0ac", "#86bcb6", "#8cd17d", "#499894", "#d4a6c8"}

var lanes = []string{"keeper", "etcd", "network", "redis"}

// WriteSVG draws the run: the faults on four lanes (each bar from injection
// to healing, a black tick when every shard had one owner again), how many
// shards each keeper owned over time (stacked; red where shards had no
// owner, purple where two keepers claimed one), and the probe's unlock lag
// (log scale, the largest per pixel column) against the TTL + 1s bound.
func WriteSVG(out io.Writer, rep RunReport) error {
	w := bufio.NewWriter(out)
	tl := rep.Timeline
	dur := rep.DurationS
	for _, f := range rep.Faults {
		dur = max(dur, f.At+f.HeldS, f.SettledAt)
	}
	dur = math.Max(dur, 1)
	// What was sampled while the run was checked afterwards is not drawn.
	tl.Samples = slices.DeleteFunc(slices.Clone(tl.Samples), func(s OwnSample) bool { return s.At > dur })
	tl.Lags = slices.DeleteFunc(slices.Clone(tl.Lags), func(l LagSample) bool { return l.At > dur })
	x := func(t float64) float64 { return svgLeft + (plotRight-svgLeft)*t/dur }
	p := func(format string, a ...any) { fmt.Fprintf(w, format, a...) }

	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">`+"\n", svgW, svgH, svgW, svgH)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	verdict, vcol := "PASS", "#2ca02c"
	if rep.Violations > 0 {
		verdict, vcol = fmt.Sprintf("FAIL: %d violation(s)", rep.Violations), "#d62728"
	}
	p(`<text x="%d" y="26" font-size="18" font-weight="bold">keeper chaos · seed %d · %d faults of %d kinds over %.0fs · <tspan fill="%s">%s</tspan></text>`+"\n",
		svgLeft, rep.Seed, len(rep.Faults), rep.FaultKinds, rep.DurationS, vcol, html.EscapeString(verdict))
	p(`<text x="%d" y="46" fill="#555">%d shards · session TTL %s · %d enqueued, %d acked, %d expired, %d trimmed · %d accepted and %d refused housekeeping writes</text>`+"\n",
		svgLeft, rep.Shards, rep.Settings.SessionTTL, rep.Messages.Enqueued, rep.Messages.Acked, rep.Messages.Expired,
		rep.Messages.Trimmed, rep.Fencing.Accepted, rep.Fencing.Refused)

	// Time grid over every panel.
	step := tickStep(dur)
	for t := 0.0; t <= dur+1e-9; t += step {
		p(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>`+"\n", x(t), faultTop, x(t), lagTop+lagH)
		p(`<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%.0fs</text>`+"\n", x(t), lagTop+lagH+18, t)
	}

	// Faults: a shaded band across the panels, a bar on its lane, a tick
	// at the moment of one owner per shard again.
	p(`<text x="%d" y="%d" font-weight="bold">faults</text>`+"\n", 10, faultTop-8)
	for i, l := range lanes {
		y := faultTop + i*laneH
		p(`<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", svgLeft, y, plotRight-svgLeft, laneH, []string{"#fafafa", "#f3f3f3"}[i%2])
		p(`<text x="%d" y="%d" text-anchor="end" fill="#333">%s</text>`+"\n", svgLeft-6, y+15, l)
	}
	for _, f := range rep.Faults {
		lane := indexOf(lanes, faultCategory(f.Kind))
		end := f.At + f.HeldS
		x0, x1 := x(f.At), math.Max(x(end), x(f.At)+3)
		p(`<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="#000" opacity="0.04"/>`+"\n", x0, ownTop, x1-x0, lagTop+lagH-ownTop)
		y := faultTop + lane*laneH
		title := fmt.Sprintf("%s %s at %.1fs: held %.2fs, one owner after %.2fs (from %s)", f.Kind, f.Target, f.At, f.HeldS, f.SettleS, f.SettleFrom)
		p(`<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"><title>%s</title></rect>`+"\n", x0, y+3, x1-x0, laneH-6, kindColor[f.Kind], html.EscapeString(title))
		settleAt := f.SettledAt
		p(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black" stroke-width="2"/>`+"\n", x(settleAt), y+1, x(settleAt), y+laneH-1)
		if f.Error != "" || f.Late {
			p(`<text x="%.1f" y="%d" fill="#d62728" font-weight="bold" font-size="15">!<title>%s</title></text>`+"\n", x1+2, y+16,
				html.EscapeString("one owner per shard came back late: "+title))
		}
	}

	// Ownership.
	top := float64(tl.Shards) * 1.2
	if top == 0 {
		top = 1
	}
	for _, s := range tl.Samples {
		sum := 0
		for _, n := range s.Owned {
			sum += n
		}
		top = math.Max(top, float64(sum)*1.05)
	}
	yo := func(v float64) float64 { return ownTop + ownH - ownH*v/top }
	p(`<text x="%d" y="%d" font-weight="bold">shards owned per keeper</text>`+"\n", 10, ownTop-8)
	p(`<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#ccc"/>`+"\n", svgLeft, ownTop, plotRight-svgLeft, ownH)
	drawOwnership(p, tl, x, yo)
	p(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#333" stroke-dasharray="6,4"/>`+"\n", svgLeft, yo(float64(tl.Shards)), plotRight, yo(float64(tl.Shards)))
	p(`<text x="%d" y="%.1f" text-anchor="end" fill="#333">%d</text>`+"\n", svgLeft-6, yo(float64(tl.Shards))+4, tl.Shards)
	p(`<text x="%d" y="%.1f" text-anchor="end" fill="#333">0</text>`+"\n", svgLeft-6, yo(0)+4)

	// Lag, log scale.
	bound := rep.SettleMaxS * 1000
	lo, hi := 1.0, math.Max(bound*2, 100)
	for _, l := range tl.Lags {
		hi = math.Max(hi, l.LagMs*1.3)
	}
	yl := func(ms float64) float64 {
		ms = math.Min(math.Max(ms, lo), hi)
		return lagTop + lagH - lagH*math.Log10(ms/lo)/math.Log10(hi/lo)
	}
	p(`<text x="%d" y="%d" font-weight="bold">unlock lag (probe, largest per column)</text>`+"\n", 10, lagTop-8)
	p(`<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#ccc"/>`+"\n", svgLeft, lagTop, plotRight-svgLeft, lagH)
	for v := lo; v <= hi; v *= 10 {
		p(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/>`+"\n", svgLeft, yl(v), plotRight, yl(v))
		p(`<text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>`+"\n", svgLeft-6, yl(v)+4, fmtMs(v))
	}
	drawLag(p, tl.Lags, x, yl)
	p(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#d62728" stroke-dasharray="6,4"/>`+"\n", svgLeft, yl(bound), plotRight, yl(bound))
	p(`<text x="%d" y="%.1f" fill="#d62728" text-anchor="end">TTL + 1s</text>`+"\n", plotRight-4, yl(bound)-4)

	// Legend: the kinds seen, with counts and settle figures.
	lx, ly := plotRight+16, faultTop
	p(`<text x="%d" y="%d" font-weight="bold">fault kinds (n, settle p50/max)</text>`+"\n", lx, ly-8)
	kinds := make([]string, 0, len(rep.ByKind))
	for k := range rep.ByKind {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		a, b := indexOf(lanes, faultCategory(kinds[i])), indexOf(lanes, faultCategory(kinds[j]))
		if a != b {
			return a < b
		}
		return kinds[i] < kinds[j]
	})
	for i, k := range kinds {
		s := rep.ByKind[k]
		y := ly + 6 + i*17
		p(`<rect x="%d" y="%d" width="12" height="12" fill="%s"/>`+"\n", lx, y, kindColor[k])
		p(`<text x="%d" y="%d" font-size="11">%s %d, %.1f/%.1fs</text>`+"\n", lx+17, y+10, k, s.Count, s.SettleP50, s.SettleMax)
	}
	ly += 6 + len(kinds)*17 + 14
	p(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black" stroke-width="2"/><text x="%d" y="%d" font-size="11">one owner per shard again</text>`+"\n", lx+6, ly-10, lx+6, ly+2, lx+17, ly)
	ly += 18
	p(`<rect x="%d" y="%d" width="12" height="12" fill="#d62728" opacity="0.85"/><text x="%d" y="%d" font-size="11">shards without an owner</text>`+"\n", lx, ly-10, lx+17, ly)
	ly += 18
	p(`<rect x="%d" y="%d" width="12" height="12" fill="#6a0dad" opacity="0.8"/><text x="%d" y="%d" font-size="11">shards with two owners</text>`+"\n", lx, ly-10, lx+17, ly)
	ly += 18
	p(`<text x="%d" y="%d" fill="#d62728" font-weight="bold" font-size="15">!</text><text x="%d" y="%d" font-size="11">settled past TTL + 1s</text>`+"\n", lx+3, ly, lx+17, ly)
	// The invariants under the time axis, two columns.
	iy := lagTop + lagH + 46
	p(`<text x="%d" y="%d" font-weight="bold">invariants</text>`+"\n", 10, iy)
	for i, inv := range rep.Invariants {
		mark, col := "✔", "#2ca02c"
		if !inv.OK {
			mark, col = "✘", "#d62728"
		}
		cx, cy := svgLeft+(i%2)*((svgW-svgLeft)/2), iy+(i/2)*30
		p(`<text x="%d" y="%d" font-size="12" fill="%s">%s %s</text>`+"\n", cx, cy, col, mark, html.EscapeString(inv.Name))
		p(`<text x="%d" y="%d" font-size="10" fill="#555">%s</text>`+"\n", cx+14, cy+13, html.EscapeString(shorten(inv.Detail, 110)))
	}
	p("</svg>\n")
	return w.Flush()
}

func drawOwnership(p func(string, ...any), tl Timeline, x, y func(float64) float64) {
	if len(tl.Samples) == 0 {
		return
	}
	// Keepers stacked in order of first appearance, each band drawn over
	// its lifetime only.
	var order []string
	first, last := map[string]int{}, map[string]int{}
	for i, s := range tl.Samples {
		for k := range s.Owned {
			if _, ok := first[k]; !ok {
				first[k] = i
				order = append(order, k)
			}
			last[k] = i
		}
	}
	sort.Slice(order, func(a, b int) bool {
		if first[order[a]] != first[order[b]] {
			return first[order[a]] < first[order[b]]
		}
		return order[a] < order[b]
	})
	base := make([]float64, len(tl.Samples))
	for ci, k := range order {
		from, to := max(0, first[k]-1), min(len(tl.Samples)-1, last[k]+1)
		var upper, lower []string
		// The label goes where the band is thickest, nearest the middle of
		// the keeper's life.
		bestI, bestH, mid := -1, 0.0, (first[k]+last[k])/2
		for i := from; i <= to; i++ {
			s := tl.Samples[i]
			v := float64(s.Owned[k])
			upper = append(upper, fmt.Sprintf("%.1f,%.1f", x(s.At), y(base[i]+v)))
			lower = append(lower, fmt.Sprintf("%.1f,%.1f", x(s.At), y(base[i])))
			h := y(base[i]) - y(base[i]+v)
			if h > bestH+0.5 || (math.Abs(h-bestH) <= 0.5 && abs(i-mid) < abs(bestI-mid)) {
				bestI, bestH = i, h
			}
		}
		for i, j := 0, len(lower)-1; i < j; i, j = i+1, j-1 {
			lower[i], lower[j] = lower[j], lower[i]
		}
		col := keeperColors[ci%len(keeperColors)]
		p(`<polygon points="%s %s" fill="%s" opacity="0.85"><title>%s</title></polygon>`+"\n", strings.Join(upper, " "), strings.Join(lower, " "), col, k)
		if bestI >= 0 && bestH >= 13 {
			s := tl.Samples[bestI]
			lx := math.Min(math.Max(x(s.At), svgLeft+14), plotRight-14)
			p(`<text x="%.1f" y="%.1f" font-size="10" fill="white" text-anchor="middle">%s</text>`+"\n", lx, y(base[bestI]+float64(s.Owned[k])/2)+4, k)
		}
		for i := from; i <= to; i++ {
			base[i] += float64(tl.Samples[i].Owned[k])
		}
	}
	// Unowned shards: red, hanging down from the shard count; shards with
	// two owners: purple, standing on it.
	total := float64(tl.Shards)
	for i, s := range tl.Samples {
		if s.Unowned == 0 && s.Multi == 0 {
			continue
		}
		x0 := x(s.At)
		x1 := x0 + 2
		if i+1 < len(tl.Samples) {
			x1 = math.Max(x1, x(tl.Samples[i+1].At))
		}
		if s.Unowned > 0 {
			p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#d62728" opacity="0.85"/>`+"\n", x0, y(total), x1-x0, y(total-float64(s.Unowned))-y(total))
		}
		if s.Multi > 0 {
			p(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#6a0dad" opacity="0.8"/>`+"\n", x0, y(total+float64(s.Multi)), x1-x0, y(total)-y(total+float64(s.Multi)))
		}
	}
}

// drawLag draws the largest lag in each pixel column as a filled area.
func drawLag(p func(string, ...any), lags []LagSample, x, y func(float64) float64) {
	if len(lags) == 0 {
		return
	}
	cols := map[int]float64{}
	for _, l := range lags {
		c := int(x(l.At))
		cols[c] = math.Max(cols[c], l.LagMs)
	}
	keys := make([]int, 0, len(cols))
	for c := range cols {
		keys = append(keys, c)
	}
	sort.Ints(keys)
	pts := []string{fmt.Sprintf("%d,%.1f", keys[0], y(1))}
	for _, c := range keys {
		pts = append(pts, fmt.Sprintf("%d,%.1f", c, y(cols[c])))
	}
	pts = append(pts, fmt.Sprintf("%d,%.1f", keys[len(keys)-1], y(1)))
	p(`<polygon points="%s" fill="#f28e2b" opacity="0.5" stroke="#c05f00" stroke-width="0.8"/>`+"\n", strings.Join(pts, " "))
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

func tickStep(dur float64) float64 {
	for _, s := range []float64{5, 10, 15, 30, 60, 120, 300, 600} {
		if dur/s <= 14 {
			return s
		}
	}
	return 1200
}

func fmtMs(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.0fs", v/1000)
	}
	return fmt.Sprintf("%.0fms", v)
}

func indexOf(xs []string, s string) int {
	for i, v := range xs {
		if v == s {
			return i
		}
	}
	return 0
}

func shorten(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
