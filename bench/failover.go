package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/keeperhq/keeper/chaos"
	"github.com/keeperhq/keeper/queue"
)

// FailoverOptions configures the failover scenario.
type FailoverOptions struct {
	Keepers int           // keeper processes; default 3
	Queues  int           // default 20
	Parts   int           // partitions per queue; default 10 (200 shards)
	TTL     time.Duration // session TTL; default 3s
	// Locks seeded per shard, due one after another over ten minutes;
	// default 30,000 (one every 20ms). Fewer make room for more shards.
	Locks int
	// KeeperBin is the keeper binary; default as chaos.KeeperBinary.
	KeeperBin string
	// LogDir keeps the keepers' logs; default a temp dir removed after.
	LogDir string
}

// FailoverResult is one line of `keeper bench failover --json`.
type FailoverResult struct {
	Scenario          string  `json:"scenario"`
	Keepers           int     `json:"keepers"`
	Shards            int     `json:"shards"`
	TTLS              float64 `json:"ttl_s"`
	CrashShards       int     `json:"crash_shards"`
	CrashTakeoverS    float64 `json:"crash_takeover_s"`
	GracefulShards    int     `json:"graceful_shards"`
	GracefulHandoffMs float64 `json:"graceful_handoff_ms"`
	// CrashStallMs and GracefulStallMs are the longest time this process
	// ran nothing during each event (see PrecisionResult.HostStallMaxMs):
	// an event as slow as a stall of the machine is the machine's.
	CrashStallMs    float64 `json:"crash_host_stall_ms"`
	GracefulStallMs float64 `json:"graceful_host_stall_ms"`
	// CrashStealPct and GracefulStealPct are the share of the machine the
	// hypervisor gave to other guests during each event (-1: unknown).
	CrashStealPct    float64 `json:"crash_host_steal_pct"`
	GracefulStealPct float64 `json:"graceful_host_steal_pct"`
	// CalibMs: see PrecisionResult.HostCalibMs (the slowest of the runs
	// before and after each event).
	CalibMs float64 `json:"host_calib_ms"`
}

