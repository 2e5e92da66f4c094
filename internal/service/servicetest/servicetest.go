// Package servicetest checks that a long-running part keeps the lifecycle
// rules of package service. Every part's tests run Stress on it (under the
// race detector in `make test`).
package servicetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/service"
)

// hang bounds every call: a Start or Stop that takes longer is reported as a
// hang. It is generous for a loaded 2-core machine; the calls take
// milliseconds.
const hang = 30 * time.Second

// Stress checks the rules on fresh parts from newPart: Stop before Start
// (then Start is refused), Start twice (refused), Stop twice, Stop with an
// expired context (returns at once, a later Stop completes the stop), and
// Start and Stop called concurrently and repeatedly. rounds is how many
// fresh parts the concurrent check uses.
func Stress(t *testing.T, rounds int, newPart func(t *testing.T) service.Service) {
	t.Helper()
	t.Run("stop before start", func(t *testing.T) {
		p := newPart(t)
		call(t, "Stop", func(ctx context.Context) error { return p.Stop(ctx) }, nil)
		call(t, "Stop again", func(ctx context.Context) error { return p.Stop(ctx) }, nil)
		if err := run(t, "Start after Stop", p.Start); !errors.Is(err, service.ErrStopped) {
			t.Fatalf("Start after Stop: %v, want ErrStopped", err)
		}
	})
	t.Run("start twice, stop twice", func(t *testing.T) {
		p := newPart(t)
		call(t, "Start", p.Start, nil)
		if err := run(t, "Start again", p.Start); !errors.Is(err, service.ErrStarted) {
			t.Fatalf("second Start: %v, want ErrStarted", err)
		}
		first := run(t, "Stop", p.Stop)
		second := run(t, "Stop again", p.Stop)
		if (first == nil) != (second == nil) {
			t.Fatalf("Stop twice: %v then %v; want the same result", first, second)
		}
		if err := run(t, "Start after Stop", p.Start); !errors.Is(err, service.ErrStopped) {
			t.Fatalf("Start after Stop: %v, want ErrStopped", err)
		}
	})
	t.Run("stop with an expired context", func(t *testing.T) {
		p := newPart(t)
		call(t, "Start", p.Start, nil)
		expired, cancel := context.WithCancel(context.Background())
		cancel()
		done := make(chan struct{})
		go func() { _ = p.Stop(expired); close(done) }()
		select {
		case <-done:
		case <-time.After(hang):
			t.Fatalf("Stop with an expired context still running after %s", hang)
		}
		// The stop goes on; a Stop with time left sees it finish.
		_ = run(t, "Stop after the expired one", p.Stop)
	})
	t.Run("start and stop concurrently", func(t *testing.T) {
		for r := 0; r < rounds; r++ {
			p := newPart(t)
			var wg sync.WaitGroup
			starts := make([]error, 3)
			for i := range starts {
				wg.Add(2)
				go func() { defer wg.Done(); starts[i] = run(t, "Start", p.Start) }()
				go func() { defer wg.Done(); _ = run(t, "Stop", p.Stop) }()
			}
			wg.Wait()
			ok := 0
			for _, err := range starts {
				switch {
				case err == nil:
					ok++
				case errors.Is(err, service.ErrStarted), errors.Is(err, service.ErrStopped),
					errors.Is(err, context.Canceled):
				default:
					// A start cancelled by a concurrent Stop may fail
					// with whatever it was doing; it must not hang.
					t.Logf("round %d: Start: %v", r, err)
				}
			}
			if ok > 1 {
				t.Fatalf("round %d: %d Starts succeeded", r, ok)
			}
			if t.Failed() {
				t.FailNow()
			}
			_ = run(t, "final Stop", p.Stop)
			if err := run(t, "Start after Stop", p.Start); !errors.Is(err, service.ErrStopped) {
				t.Fatalf("round %d: Start after Stop: %v, want ErrStopped", r, err)
			}
		}
	})
}

// errHang is what run returns for a call that did not return.
var errHang = errors.New("hang")

// run calls f with a context that gives it hang to return, and marks the
// test failed if it does not (it may run on any goroutine).
func run(t *testing.T, what string, f func(context.Context) error) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), hang)
	defer cancel()
	ch := make(chan error, 1)
	go func() { ch <- f(ctx) }()
	select {
	case err := <-ch:
		return err
	case <-time.After(hang + 5*time.Second):
		t.Errorf("%s did not return within %s", what, hang)
		return errHang
	}
}

// call runs f like run and checks its error is want.
func call(t *testing.T, what string, f func(context.Context) error, want error) {
	t.Helper()
	if err := run(t, what, f); !errors.Is(err, want) && err != want {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}
