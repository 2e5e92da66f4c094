// Package progress shows how far a long command has come (`keeper bench`,
// `keeper chaos`, `keeper queue audit`): one status line, redrawn in place,
// naming the phase and how far it is, with each finished phase left above it
// as one line.
//
// Only on a terminal. Into a pipe or a file, redrawn lines are noise in a log
// and end up mixed with what a script reads, so commands get a nil *Printer
// there (Stderr), and every method of a nil *Printer does nothing. Code deep
// in a scenario finds the printer in its context (From), so a hook costs one
// line and no new parameter.
package progress

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"
)

// redrawEvery is how often the status line is redrawn: often enough that the
// elapsed time and the counts move, rarely enough to cost nothing.
const redrawEvery = 250 * time.Millisecond

// Printer draws the status line. Its methods are safe for concurrent use, and
// do nothing on a nil *Printer. Add and Set are cheap (one atomic store):
// call them from hot loops.
type Printer struct {
	w     io.Writer
	width int // terminal columns; 0: unknown, lines are not cut
	now   func() time.Time
	done  atomic.Int64

	mu      sync.Mutex
	phase   string
	total   int64
	unit    string
	span    time.Duration // a timed phase: its length; how far is the time spent
	detail  string
	started time.Time
	active  bool // a phase is running
	drawn   bool // the status line is on screen
	closed  bool
	stop    chan struct{}
	ticking sync.WaitGroup
}

// New returns a printer writing to w, whose lines are cut at width columns
// (0: never). Commands use Stderr; New is for tests and other terminals.
func New(w io.Writer, width int) *Printer {
	return &Printer{w: w, width: width, now: time.Now}
}

// Stderr is a printer on os.Stderr when it is a terminal, else nil (which
// prints nothing).
func Stderr() *Printer {
	if !Terminal(os.Stderr) {
		return nil
	}
	width, _, err := term.GetSize(int(os.Stderr.Fd()))
	if err != nil {
		width = 0
	}
	return New(os.Stderr, width)
}

// Terminal reports whether f is a terminal.
func Terminal(f *os.File) bool {
	return f != nil && term.IsTerminal(int(f.Fd()))
}

type ctxKey struct{}

// With returns ctx carrying p.
func With(ctx context.Context, p *Printer) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// From is the printer ctx carries, or nil.
func From(ctx context.Context) *Printer {
	p, _ := ctx.Value(ctxKey{}).(*Printer)
	return p
}

// Phase ends the phase running (leaving its line) and starts one of total
// units (0: not known), counted by Add and Set.
func (p *Printer) Phase(name string, total int64, unit string) {
	p.begin(name, total, unit, 0)
}

// Timed starts a phase that takes about d: how far it is is the time spent.
func (p *Printer) Timed(name string, d time.Duration) {
	p.begin(name, 0, "", d)
}

func (p *Printer) begin(name string, total int64, unit string, span time.Duration) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.finishLocked()
	p.phase, p.total, p.unit, p.span, p.detail = name, total, unit, span, ""
	p.started = p.now()
	p.done.Store(0)
	p.active = true
	if p.stop == nil {
		p.stop = make(chan struct{})
		p.ticking.Add(1)
		go p.tick(p.stop)
	}
	p.drawLocked()
}

// Add counts n more units of the phase.
func (p *Printer) Add(n int64) {
	if p != nil {
		p.done.Add(n)
	}
}

// Set says n units of the phase are done.
func (p *Printer) Set(n int64) {
	if p != nil {
		p.done.Store(n)
	}
}

// Detail sets a short note shown after the counts (the last fault, the
// messages seen), until the next phase.
func (p *Printer) Detail(format string, args ...any) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.detail = fmt.Sprintf(format, args...)
}

// Printf prints a line above the status line, which stays.
func (p *Printer) Printf(format string, args ...any) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.clearLocked()
	fmt.Fprintf(p.w, strings.TrimSuffix(format, "\n")+"\n", args...)
	if p.active {
		p.drawLocked()
	}
}

// End ends the phase running, leaving its line, before something else is
// written to the terminal (a result on stdout).
func (p *Printer) End() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finishLocked()
}

// Close ends the phase running, leaving its line, and stops redrawing.
func (p *Printer) Close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.finishLocked()
	p.closed = true
	stop := p.stop
	p.mu.Unlock()
	if stop != nil {
		close(stop)
		p.ticking.Wait()
	}
}

func (p *Printer) tick(stop chan struct{}) {
	defer p.ticking.Done()
	t := time.NewTicker(redrawEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			p.redraw()
		}
	}
}

// redraw draws the status line again, if a phase is running.
func (p *Printer) redraw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.active && !p.closed {
		p.drawLocked()
	}
}

// finishLocked replaces the status line of the running phase by its final
// line.
func (p *Printer) finishLocked() {
	if !p.active {
		return
	}
	p.clearLocked()
	fmt.Fprintln(p.w, p.cut(p.lineLocked(true)))
	p.active = false
}

func (p *Printer) clearLocked() {
	if p.drawn {
		io.WriteString(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

func (p *Printer) drawLocked() {
	io.WriteString(p.w, "\r\x1b[K"+p.cut(p.lineLocked(false)))
	p.drawn = true
}

// cut keeps a line within the terminal's width: a line that wraps cannot be
// redrawn in place.
func (p *Printer) cut(line string) string {
	if p.width <= 1 {
		return line
	}
	r := []rune(line)
	if len(r) < p.width {
		return line
	}
	return string(r[:p.width-2]) + "…"
}

// lineLocked is the phase's status: "drain: seeding  420,000/1,000,000
// locks  42%  85,000/s  5.0s  note", or its final line.
func (p *Printer) lineLocked(final bool) string {
	elapsed := p.now().Sub(p.started)
	done := p.done.Load()
	parts := []string{p.phase}
	switch {
	case p.span > 0:
		if !final {
			spent := min(elapsed, p.span)
			parts = append(parts, seconds(spent)+"/"+seconds(p.span), percent(int64(spent), int64(p.span)))
		}
	case p.total > 0:
		parts = append(parts, count(done)+"/"+count(p.total)+unitOf(p.unit))
		if !final {
			parts = append(parts, percent(done, p.total))
		}
	case done > 0 || p.unit != "":
		parts = append(parts, count(done)+unitOf(p.unit))
	}
	// A rate only where there are many: "3/s" of shards says nothing.
	if p.unit != "" && p.span == 0 && elapsed >= time.Second && done >= 1000 {
		parts = append(parts, count(int64(float64(done)/elapsed.Seconds()))+"/s")
	}
	if final {
		parts = append(parts, "done in "+seconds(elapsed))
	} else if p.span == 0 {
		parts = append(parts, seconds(elapsed))
	}
	if p.detail != "" {
		parts = append(parts, p.detail)
	}
	return strings.Join(parts, "  ")
}

func unitOf(u string) string {
	if u == "" {
		return ""
	}
	return " " + u
}

func percent(n, of int64) string {
	return strconv.FormatInt(min(100, max(0, n*100/of)), 10) + "%"
}

func seconds(d time.Duration) string {
	if d < time.Minute {
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + "s"
	}
	return d.Round(time.Second).String()
}

// count writes n with thousands separators: 1,000,000.
func count(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
