// Package testsignal lets a long-running part announce events that tests
// wait for (a reconcile round finished, a lease renewal was acknowledged),
// instead of test-only hooks or counters in production types. A part keeps
// its signals in a TestSignals struct; the zero value of a Signal does
// nothing, so production pays one nil check per event. A test calls Init
// before starting the part and then waits on the signal. (After River's
// rivershared/testsignal.)
package testsignal

import (
	"fmt"
	"time"
)

// buffer is how many events a signal keeps for a test that has not read
// them yet; past it, events are dropped (a test waits for "the next one",
// never for an exact count of all of them).
const buffer = 256

// Signal is one kind of event.
type Signal[T any] struct {
	ch chan T
}

// Init makes the signal record events. Call it before the part starts.
func (s *Signal[T]) Init() { s.ch = make(chan T, buffer) }

// Signal records an event; it never blocks, and does nothing unless Init
// was called.
func (s *Signal[T]) Signal(v T) {
	if s.ch == nil {
		return
	}
	select {
	case s.ch <- v:
	default:
	}
}

// C delivers the recorded events. It panics when Init was not called.
func (s *Signal[T]) C() <-chan T {
	if s.ch == nil {
		panic("testsignal: Signal used without Init")
	}
	return s.ch
}

// Drain forgets the events recorded so far, so that Wait returns a later one.
func (s *Signal[T]) Drain() {
	for {
		select {
		case <-s.C():
		default:
			return
		}
	}
}

// Wait returns the next event, or an error after timeout.
func (s *Signal[T]) Wait(timeout time.Duration) (T, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case v := <-s.C():
		return v, nil
	case <-t.C:
		var zero T
		return zero, fmt.Errorf("no event within %s", timeout)
	}
}