// Failover runs keeper processes over shards that always have a lock due
// (seeded for the next ten minutes), so an owner's first pass comes
// right after it takes a shard. It kills one keeper with SIGKILL and
// measures until every shard it owned has been written by a new owner
// (the shard's fence in Redis rose above the dead owner's token): owned
// again and housekept. Then it stops another with SIGTERM and measures the
// same for a graceful handoff. Each event is timed at the first write
// heard (fenceWatch) to the last of those fences.
func Failover(ctx context.Context, o FailoverOptions) (FailoverResult, error) {
	if o.Keepers < 2 {
		o.Keepers = 3
	}
	if o.Queues <= 0 {
		o.Queues = 20
	}
	if o.Parts <= 0 {
		o.Parts = 10
	}
	if o.TTL <= 0 {
		o.TTL = 3 * time.Second
	}
	if o.Locks <= 0 {
		o.Locks = 30_000
	}
	spacing := 10 * time.Minute / time.Duration(o.Locks)
	c, err := chaos.Start(ctx, chaos.Config{SessionTTL: o.TTL, KeeperBin: o.KeeperBin, NoHistory: true, LogDir: o.LogDir,
		Args: []string{"--metrics.disabled"}})
	if err != nil {
		return FailoverResult{}, err
	}
	defer c.Stop()
	reg := queue.NewRegistry(c.RDB, "")
	n := queue.NewNative(c.RDB, "")
	now, err := n.Now(ctx)
	if err != nil {
		return FailoverResult{}, err
	}
	var shards []queue.Shard
	for q := 0; q < o.Queues; q++ {
		name := fmt.Sprintf("bench-failover-%d", q)
		if err := reg.Create(ctx, name, queue.Config{Partitions: o.Parts}); err != nil {
			return FailoverResult{}, err
		}
		for p := 0; p < o.Parts; p++ {
			s := queue.Shard{Queue: name, Partition: p}
			shards = append(shards, s)
			// Locks due one after another for ten minutes.
			if err := queue.NewInspector(c.RDB, "").SeedLocked(ctx, s, "m", 0, o.Locks, now.UnixMilli(), spacing, []byte("x")); err != nil {
				return FailoverResult{}, err
			}
		}
	}
	var ks []*chaos.Keeper
	for i := 0; i < o.Keepers; i++ {
		k, err := c.AddKeeper(ctx, fmt.Sprintf("bench-k%d", i))
		if err != nil {
			return FailoverResult{}, err
		}
		ks = append(ks, k)
	}
	w, err := watchFences(ctx, c.RDB, queue.NewInspector(c.RDB, ""))
	if err != nil {
		return FailoverResult{}, err
	}
	defer w.Close()
	victim, owned, err := settled(ctx, c, w, ks, shards)
	if err != nil {
		return FailoverResult{}, err
	}
	res := FailoverResult{Scenario: "failover", Keepers: o.Keepers, Shards: len(shards), TTLS: o.TTL.Seconds()}
	host := watchHost(ctx)
	defer host.stop()

	mark := host.mark()
	start := w.start()
	if err := victim.Kill(); err != nil {
		return res, err
	}
	c.Remove(victim)
	last, err := w.waitAbove(ctx, owned, 2*time.Minute)
	if err != nil {
		return res, fmt.Errorf("crash takeover: %w", err)
	}
	res.CrashShards, res.CrashTakeoverS = len(owned), round(last.Sub(start).Seconds(), 3)
	crash := host.between(mark, host.mark())
	res.CrashStallMs, res.CrashStealPct = crash.stallMs, crash.stealPct

	victim, owned, err = settled(ctx, c, w, c.Keepers(), shards)
	if err != nil {
		return res, fmt.Errorf("after the crash: %w", err)
	}
	mark = host.mark()
	start = w.start()
	done := make(chan error, 1)
	go func() { done <- victim.Term(time.Minute) }()
	last, err = w.waitAbove(ctx, owned, time.Minute)
	if err != nil {
		return res, fmt.Errorf("graceful handoff: %w", err)
	}
	res.GracefulShards = len(owned)
	res.GracefulHandoffMs = round(float64(last.Sub(start))/float64(time.Millisecond), 1)
	graceful := host.between(mark, host.mark())
	res.GracefulStallMs, res.GracefulStealPct = graceful.stallMs, graceful.stealPct
	res.CalibMs = max(crash.calibMs, graceful.calibMs)
	if err := <-done; err != nil {
		return res, err
	}
	c.Remove(victim)
	return res, nil
}

// settled waits until shards are spread over ks and every owner has
// claimed all of its shards (each fence holds its owner's token), so that
// a measurement starts from a fleet at rest: taking the first 100,000
// shards takes a fleet on this machine tens of seconds after the ring has
// spread them, and a crash timed in that tail measured the tail too
// (crash takeovers of 13.8–26.8 s in runs of the same code). It returns the
// keeper owning the most shards, and those shards' tokens: the one the
// next event stops.
func settled(ctx context.Context, c *chaos.Cluster, w *fenceWatch, ks []*chaos.Keeper, shards []queue.Shard) (*chaos.Keeper, map[string]int64, error) {
	if err := chaos.WaitSpread(ctx, ks, shards, time.Minute); err != nil {
		return nil, nil, err
	}
	var (
		busiest *chaos.Keeper
		owned   map[string]int64
	)
	below := map[string]int64{}
	for _, k := range ks {
		st, err := k.Status(ctx)
		if err != nil {
			return nil, nil, err
		}
		for name, token := range st.Owned {
			below[name] = token - 1
		}
		if len(st.Owned) > len(owned) {
			busiest, owned = k, st.Owned
		}
	}
	if busiest == nil {
		return nil, nil, fmt.Errorf("no keeper owns anything")
	}
	w.start()
	if _, err := w.waitAbove(ctx, below, 5*time.Minute); err != nil {
		return nil, nil, fmt.Errorf("owners' claims: %w", err)
	}
	return busiest, owned, nil
}
