package bench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/keeperhq/keeper/internal/progress"
	"github.com/keeperhq/keeper/shard"
)

// RingOptions configures the ring scenario. Zero values take defaults.
type RingOptions struct {
	// MaxMembers is the largest member count measured; default 1000.
	MaxMembers int
	// Ring is the ring under test; zero values take shard's defaults.
	Ring shard.RingConfig
}

// RingResult is one line of `keeper bench ring --json`.
type RingResult struct {
	Scenario             string  `json:"scenario"`
	MembersMax           int     `json:"members_max"`
	MaxLoadRatio         float64 `json:"max_load_ratio"`
	MaxMovedRatioToIdeal float64 `json:"max_moved_ratio_to_ideal"`
	// Where the worst cases were, and what was measured.
	WorstLoadMembers  int              `json:"worst_load_members"`
	WorstMovedMembers int              `json:"worst_moved_members"`
	WorstMovedChange  string           `json:"worst_moved_change"`
	Joins             int              `json:"joins"`
	Leaves            int              `json:"leaves"`
	Ring              shard.RingConfig `json:"ring"`
	DurationS         float64          `json:"duration_s"`
}

// Ring measures the ring over every member count N from 2 to MaxMembers,
// twice: with pod names ("keeper-<i>") and with random 16-hex-digit ids, the
// two id styles a keeper gets; the two families run in parallel. At every N
// it records the max/mean units per member and one join N→N+1 (a new name);
// at every N ≤ 20 and every 10th N also one leave N→N−1 of a random member
// (followed by a join back to N). A change's moved ratio is the fraction of
// units that changed owner divided by the ideal 1/max(N before, N after).
// Each family grows one ring with Ring.Next, so a step costs one
// redistribution of every partition inside consistent, which is what bounds
// the run time.
func Ring(ctx context.Context, o RingOptions) (RingResult, error) {
	if o.MaxMembers <= 0 {
		o.MaxMembers = 1000
	}
	if o.MaxMembers < 2 {
		return RingResult{}, fmt.Errorf("ring scenario needs at least 2 members, got %d", o.MaxMembers)
	}
	start := time.Now()
	res := RingResult{Scenario: "ring", MembersMax: o.MaxMembers}
	families := []func(int, *rand.Rand) string{
		func(i int, _ *rand.Rand) string { return "keeper-" + strconv.Itoa(i) },
		func(_ int, r *rand.Rand) string { return fmt.Sprintf("%016x", r.Uint64()) },
	}
	parts := make([]ringWorst, len(families))
	errs := make([]error, len(families))
	progress.From(ctx).Phase("ring: member counts", int64(len(families)*(o.MaxMembers-1)), "rings")
	var wg sync.WaitGroup
	for i, name := range families {
		wg.Add(1)
		go func() {
			defer wg.Done()
			parts[i], errs[i] = ringSweep(ctx, o, name, uint64(i+1))
		}()
	}
	wg.Wait()
	for i := range parts {
		if errs[i] != nil {
			return RingResult{}, errs[i]
		}
		p := parts[i]
		if p.load > res.MaxLoadRatio {
			res.MaxLoadRatio, res.WorstLoadMembers = p.load, p.loadAt
		}
		if p.moved > res.MaxMovedRatioToIdeal {
			res.MaxMovedRatioToIdeal, res.WorstMovedMembers, res.WorstMovedChange = p.moved, p.movedAt, p.movedChange
		}
		res.Joins += p.joins
		res.Leaves += p.leaves
		res.Ring = p.cfg
	}
	res.MaxLoadRatio = roundTo(res.MaxLoadRatio, 4)
	res.MaxMovedRatioToIdeal = roundTo(res.MaxMovedRatioToIdeal, 4)
	res.DurationS = roundTo(time.Since(start).Seconds(), 2)
	return res, nil
}

type ringWorst struct {
	load, moved   float64
	loadAt        int
	movedAt       int
	movedChange   string
	joins, leaves int
	cfg           shard.RingConfig
}

// leaveEvery spaces the leave samples: each costs one more redistribution
// of every partition (about 30 ms at the default 98304 partitions), and
// the join at every N already crosses every change of consistent's load cap,
// where the worst moves are. All N ≤ leaveAllBelow get a leave too.
const (
	leaveEvery    = 10
	leaveAllBelow = 20
)

func ringSweep(ctx context.Context, o RingOptions, name func(int, *rand.Rand) string, seed uint64) (ringWorst, error) {
	rng := rand.New(rand.NewPCG(seed, 0x6b656570))
	next := 0
	newName := func() string {
		next++
		return name(next-1, rng)
	}
	cur := []string{newName(), newName()}
	var w ringWorst
	r := shard.NewRing(cur, o.Ring)
	w.cfg = r.Config()
	p := float64(w.cfg.Units)
	note := func(moved, before, after int, change string) {
		ratio := float64(moved) / p * float64(max(before, after))
		if ratio > w.moved {
			w.moved, w.movedAt, w.movedChange = ratio, before, change
		}
	}
	for n := 2; n <= o.MaxMembers; n++ {
		if err := ctx.Err(); err != nil {
			return w, fmt.Errorf("ring scenario at %d members: %w", n, err)
		}
		progress.From(ctx).Add(1)
		maxLoad := 0
		for _, l := range r.Loads() {
			maxLoad = max(maxLoad, l)
		}
		if ratio := float64(maxLoad) / (p / float64(n)); ratio > w.load {
			w.load, w.loadAt = ratio, n
		}
		if n <= leaveAllBelow || n%leaveEvery == 0 {
			// A random member leaves, and a new one takes its place: a
			// leave N→N−1 and a join N−1→N, as a rolling restart does.
			k := rng.IntN(n)
			cur = slices.Delete(cur, k, k+1)
			left := r.Next(cur)
			note(r.Moved(left), n, n-1, "leave")
			w.leaves++
			cur = append(cur, newName())
			back := left.Next(cur)
			note(left.Moved(back), n-1, n, "join")
			w.joins++
			r = back
		}
		cur = append(cur, newName())
		joined := r.Next(cur)
		note(r.Moved(joined), n, n+1, "join")
		w.joins++
		r = joined
	}
	return w, nil
}

func roundTo(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}
