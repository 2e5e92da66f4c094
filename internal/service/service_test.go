package service_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/service/servicetest"
)

// ticker is the smallest part: a goroutine that runs until Stop, whose
// start waits for a gate (so a Stop can come while it starts), and whose
// halt step records that it ran.
type ticker struct {
	base    service.Base
	gate    chan struct{}
	waiting chan struct{} // told when Start waits at the gate, if set
	ticks   atomic.Int64
	halted  atomic.Int64
	haltErr error
}

func (p *ticker) Start(ctx context.Context) error {
	ctx, err := p.base.StartInit(ctx)
	if err != nil {
		return err
	}
	if p.waiting != nil {
		p.waiting <- struct{}{}
	}
	select {
	case <-p.gate:
	case <-ctx.Done():
		return p.base.StartDone(ctx.Err())
	}
	p.base.Go(func(life context.Context) {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-life.Done():
				return
			case <-t.C:
				p.ticks.Add(1)
			}
		}
	})
	return p.base.StartDone(nil)
}

func (p *ticker) Stop(ctx context.Context) error {
	return p.base.Halt(ctx, func(context.Context) error {
		p.halted.Add(1)
		return p.haltErr
	})
}

func open() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}

func TestStress(t *testing.T) {
	servicetest.Stress(t, 50, func(*testing.T) service.Service { return &ticker{gate: open()} })
}

// The start context bounds start-up only: ending it later stops nothing.
func TestStartContextBoundsStartOnly(t *testing.T) {
	p := &ticker{gate: open()}
	ctx, cancel := context.WithCancel(context.Background())
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	n := p.ticks.Load()
	deadline := time.Now().Add(10 * time.Second)
	for p.ticks.Load() < n+5 {
		if time.Now().After(deadline) {
			t.Fatal("the part stopped with its start context")
		}
		time.Sleep(time.Millisecond)
	}
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h := p.halted.Load(); h != 1 {
		t.Fatalf("halt ran %d times", h)
	}
}

// A Stop while Start waits ends the start, and halt does not run for a part
// that never started.
func TestStopDuringStart(t *testing.T) {
	p := &ticker{gate: make(chan struct{}), waiting: make(chan struct{}, 1)}
	started := make(chan error, 1)
	go func() { started <- p.Start(context.Background()) }()
	<-p.waiting
	if err := p.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-started; !errors.Is(err, context.Canceled) {
		t.Fatalf("Start ended by Stop returned %v", err)
	}
	if h := p.halted.Load(); h != 0 {
		t.Fatalf("halt ran for a part that never started")
	}
}

// Every Stop returns the first one's halt error, and a failed start can be
// retried.
func TestHaltErrorAndRetriedStart(t *testing.T) {
	p := &ticker{gate: make(chan struct{}), haltErr: errors.New("handoff incomplete")}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Start(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("start with a cancelled context: %v", err)
	}
	close(p.gate)
	if err := p.Start(context.Background()); err != nil {
		t.Fatalf("start after a failed start: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := p.Stop(context.Background()); !errors.Is(err, p.haltErr) {
			t.Fatalf("Stop %d: %v", i, err)
		}
	}
}

// A Stop whose context has already ended still halts a part that has
// started (its halt step gets the ended context and does what it can).
func TestExpiredStopHaltsAStartedPart(t *testing.T) {
	for i := 0; i < 100; i++ {
		p := &ticker{gate: open()}
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = p.Stop(ctx)
		if h := p.halted.Load(); h != 1 {
			t.Fatalf("round %d: halt ran %d times", i, h)
		}
	}
}
