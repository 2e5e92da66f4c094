package bench

import (
	"context"
	"time"

	"github.com/keeperhq/keeper/internal/stall"
)

// hostWatch tells how much of the machine a measurement had: the longest
// stall of this process (see internal/stall), the share of the processors
// the hypervisor gave to other guests meanwhile (-1 where the kernel does
// not say), and how fast the machine ran a fixed piece of work at each end.
// This machine swings between a fast state and one where everything takes
// up to four times longer, with no steal reported; these tell which state
// a figure was measured in.
type hostWatch struct{ stalls *stall.Monitor }

// hostMark is one end of a measurement.
type hostMark struct {
	steal stall.StealReading
	calib time.Duration
}

// hostFigures are what a result reports of the machine.
type hostFigures struct {
	stallMs, stealPct, calibMs float64
}

func watchHost(ctx context.Context) *hostWatch {
	return &hostWatch{stalls: stall.Start(ctx, stall.Config{})}
}

// mark is a moment to measure from or to. It runs stall.Calibrate (tens of
// milliseconds of CPU): take it outside what is timed.
func (h *hostWatch) mark() hostMark {
	calib := stall.Calibrate()
	r, err := stall.ReadSteal()
	if err != nil {
		r = stall.StealReading{At: time.Now()}
	}
	return hostMark{steal: r, calib: calib}
}

// between is the worst stall and the steal from a to b, and the slower of
// the two calibrations.
func (h *hostWatch) between(a, b hostMark) hostFigures {
	return hostFigures{
		stallMs:  float64(h.stalls.Worst(a.steal.At, b.steal.At).Milliseconds()),
		stealPct: round(a.steal.StealPct(b.steal), 1),
		calibMs:  round(float64(max(a.calib, b.calib))/float64(time.Millisecond), 1),
	}
}

func (h *hostWatch) stop() { h.stalls.Stop() }
