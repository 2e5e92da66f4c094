package bench

import (
	"context"
	"time"

	"github.com/keeperhq/keeper/internal/stall"
)

// hostWatch tells how much of the machine a measurement had: the longest
// stall of this process (see internal/stall), and the share of the
// processors the hypervisor gave to other guests meanwhile (-1 where the
// kernel does not say). This machine swings between a fast state and one
// where everything takes up to four times longer; these tell which state a
// figure was measured in.
type hostWatch struct{ stalls *stall.Monitor }

func watchHost(ctx context.Context) *hostWatch {
	return &hostWatch{stalls: stall.Start(ctx, stall.Config{})}
}

// mark is a moment to measure from or to.
func (h *hostWatch) mark() stall.StealReading {
	r, err := stall.ReadSteal()
	if err != nil {
		return stall.StealReading{At: time.Now()}
	}
	return r
}

// between is the worst stall (ms) and the steal (% of the machine) from a
// to b.
func (h *hostWatch) between(a, b stall.StealReading) (stallMs, stealPct float64) {
	stealPct = -1
	if a.CPUs > 0 && b.CPUs > 0 {
		stealPct = round(a.StealPct(b), 1)
	}
	return float64(h.stalls.Worst(a.At, b.At).Milliseconds()), stealPct
}

func (h *hostWatch) stop() { h.stalls.Stop() }
