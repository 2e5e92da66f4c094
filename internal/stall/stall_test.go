package stall

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
)

// Worst counts a stall in a window when any part of it falls inside.
func TestWorstOverlaps(t *testing.T) {
	m := &Monitor{cfg: Config{Every: EveryDefault, Min: MinDefault}}
	t0 := time.Unix(1000, 0)
	m.observe(t0.Add(10*time.Second), 2*time.Second) // from t0+8s to t0+10s
	m.observe(t0.Add(20*time.Second), 50*time.Millisecond)
	m.observe(t0.Add(30*time.Second), 500*time.Millisecond)
	cases := []struct {
		from, to time.Duration
		want     time.Duration
	}{
		{0, 5 * time.Second, 0},
		{0, 9 * time.Second, 2 * time.Second},
		{9 * time.Second, 11 * time.Second, 2 * time.Second},
		{10 * time.Second, 40 * time.Second, 500 * time.Millisecond},
		{0, time.Minute, 2 * time.Second},
	}
	for _, c := range cases {
		if got := m.Worst(t0.Add(c.from), t0.Add(c.to)); got != c.want {
			t.Errorf("Worst(t0+%v, t0+%v) = %v, want %v", c.from, c.to, got, c.want)
		}
	}
}

// A process stopped by SIGSTOP runs nothing, as on a starved or paused
// machine: a child shell stops this test process for 300 ms and continues
// it, and the monitor must have recorded the gap. Stop is safe twice.
func TestMonitorRecordsAStop(t *testing.T) {
	m := Start(context.Background(), Config{Every: 10 * time.Millisecond, Min: 20 * time.Millisecond})
	t.Cleanup(m.Stop)
	start := time.Now()
	if out, err := exec.Command("sh", "-c", "kill -STOP $PPID; sleep 0.3; kill -CONT $PPID").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := poll.Until(ctx, 10*time.Millisecond, poll.Holds(func() bool {
		return m.Worst(start, time.Now().Add(time.Second)) >= 200*time.Millisecond
	})); err != nil {
		t.Fatalf("no stall of 200 ms recorded after a 300 ms SIGSTOP: worst %v", m.Worst(start, time.Now().Add(time.Second)))
	}
	m.Stop()
	m.Stop()
}

// ReadSteal reads the kernel's counter, which never runs backwards, and
// StealPct is a share of the whole machine.
func TestSteal(t *testing.T) {
	a, err := ReadSteal()
	if err != nil {
		t.Fatal(err)
	}
	b, err := ReadSteal()
	if err != nil {
		t.Fatal(err)
	}
	if b.Steal < a.Steal || a.CPUs < 1 {
		t.Fatalf("steal went from %v back to %v over %d processors", a.Steal, b.Steal, a.CPUs)
	}
	t0 := time.Unix(1000, 0)
	r0 := StealReading{At: t0, Steal: time.Second, CPUs: 2}
	if got := r0.StealPct(StealReading{At: t0.Add(time.Second), Steal: 2 * time.Second, CPUs: 2}); got != 50 {
		t.Errorf("one of two processors' second stolen: %v%%, want 50", got)
	}
	if got := r0.StealPct(StealReading{At: t0.Add(time.Second), Steal: 0, CPUs: 2}); got != 0 {
		t.Errorf("a counter that ran backwards: %v%%, want 0", got)
	}
	if got := (StealReading{}).StealPct(b); got != -1 {
		t.Errorf("after a failed reading: %v%%, want -1", got)
	}
}

// Calibrate times work the compiler kept: four million rounds of a chain
// of dependent shifts and xors cannot finish in a millisecond on any CPU
// (a loop optimised away would take nanoseconds).
func TestCalibrate(t *testing.T) {
	d := Calibrate()
	if d < time.Millisecond {
		t.Fatalf("Calibrate took %v: its loop was not run", d)
	}
	t.Logf("calibration: %v", d)
}
