// Package poll waits for a condition by checking it at an interval until a
// deadline. Tests, benchmarks and the chaos harness all wait this way rather
// than sleeping for a fixed time: on a shared, noisy machine a fixed sleep is
// either too short (a flaky failure) or too long (a slow suite).
package poll

import (
	"context"
	"fmt"
	"time"
)

// Until calls cond every interval until it reports done, and returns how
// long that took. When ctx ends first, the error carries cond's last reason,
// so a failure says what was still wrong, not only that time ran out.
func Until(ctx context.Context, interval time.Duration, cond func() (done bool, why string)) (time.Duration, error) {
	start := time.Now()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		done, why := cond()
		if done {
			return time.Since(start), nil
		}
		t.Reset(interval)
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("%w after %s: %s", ctx.Err(), time.Since(start).Round(time.Millisecond), why)
		case <-t.C:
		}
	}
}

// Within is Until bounded by timeout rather than by a context.
func Within(timeout, interval time.Duration, cond func() (done bool, why string)) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return Until(ctx, interval, cond)
}

// TB is the part of testing.TB that For needs; it keeps the testing package
// out of non-test binaries that import this package.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Interval is how often For checks: short beside every timeout the tests
// use, long enough that polling Redis or etcd does not load a 2-core box.
const Interval = 10 * time.Millisecond

// For waits like Within for a test, and fails t, naming what it waited for
// and cond's last reason, when cond does not hold within timeout. It returns
// how long the wait took, for tests that report it.
func For(t TB, timeout time.Duration, what string, cond func() (done bool, why string)) time.Duration {
	t.Helper()
	d, err := Within(timeout, Interval, cond)
	if err != nil {
		t.Fatalf("%s: not within %s: %v", what, timeout, err)
	}
	return d
}

// Holds adapts a condition without a reason for For and Until.
func Holds(cond func() bool) func() (bool, string) {
	return func() (bool, string) {
		if cond() {
			return true, ""
		}
		return false, "condition does not hold yet"
	}
}
