// Package stall notices when this machine stops running its processes for a
// while: a ticker in this process that fires late means every process on
// the machine (keepers, etcd, Redis) may have been starved that long. It
// also reads the hypervisor's steal time (ReadSteal): the CPU time a virtual
// machine's processors were ready to run and given to another guest, which
// slows every process evenly, with no gap a ticker would see; and it times
// a fixed piece of CPU work (Calibrate), for a machine slowed without any
// steal reported. The chaos harness and the benchmarks report these beside
// their figures, to read those figures by, never to excuse a violation: on
// a shared machine a lag tail can be the machine's, not keeper's.
package stall

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// EveryDefault is how often the monitor's ticker fires.
	EveryDefault = 100 * time.Millisecond
	// MinDefault is the shortest lateness recorded: a busy Go process
	// delays a goroutine by up to its scheduler's 10 ms time slice now
	// and then, which says nothing about the machine.
	MinDefault = 100 * time.Millisecond
)

// Config shapes a Monitor. Zero values take the defaults above.
type Config struct {
	Every time.Duration
	Min   time.Duration
}

// Monitor records each late tick: when it fired and how late.
type Monitor struct {
	cfg    Config
	mu     sync.Mutex
	gaps   []gap
	cancel context.CancelFunc
	done   chan struct{}
}

// gap is one late tick: the machine ran nothing of this process for late
// beyond the ticker's period, up to end.
type gap struct {
	end  time.Time
	late time.Duration
}

// Start runs a monitor until Stop or until ctx ends.
func Start(ctx context.Context, cfg Config) *Monitor {
	if cfg.Every <= 0 {
		cfg.Every = EveryDefault
	}
	if cfg.Min <= 0 {
		cfg.Min = MinDefault
	}
	m := &Monitor{cfg: cfg, done: make(chan struct{})}
	ctx, m.cancel = context.WithCancel(ctx)
	go m.run(ctx)
	return m
}

func (m *Monitor) run(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(m.cfg.Every)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// The tick's own timestamp is when the runtime meant to
			// deliver it; what counts is when this goroutine ran.
			now := time.Now()
			m.observe(now, now.Sub(last)-m.cfg.Every)
			last = now
		}
	}
}

// observe records a tick late by late at now, if late enough to count.
func (m *Monitor) observe(now time.Time, late time.Duration) {
	if late < m.cfg.Min {
		return
	}
	m.mu.Lock()
	m.gaps = append(m.gaps, gap{end: now, late: late})
	m.mu.Unlock()
}

// Worst is the longest stall that overlaps [from, to), or zero.
func (m *Monitor) Worst(from, to time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	var w time.Duration
	for _, g := range m.gaps {
		if g.end.After(from) && g.end.Add(-g.late).Before(to) {
			w = max(w, g.late)
		}
	}
	return w
}

// Stop ends the monitor and waits for it; safe to call twice.
func (m *Monitor) Stop() {
	m.cancel()
	<-m.done
}

// userHZ is the unit of /proc/stat's times: Linux reports them to user
// space in 1/100 s on every architecture Go runs keeper on.
const userHZ = 100

// StealReading is the machine's steal time at one moment.
type StealReading struct {
	At time.Time
	// Steal is the CPU time the hypervisor gave to others while this
	// machine's processors wanted to run, summed over CPUs processors.
	Steal time.Duration
	CPUs  int
}

// ReadSteal reads the steal time from /proc/stat, or says why it cannot
// (not Linux, or a kernel without the field).
func ReadSteal() (StealReading, error) {
	r := StealReading{At: time.Now()}
	f, err := os.Open("/proc/stat")
	if err != nil {
		return r, fmt.Errorf("steal time: %w", err)
	}
	defer f.Close()
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 0 || !strings.HasPrefix(fields[0], "cpu"):
		case fields[0] != "cpu":
			r.CPUs++
		case len(fields) < 9:
			// cpu user nice system idle iowait irq softirq steal ...
			return r, fmt.Errorf("steal time: /proc/stat's cpu line has no steal field: %q", sc.Text())
		default:
			ticks, err := strconv.ParseInt(fields[8], 10, 64)
			if err != nil {
				return r, fmt.Errorf("steal time: %w", err)
			}
			r.Steal, found = time.Duration(ticks)*time.Second/userHZ, true
		}
	}
	if err := sc.Err(); err != nil {
		return r, fmt.Errorf("steal time: %w", err)
	}
	if !found || r.CPUs == 0 {
		return r, fmt.Errorf("steal time: no cpu lines in /proc/stat")
	}
	return r, nil
}

// StealPct is the share of the machine's CPU capacity the hypervisor took
// from r to later, in percent; -1 if either reading failed (CPUs is 0).
func (r StealReading) StealPct(later StealReading) float64 {
	if r.CPUs == 0 || later.CPUs == 0 {
		return -1
	}
	wall := later.At.Sub(r.At)
	if wall <= 0 || later.Steal < r.Steal {
		return 0
	}
	return 100 * float64(later.Steal-r.Steal) / float64(wall) / float64(later.CPUs)
}

// calibrationRounds sizes Calibrate's work: about 10 ms on this project's
// 2-core test machine in its fast state.
const calibrationRounds = 4_000_000

// Calibrate times a fixed piece of CPU work (integer arithmetic, no memory
// traffic, no system calls), the best of three: how fast this machine runs
// code right now. A machine shared with other guests can run everything
// several times slower for minutes at a time without reporting any steal
// (a busy neighbour on the same core, a lower clock); this shows it.
func Calibrate() time.Duration {
	best := time.Duration(0)
	for range 3 {
		start := time.Now()
		x := uint64(0x9e3779b97f4a7c15)
		for i := range uint64(calibrationRounds) {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			x += i
		}
		runtime.KeepAlive(x) // or the compiler may drop the loop
		if d := time.Since(start); best == 0 || d < best {
			best = d
		}
	}
	return best
}
