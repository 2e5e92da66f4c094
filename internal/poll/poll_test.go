package poll

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	calls := 0
	d, err := Within(10*time.Second, time.Millisecond, func() (bool, string) {
		calls++
		return calls == 3, fmt.Sprintf("call %d", calls)
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 3 {
		t.Fatalf("cond called %d times, want 3", calls)
	}
	if d <= 0 {
		t.Fatalf("duration %v, want > 0", d)
	}
}

func TestUntilReportsTheLastReasonWhenTimeRunsOut(t *testing.T) {
	calls := 0
	_, err := Within(30*time.Millisecond, time.Millisecond, func() (bool, string) {
		calls++
		return false, fmt.Sprintf("still %d", calls)
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	if want := fmt.Sprintf("still %d", calls); !strings.HasSuffix(err.Error(), want) {
		t.Fatalf("err = %q, want it to end with the last reason %q", err, want)
	}
}

func TestUntilStopsWhenTheContextIsCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	_, err := Until(ctx, time.Millisecond, func() (bool, string) {
		calls++
		if calls == 2 {
			cancel()
		}
		return false, "never"
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want canceled", err)
	}
}

type fakeT struct{ failed string }

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.failed = fmt.Sprintf(format, args...)
}

func TestForFailsTheTestNamingWhatItWaitedFor(t *testing.T) {
	ft := &fakeT{}
	For(ft, 20*time.Millisecond, "the answer", Holds(func() bool { return false }))
	if !strings.Contains(ft.failed, "the answer: not within 20ms") {
		t.Fatalf("failure message %q does not name the wait", ft.failed)
	}
	ft = &fakeT{}
	For(ft, time.Second, "ready", Holds(func() bool { return true }))
	if ft.failed != "" {
		t.Fatalf("For failed on a condition that holds: %q", ft.failed)
	}
}
