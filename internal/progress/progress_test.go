package progress

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/keeperhq/keeper/internal/poll"
)

// screen is what a terminal shows after out: each line as left by its last
// "erase line" redraw.
func screen(out string) []string {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if k := strings.LastIndex(l, "\r\x1b[K"); k >= 0 {
			lines[i] = l[k+len("\r\x1b[K"):]
		}
	}
	return lines
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func newTest(width int) (*Printer, *bytes.Buffer, *clock) {
	var buf bytes.Buffer
	c := &clock{t: time.Unix(1_000_000, 0)}
	p := New(&buf, width)
	p.now = c.now
	return p, &buf, c
}

func TestPhasesCountsAndFinalLines(t *testing.T) {
	p, buf, c := newTest(0)
	p.Phase("drain: seeding", 1_000_000, "locks")
	p.Add(400_000)
	p.Add(20_000)
	c.advance(2 * time.Second)
	p.redraw()
	got := screen(buf.String())
	if want := "drain: seeding  420,000/1,000,000 locks  42%  210,000/s  2.0s"; got[len(got)-1] != want {
		t.Fatalf("status line %q, want %q", got[len(got)-1], want)
	}
	p.Set(1_000_000)
	c.advance(3 * time.Second)
	p.Phase("drain: draining", 16, "shards")
	p.Detail("%d left", 16)
	c.advance(500 * time.Millisecond)
	p.Add(4)
	p.redraw()
	got = screen(buf.String())
	if want := []string{
		"drain: seeding  1,000,000/1,000,000 locks  200,000/s  done in 5.0s",
		"drain: draining  4/16 shards  25%  0.5s  16 left",
	}; strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("screen:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	p.End()
	got = screen(buf.String())
	if want := "drain: draining  4/16 shards  done in 0.5s  16 left"; got[1] != want || got[2] != "" || len(got) != 3 {
		t.Fatalf("after End: %q, want %q and a newline", got, want)
	}
	// Ended, the phase is not drawn again, nor finished twice.
	n := buf.Len()
	p.redraw() // what the redraw loop does at each tick
	p.End()
	p.Close()
	p.Close() // twice is fine
	if buf.Len() != n {
		t.Fatalf("printed after End: %q", buf.String()[n:])
	}
	// After Close nothing more is printed.
	p.Phase("late", 1, "")
	p.Printf("late")
	if buf.Len() != n {
		t.Fatalf("printed after Close: %q", buf.String()[n:])
	}
}

func TestTimedPhaseAndNoTotal(t *testing.T) {
	p, buf, c := newTest(0)
	defer p.Close()
	p.Phase("starting etcd", 0, "")
	c.advance(1500 * time.Millisecond)
	p.redraw()
	if got := screen(buf.String()); got[0] != "starting etcd  1.5s" {
		t.Fatalf("no total: %q", got[0])
	}
	p.Timed("faults", 150*time.Second)
	p.Detail("12 faults, last keeper-crash")
	c.advance(62 * time.Second)
	p.redraw()
	got := screen(buf.String())
	if want := "faults  1m2s/2m30s  41%  12 faults, last keeper-crash"; got[1] != want {
		t.Fatalf("timed: %q, want %q", got[1], want)
	}
	// Past its length a timed phase stays at 100%.
	c.advance(time.Hour)
	p.redraw()
	if got := screen(buf.String()); !strings.HasPrefix(got[1], "faults  2m30s/2m30s  100%") {
		t.Fatalf("timed past its length: %q", got[1])
	}
	p.Phase("checking", 0, "")
	if got := screen(buf.String()); got[1] != "faults  done in 1h1m2s  12 faults, last keeper-crash" {
		t.Fatalf("timed final: %q", got[1])
	}
}

// Printf lines go above the status line and stay; the status line is drawn
// again under them.
func TestPrintfAboveStatus(t *testing.T) {
	p, buf, _ := newTest(0)
	p.Printf("before any phase")
	p.Phase("faults", 10, "faults")
	p.Add(1)
	p.Printf("%6.1fs %s", 3.25, "keeper-crash")
	p.Add(1)
	p.redraw()
	got := screen(buf.String())
	want := []string{"before any phase", "   3.2s keeper-crash", "faults  2/10 faults  20%  0.0s"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("screen:\n%q\nwant:\n%q", got, want)
	}
	p.Close()
}

// A line wider than the terminal is cut: one that wrapped could not be
// redrawn in place.
func TestWidth(t *testing.T) {
	p, buf, _ := newTest(20)
	defer p.Close()
	p.Phase("a rather long phase name", 1000, "messages")
	got := screen(buf.String())[0]
	if n := len([]rune(got)); n != 19 || !strings.HasSuffix(got, "…") {
		t.Fatalf("cut line %q (%d runes), want 19 ending in …", got, n)
	}
}

// A nil printer (not a terminal) takes every call and prints nothing; a
// context without one gives nil.
func TestNil(t *testing.T) {
	var p *Printer
	p.Phase("x", 1, "")
	p.Timed("x", time.Second)
	p.Add(1)
	p.Set(2)
	p.Detail("d")
	p.Printf("line")
	p.Close()
	if From(context.Background()) != nil {
		t.Fatal("From of a bare context is not nil")
	}
	q := New(&bytes.Buffer{}, 0)
	if From(With(context.Background(), q)) != q {
		t.Fatal("From does not return the printer With stored")
	}
}

func TestCount(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 7: "7", 999: "999", 1000: "1,000", 123456: "123,456",
		1_000_000: "1,000,000", -1234: "-1,234"} {
		if got := count(n); got != want {
			t.Errorf("count(%d) = %q, want %q", n, got, want)
		}
	}
}

// The redraw loop moves the counts without any call: a long phase whose
// hook only counts still shows how far it is.
func TestRedrawsOnItsOwn(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	p := New(writerFunc(func(b []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(b)
	}), 0)
	defer p.Close()
	p.Phase("seeding", 100, "ids")
	p.Set(37)
	poll.For(t, 10*time.Second, "the status line redrawn with the new count", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		got := screen(buf.String())
		return strings.HasPrefix(got[len(got)-1], "seeding  37/100 ids  37%"), got[len(got)-1]
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// Terminal tells a real terminal (a pseudo-terminal) from a pipe and from
// /dev/null, which is a character device but no terminal.
func TestTerminal(t *testing.T) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatalf("open a pty: %v", err)
	}
	defer ptmx.Close()
	defer tty.Close()
	if !Terminal(tty) {
		t.Error("a pty is not a terminal")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if Terminal(w) {
		t.Error("a pipe is a terminal")
	}
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	if Terminal(null) {
		t.Error("/dev/null is a terminal")
	}
	if Terminal(nil) {
		t.Error("nil is a terminal")
	}
}
