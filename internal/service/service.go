// Package service is the one lifecycle every long-running part of keeper
// shares (the task keeper, the coordinator, the catalog, the aggregator, the
// summary publisher, the metrics provider). A part embeds Base and has
//
//	Start(ctx context.Context) error
//	Stop(ctx context.Context) error
//
// with the same meaning everywhere:
//
//   - ctx given to Start bounds start-up only (waiting for etcd, a first
//     read). The part then lives on its own context, which keeps ctx's values
//     but not its cancellation or deadline: a daemon that starts its parts
//     under a signal context must still be able to stop them in order, with
//     their work finishing, after the signal.
//   - Stop is bounded by its ctx, idempotent and safe before Start, twice,
//     and concurrently: every call returns once the part has stopped (with
//     the first call's error) or when its own ctx ends. A Stop while Start
//     runs ends the start (its context is cancelled) and waits for it.
//   - Start twice is refused (ErrStarted), Start after Stop too (ErrStopped);
//     a Start that failed leaves the part as if never started.
//
// It learns from River's startstop.BaseStartStop; the differences are the
// bounded Stop, the start context that does not end the part, and Stop's
// halt step, which lets a part hand its work over (the coordinator deletes
// its ownership keys, the aggregator resigns) before its goroutines are
// cancelled.
package service

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrStarted is returned by a second Start.
var ErrStarted = errors.New("already started")

// ErrStopped is returned by a Start after Stop.
var ErrStopped = errors.New("stopped")

// Service is what every long-running part implements.
type Service interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
}

// Base implements the lifecycle rules; a part embeds it (usually unexported
// through a named field) and calls StartInit/StartDone from its Start and
// Halt from its Stop. The zero value is ready.
type Base struct {
	mu       sync.Mutex
	starting chan struct{} // closed when the Start in progress returned; nil before
	running  bool          // a Start succeeded
	stopping bool          // Stop was called
	halted   chan struct{} // closed when the first Stop finished halting
	finished chan struct{} // closed when every goroutine of the part returned
	stopErr  error
	life     context.Context
	endLife  context.CancelFunc
	endStart context.CancelFunc
	wg       sync.WaitGroup
}

// StartInit begins a Start. It returns the context start-up runs under: ctx,
// also ended by a Stop that comes meanwhile. Every successful StartInit is
// followed by one StartDone.
func (b *Base) StartInit(ctx context.Context) (context.Context, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopping {
		return nil, ErrStopped
	}
	if b.starting != nil {
		return nil, ErrStarted
	}
	b.life, b.endLife = context.WithCancel(context.WithoutCancel(ctx))
	startCtx, endStart := context.WithCancel(ctx)
	b.endStart = endStart
	b.starting = make(chan struct{})
	return startCtx, nil
}

// StartDone ends the Start begun by StartInit with its result, which it
// returns. After an error the part's goroutines are cancelled and waited
// for, and the part may be started again (unless Stop was called).
func (b *Base) StartDone(err error) error {
	b.mu.Lock()
	b.endStart()
	starting := b.starting
	if err == nil {
		b.running = true
		close(starting)
		b.mu.Unlock()
		return nil
	}
	endLife := b.endLife
	b.mu.Unlock()
	endLife()
	b.wg.Wait()
	b.mu.Lock()
	if !b.stopping {
		b.starting = nil
	}
	close(starting)
	b.mu.Unlock()
	return err
}

// Life is the context the part runs on once started: it keeps the start
// context's values, and ends when Stop has halted the part (after halt).
// Only valid after StartInit.
func (b *Base) Life() context.Context {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.life
}

// Go runs f on a goroutine that Stop waits for, with the part's life
// context. Call it during Start (between StartInit and StartDone) or from a
// goroutine started by Go.
func (b *Base) Go(f func(ctx context.Context)) {
	b.mu.Lock()
	life := b.life
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		f(life)
	}()
}

// Running reports whether the part started and Stop was not called yet.
func (b *Base) Running() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.running && !b.stopping
}

// Stopping reports whether Stop was called.
func (b *Base) Stopping() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.stopping
}

// Halt is the body of a part's Stop. The first call ends a Start in progress
// (and waits for it, within ctx), runs halt(ctx) if the part had started,
// then ends the life context and waits for the part's goroutines. Every
// call, the first included, returns once that is done, with halt's error, or
// as soon as its own ctx ends (the stop goes on in the background: the
// goroutines were told to end). halt may be nil.
func (b *Base) Halt(ctx context.Context, halt func(context.Context) error) error {
	b.mu.Lock()
	if !b.stopping {
		b.stopping = true
		b.halted = make(chan struct{})
		b.finished = make(chan struct{})
		starting, endStart, endLife := b.starting, b.endStart, b.endLife
		b.mu.Unlock()
		b.halt(ctx, starting, endStart, endLife, halt)
	} else {
		b.mu.Unlock()
	}
	b.mu.Lock()
	halted, finished := b.halted, b.finished
	b.mu.Unlock()
	select {
	case <-finished:
		<-halted
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.stopErr
	case <-ctx.Done():
		return fmt.Errorf("stop: %w", ctx.Err())
	}
}

func (b *Base) halt(ctx context.Context, starting chan struct{}, endStart, endLife context.CancelFunc, halt func(context.Context) error) {
	var err error
	defer func() {
		b.mu.Lock()
		b.stopErr = err
		close(b.halted)
		b.mu.Unlock()
	}()
	if starting == nil {
		// Never started: nothing runs.
		close(b.finished)
		return
	}
	endStart()
	select {
	case <-starting:
	default:
		// Not started yet: wait for the start to return, unless ctx ends
		// first (checked second, so that an expired ctx still halts a
		// part that has started).
		select {
		case <-starting:
		case <-ctx.Done():
			// The start returns soon (its context is cancelled); whatever it
			// started ends with the life context.
			err = fmt.Errorf("stop while starting: %w", ctx.Err())
			go func() {
				<-starting
				endLife()
				b.wg.Wait()
				close(b.finished)
			}()
			return
		}
	}
	b.mu.Lock()
	running := b.running
	b.mu.Unlock()
	if running && halt != nil {
		err = halt(ctx)
	}
	endLife()
	go func() {
		b.wg.Wait()
		close(b.finished)
	}()
}
