// Package stall notices when this machine stops running its processes for a
// while: a ticker in this process that fires late means every process on
// the machine (keepers, etcd, Redis) may have been starved that long. The
// chaos harness and the benchmarks report the worst stall beside their
// figures, to read those figures by, never to excuse a violation: on a
// shared machine a lag tail can be the machine's, not keeper's.
package stall

import (
	"context"
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
	stalls []Stall
	cancel context.CancelFunc
	done   chan struct{}
}

// Stall is one late tick: the machine ran nothing of this process for Late
// beyond the ticker's period, up to End.
type Stall struct {
	End  time.Time
	Late time.Duration
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
	m.stalls = append(m.stalls, Stall{End: now, Late: late})
	m.mu.Unlock()
}

// Worst is the longest stall that overlaps [from, to), or zero.
func (m *Monitor) Worst(from, to time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	var w time.Duration
	for _, s := range m.stalls {
		if s.End.After(from) && s.End.Add(-s.Late).Before(to) {
			w = max(w, s.Late)
		}
	}
	return w
}

// Stop ends the monitor and waits for it; safe to call twice.
func (m *Monitor) Stop() {
	m.cancel()
	<-m.done
}
