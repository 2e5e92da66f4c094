package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// RunOptions configures a randomized chaos run (`keeper chaos`). Zero values
// take the defaults noted.
type RunOptions struct {
	Keepers    int           // keeper processes kept running; default 3
	Duration   time.Duration // faults are injected for this long; default 60s
	Every      time.Duration // one fault per interval; default 5s
	Faults     []string      // from kill, term, pause, etcd-restart; default all
	Queues     int           // default 8
	Partitions int           // per queue; default 8
	Rate       int           // enqueues per second; default 400
	TTL        time.Duration // keepers' session TTL; default 3s
	Seed       uint64        // fault schedule; default time-based
	KeeperBin  string        // default as KeeperBinary
	LogDir     string        // keep the keepers' logs here
	// Log, when set, receives one line per fault and settle.
	Log func(format string, args ...any)
}

// FaultRecord is one injected fault and how the fleet recovered.
type FaultRecord struct {
	At       float64 `json:"at_s"`
	Fault    string  `json:"fault"`
	Keeper   string  `json:"keeper,omitempty"`
	SettledS float64 `json:"settled_s"` // until every shard had exactly one owner again
}

// RunReport is what `keeper chaos --json` prints.
type RunReport struct {
	Scenario   string        `json:"scenario"`
	Seed       uint64        `json:"seed"`
	Keepers    int           `json:"keepers"`
	Shards     int           `json:"shards"`
	DurationS  float64       `json:"duration_s"`
	Faults     []FaultRecord `json:"faults"`
	Messages   MessageReport `json:"messages"`
	Fencing    FenceReport   `json:"fencing"`
	OneOwner   bool          `json:"one_owner_after_each_fault"`
	Workload   []string      `json:"workload_errors,omitempty"`
	Violations int           `json:"violations"`
}

// Run starts a fleet, drives a workload, injects random faults and checks
// invariants 1-4 of the brief: after each fault every shard has exactly one
// owner within the session TTL plus a second (plus a margin for this noisy
// machine, the time is reported), and at the end no message is lost or in
// two sets and no write was accepted under a stale token.
func Run(ctx context.Context, o RunOptions) (RunReport, error) {
	if o.Keepers <= 0 {
		o.Keepers = 3
	}
	if o.Duration <= 0 {
		o.Duration = time.Minute
	}
	if o.Every <= 0 {
		o.Every = 5 * time.Second
	}
	if len(o.Faults) == 0 {
		o.Faults = []string{"kill", "term", "pause", "etcd-restart"}
	}
	for _, f := range o.Faults {
		if !slices.Contains([]string{"kill", "term", "pause", "etcd-restart"}, f) {
			return RunReport{}, fmt.Errorf("unknown fault %q (kill, term, pause, etcd-restart)", f)
		}
	}
	if o.Queues <= 0 {
		o.Queues = 8
	}
	if o.Partitions <= 0 {
		o.Partitions = 8
	}
	if o.TTL <= 0 {
		o.TTL = 3 * time.Second
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	rng := rand.New(rand.NewPCG(o.Seed, 1))
	c, err := Start(ctx, Config{SessionTTL: o.TTL, KeeperBin: o.KeeperBin, LogDir: o.LogDir,
		Args: []string{"--metrics.disabled"}})
	if err != nil {
		return RunReport{}, err
	}
	defer c.Stop()
	reg := queue.NewRegistry(c.RDB, "")
	var names []string
	var shards []queue.Shard
	for q := 0; q < o.Queues; q++ {
		name := fmt.Sprintf("chaos-%02d", q)
		if err := reg.Create(ctx, name, queue.Config{Partitions: o.Partitions, MaxDeliveries: 8}); err != nil {
			return RunReport{}, err
		}
		names = append(names, name)
		for p := 0; p < o.Partitions; p++ {
			shards = append(shards, queue.Shard{Queue: name, Partition: p})
		}
	}
	rep := RunReport{Scenario: "chaos", Seed: o.Seed, Keepers: o.Keepers, Shards: len(shards), OneOwner: true}
	seq := 0
	addKeeper := func() error {
		seq++
		_, err := c.AddKeeper(ctx, fmt.Sprintf("chaos-k%d", seq))
		return err
	}
	for i := 0; i < o.Keepers; i++ {
		if err := addKeeper(); err != nil {
			return rep, err
		}
	}
	if err := WaitSpread(ctx, c.Keepers(), shards, time.Minute); err != nil {
		return rep, err
	}
	w := StartWorkload(ctx, c.RDB, WorkloadConfig{Queues: names, Rate: o.Rate})
	start := time.Now()
	limit := o.TTL + time.Second
	for time.Since(start) < o.Duration {
		select {
		case <-ctx.Done():
			w.Stop()
			return rep, ctx.Err()
		case <-time.After(o.Every):
		}
		f := FaultRecord{At: time.Since(start).Seconds(), Fault: o.Faults[rng.IntN(len(o.Faults))]}
		ks := c.Keepers()
		victim := ks[rng.IntN(len(ks))]
		var resumeAfter *Keeper
		switch f.Fault {
		case "kill":
			f.Keeper = victim.ID
			err = victim.Kill()
			c.Remove(victim)
		case "term":
			f.Keeper = victim.ID
			err = victim.Term(time.Minute)
			c.Remove(victim)
		case "pause":
			f.Keeper = victim.ID
			err = victim.Pause()
			resumeAfter = victim
		case "etcd-restart":
			err = c.Etcd.Restart(ctx)
		}
		if err != nil {
			w.Stop()
			return rep, fmt.Errorf("%s: %w", f.Fault, err)
		}
		faultAt := time.Now()
		// Generous polling bound; the time it took is what is reported.
		if _, err := WaitOneOwner(ctx, c.Keepers(), shards, 5*limit); err != nil {
			rep.OneOwner = false
			logf("%s %s: %v", f.Fault, f.Keeper, err)
		}
		f.SettledS = time.Since(faultAt).Seconds()
		if resumeAfter != nil {
			if err := resumeAfter.Resume(); err != nil {
				w.Stop()
				return rep, err
			}
		}
		// Keep the fleet at its size: replace what was removed.
		for len(c.Keepers()) < o.Keepers {
			if err := addKeeper(); err != nil {
				w.Stop()
				return rep, err
			}
		}
		logf("%5.1fs %-12s %-10s one owner per shard again after %.3fs", f.At, f.Fault, f.Keeper, f.SettledS)
		rep.Faults = append(rep.Faults, f)
	}
	w.Stop()
	rep.DurationS = time.Since(start).Seconds()
	for _, e := range w.Errors() {
		rep.Workload = append(rep.Workload, e.Error())
	}
	if _, err := WaitOneOwner(ctx, c.Keepers(), shards, 5*limit); err != nil {
		rep.OneOwner = false
	}
	if err := c.WaitDrained(ctx, names, time.Minute); err != nil {
		return rep, err
	}
	if rep.Messages, err = c.CheckMessages(ctx, names, w); err != nil {
		return rep, err
	}
	if rep.Fencing, err = c.CheckFencing(ctx, shards); err != nil {
		return rep, err
	}
	rep.Violations = rep.Messages.ProblemCnt + len(rep.Fencing.Problems) + len(rep.Workload)
	if !rep.OneOwner {
		rep.Violations++
	}
	return rep, nil
}
