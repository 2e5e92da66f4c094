package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/internal/progress"
	"github.com/keeperhq/keeper/internal/stall"
	"github.com/keeperhq/keeper/queue"
)

// RunOptions configures a randomized chaos run (`keeper chaos`). Zero values
// take the defaults noted; what is left at zero among the workload and
// keeper settings is drawn from the seed.
type RunOptions struct {
	Keepers  int           // keeper processes at the start; default 3 (scale-in keeps at least 2)
	Duration time.Duration // faults are injected for this long; default 150s
	// MinFaults keeps injecting past Duration until this many faults ran.
	MinFaults int
	Gap       time.Duration // mean pause between one fault's recovery and the next; default 1s
	Faults    []string      // kinds to draw from (AllFaults); default all
	// Queues, Partitions (per queue) and Rate (enqueues per second) of the
	// workload; default drawn from the seed.
	Queues, Partitions, Rate int
	TTL                      time.Duration // keepers' session TTL; default 3s
	Seed                     uint64        // default time-based
	KeeperBin, EtcdBin       string        // defaults as KeeperBinary and etcdserver.Binary
	// OtelcolBin, when set, starts a real OpenTelemetry Collector that every
	// keeper exports to, and the end of the run checks that every series
	// has exactly one writer (invariant 5).
	OtelcolBin string
	LogDir     string // keep the keepers' logs and etcd's data here
	// Log, when set, receives progress: one line per fault and recovery.
	Log func(format string, args ...any)
}

// The fault kinds.
const (
	FaultKill          = "kill"                // SIGKILL a keeper
	FaultTerm          = "term"                // SIGTERM a keeper
	FaultPause         = "pause"               // SIGSTOP a keeper past its session TTL, then SIGCONT
	FaultRolling       = "rolling-restart"     // replace every keeper, one at a time
	FaultScaleOut      = "scale-out"           // add keepers
	FaultScaleIn       = "scale-in"            // SIGTERM keepers
	FaultEtcdLeader    = "etcd-kill-leader"    // SIGKILL the etcd leader, restart it later
	FaultEtcdFollower  = "etcd-kill-follower"  // SIGKILL an etcd follower, restart it later
	FaultEtcdQuorum    = "etcd-quorum-loss"    // SIGKILL two of three members for longer than the TTL
	FaultEtcdRestart   = "etcd-restart-member" // SIGTERM an etcd member and start it again
	FaultEtcdPartition = "etcd-partition"      // cut one keeper from every etcd member for longer than the TTL
	FaultRedisLatency  = "redis-latency"       // latency or timeouts between one keeper and Redis
	FaultRedisCut      = "redis-cut"           // cut one keeper from Redis
	FaultRedisKill     = "redis-kill"          // kill -9 the Redis primary, restart it from its AOF
	FaultRedisFailover = "redis-failover"      // kill -9 the primary, promote the replica, switch everyone to it
)

// AllFaults lists every fault kind.
var AllFaults = []string{FaultKill, FaultTerm, FaultPause, FaultRolling, FaultScaleOut, FaultScaleIn,
	FaultEtcdLeader, FaultEtcdFollower, FaultEtcdQuorum, FaultEtcdRestart, FaultEtcdPartition,
	FaultRedisLatency, FaultRedisCut, FaultRedisKill, FaultRedisFailover}

// faultCategory groups kinds for the picture.
func faultCategory(kind string) string {
	switch {
	case strings.HasPrefix(kind, "etcd-partition"), kind == FaultRedisLatency, kind == FaultRedisCut:
		return "network"
	case strings.HasPrefix(kind, "etcd-"):
		return "etcd"
	case strings.HasPrefix(kind, "redis-"):
		return "redis"
	}
	return "keeper"
}

// Run starts a fleet, drives a workload, injects random faults and checks
// the brief's invariants: after each fault every shard has exactly one
// owner within the session TTL plus a second; at the end no message is lost
// or in two sets, the counters balance, no write was accepted under a
// stale token, no keeper went on writing after its successor started, and
// no message was delivered more than max_deliveries + 1 times.
func Run(ctx context.Context, o RunOptions) (RunReport, error) {
	if err := o.defaults(); err != nil {
		return RunReport{}, err
	}
	r := &runner{o: o, rng: rand.New(rand.NewPCG(o.Seed, 1)), logf: o.Log, frozen: map[int64]bool{},
		limit: o.TTL + time.Second}
	if r.logf == nil {
		r.logf = func(string, ...any) {}
	}
	r.rep = RunReport{Scenario: "chaos", Seed: o.Seed, Keepers: o.Keepers, OneOwner: true,
		SettleMaxS: r.limit.Seconds(), ByKind: map[string]KindStats{}}
	defer r.cleanup()
	pr := progress.From(ctx)
	pr.Phase("chaos: starting etcd, redis, keepers and the workload", 0, "")
	if err := r.setup(ctx); err != nil {
		return r.rep, err
	}
	pr.Timed("chaos: faults", o.Duration)
	if err := r.faults(ctx); err != nil {
		return r.rep, err
	}
	pr.Phase("chaos: settling and draining", 0, "")
	if err := r.finish(ctx); err != nil {
		return r.rep, err
	}
	return r.rep, nil
}

func (o *RunOptions) defaults() error {
	if o.Keepers <= 0 {
		o.Keepers = 3
	}
	if o.Duration <= 0 {
		o.Duration = 150 * time.Second
	}
	if o.Gap <= 0 {
		o.Gap = time.Second
	}
	if len(o.Faults) == 0 {
		o.Faults = AllFaults
	}
	for _, f := range o.Faults {
		if !slices.Contains(AllFaults, f) {
			return fmt.Errorf("unknown fault %q (known: %s)", f, strings.Join(AllFaults, ", "))
		}
	}
	if o.TTL <= 0 {
		o.TTL = 3 * time.Second
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}
	return nil
}

// runner is one run's state.
type runner struct {
	o     RunOptions
	rng   *rand.Rand
	logf  func(string, ...any)
	limit time.Duration

	c         *Cluster
	col       *otelcol.Collector
	queues    []string // the workload's
	allQueues []string // and the probe's
	shards    []queue.Shard
	start     time.Time
	seq       int
	fleet     int // keepers the fleet is kept at
	hist      *History
	samp      *sampler
	members   *memberWatch
	stalls    *stall.Monitor
	// steals holds the machine's steal time at each fault's injection
	// (parallel to rep.Faults), endSteal at the workload's end.
	steals    []stall.StealReading
	endSteal  stall.StealReading
	w         *Workload
	failovers []window
	frozen    map[int64]bool // tokens of keepers that were frozen by SIGSTOP
	rep       RunReport
	problems  []string // violations seen while running
}

func (r *runner) cleanup() {
	if r.w != nil {
		r.w.Stop()
	}
	if r.samp != nil {
		r.samp.stop()
	}
	if r.members != nil {
		r.members.stop()
	}
	if r.stalls != nil {
		r.stalls.Stop()
	}
	if r.hist != nil {
		r.hist.Stop()
	}
	if r.c != nil {
		r.c.Stop()
	}
	if r.col != nil {
		_ = r.col.Stop()
	}
}

func (r *runner) since() float64 { return time.Since(r.start).Seconds() }

// worstStall is the machine's longest stall between two moments of the run
// (seconds since it began), to read a fault's figures by.
func (r *runner) worstStall(from, to float64) time.Duration {
	at := func(s float64) time.Time { return r.start.Add(time.Duration(s * float64(time.Second))) }
	return r.stalls.Worst(at(from), at(to))
}

func (r *runner) violation(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.problems = append(r.problems, msg)
	r.logf("VIOLATION: %s", msg)
}

// uniform draws a duration in [lo, hi).
func (r *runner) uniform(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.rng.Int64N(int64(hi-lo)+1))
}

func (r *runner) setup(ctx context.Context) error {
	o := r.o
	rng := r.rng
	set := Settings{Queues: map[string]queue.Config{}, PerKeeper: map[string][]string{}, SessionTTL: o.TTL.String()}
	// Ring settings are the fleet's (every keeper must agree).
	ringParts := []int{0, 271, 4096}[rng.IntN(3)]
	args := []string{"--log_level", "info"}
	if ringParts > 0 {
		args = append(args, "--ring.partitions", strconv.Itoa(ringParts))
	}
	var env []string
	if o.OtelcolBin != "" {
		// The collector as shipped (metric_expiration 30s): a moved shard's
		// series is continued by its new owner, nothing has to expire.
		col, err := otelcol.Start(ctx, otelcol.Config{Binary: o.OtelcolBin})
		if err != nil {
			return fmt.Errorf("collector: %w", err)
		}
		r.col = col
		env = []string{"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + col.OTLPEndpoint(), "OTEL_EXPORTER_OTLP_INSECURE=true",
			"OTEL_METRIC_EXPORT_INTERVAL=1000"}
	} else {
		args = append(args, "--metrics.disabled")
	}
	set.Keeper = args
	c, err := Start(ctx, Config{SessionTTL: o.TTL, KeeperBin: o.KeeperBin, EtcdBin: o.EtcdBin, LogDir: o.LogDir,
		RedisReplica: slices.Contains(o.Faults, FaultRedisFailover), Args: args, Env: env})
	if err != nil {
		return err
	}
	r.c = c
	r.logf("seed %d: etcd %s, redis %s, logs in %s", o.Seed, strings.Join(c.Etcd.Endpoints(), ","), c.Redis.PrimaryAddr(), c.LogDir())

	// Queues: at least one plain, one with a TTL, one capped, one with
	// max deliveries; the rest mixed.
	nq := o.Queues
	if nq <= 0 {
		nq = 4 + rng.IntN(5)
	}
	reg := queue.NewRegistry(c.RDB, "")
	for i := 0; i < nq; i++ {
		qc := queue.Config{Partitions: o.Partitions}
		if qc.Partitions <= 0 {
			qc.Partitions = []int{1, 2, 4, 8, 16}[rng.IntN(5)]
		}
		feature := i
		if i >= 4 {
			feature = rng.IntN(5)
		}
		switch feature {
		case 1:
			qc.TTL = queue.Duration(r.uniform(3*time.Second, 30*time.Second).Round(time.Millisecond))
		case 2:
			qc.MaxSize = 500 + rng.IntN(2500)
		case 3:
			qc.MaxDeliveries = 1 + rng.IntN(8)
		case 4:
			qc.MaxDeliveries = 1 + rng.IntN(8)
			qc.TTL = queue.Duration(r.uniform(3*time.Second, 30*time.Second).Round(time.Millisecond))
			qc.MaxSize = 500 + rng.IntN(2500)
		}
		if rng.IntN(4) == 0 {
			qc.MaxInFlight = 50 + rng.IntN(450)
		}
		name := fmt.Sprintf("chaos-%02d", i)
		if err := reg.Create(ctx, name, qc); err != nil {
			return err
		}
		set.Queues[name] = qc
		r.queues = append(r.queues, name)
		for p := 0; p < qc.Partitions; p++ {
			r.shards = append(r.shards, queue.Shard{Queue: name, Partition: p})
		}
	}
	probe := queue.Config{Partitions: 8}
	if err := reg.Create(ctx, "chaos-probe", probe); err != nil {
		return err
	}
	set.Queues["chaos-probe"] = probe
	r.allQueues = append(append([]string(nil), r.queues...), "chaos-probe")
	for p := 0; p < probe.Partitions; p++ {
		r.shards = append(r.shards, queue.Shard{Queue: "chaos-probe", Partition: p})
	}
	r.rep.Shards = len(r.shards)

	r.fleet = o.Keepers
	for i := 0; i < o.Keepers; i++ {
		if _, err := r.addKeeper(ctx); err != nil {
			return err
		}
	}
	if err := WaitSpread(ctx, c.Keepers(), r.shards, time.Minute); err != nil {
		return err
	}
	r.start = time.Now()
	r.members = watchMembers(ctx, c.EC, c.cfg.EtcdPrefix)
	r.stalls = stall.Start(ctx, stall.Config{})
	r.hist = FollowHistory(ctx, c.RDB, r.shards, 500*time.Millisecond)
	r.samp = startSampler(ctx, c, r.start, len(r.shards))
	wc := WorkloadConfig{Queues: r.queues, ProbeQueue: "chaos-probe", Seed: rng.Uint64(),
		Producers: 1 + rng.IntN(3), Consumers: 1 + rng.IntN(3), Rate: o.Rate,
		Lease:     r.uniform(100*time.Millisecond, 500*time.Millisecond).Round(time.Millisecond),
		DelayFrac: 0.1, TTLFrac: 0.1, BurstEvery: r.uniform(10*time.Second, 25*time.Second).Round(time.Second)}
	if wc.Rate <= 0 {
		wc.Rate = 200 + rng.IntN(400)
	}
	set.Workload = WorkloadSummary{Producers: wc.Producers, Consumers: wc.Consumers, Rate: wc.Rate,
		LeaseMs: wc.Lease.Milliseconds(), BurstEvery: wc.BurstEvery.Seconds()}
	if r.w, err = StartWorkload(ctx, c.ClientAddr(), wc); err != nil {
		return err
	}
	for _, k := range c.Keepers() {
		set.PerKeeper[k.ID] = k.Args
	}
	r.rep.Settings = set
	r.logf("%d queues, %d shards, %d keepers; workload %+v", nq, len(r.shards), o.Keepers, set.Workload)
	return nil
}

// keeperArgs draws one keeper's task settings, the largest batch the
// config accepts often among them.
func (r *runner) keeperArgs() []string {
	rng := r.rng
	batch := []int{1, 7, 100, 1000, 4000, 10000, 10000, 10000}[rng.IntN(8)]
	return []string{
		"--tasks.batch", strconv.Itoa(batch),
		"--tasks.workers", strconv.Itoa(1 + rng.IntN(8)),
		"--tasks.measure_interval", r.uniform(time.Second, 10*time.Second).Round(time.Millisecond).String(),
		"--tasks.sweep_interval", r.uniform(time.Second, 60*time.Second).Round(time.Millisecond).String(),
		"--tasks.catalog_interval", r.uniform(time.Second, 30*time.Second).Round(time.Millisecond).String(),
	}
}

func (r *runner) addKeeper(ctx context.Context) (*Keeper, error) {
	r.seq++
	k, err := r.c.AddKeeper(ctx, fmt.Sprintf("k%d", r.seq), r.keeperArgs()...)
	if err != nil {
		return nil, err
	}
	if r.rep.Settings.PerKeeper != nil {
		r.rep.Settings.PerKeeper[k.ID] = k.Args
	}
	return k, nil
}

// live are the keepers that run and are not frozen.
func (r *runner) live() []*Keeper {
	var out []*Keeper
	for _, k := range r.c.Keepers() {
		if !k.Exited() && !k.Paused() {
			out = append(out, k)
		}
	}
	return out
}

func (r *runner) pickKeeper() *Keeper {
	ks := r.live()
	return ks[r.rng.IntN(len(ks))]
}

// refill brings the fleet back to its size after a keeper was removed.
func (r *runner) refill(ctx context.Context, f *FaultRecord) error {
	n := len(r.c.Keepers())
	if n >= r.fleet {
		return nil
	}
	o := r.observe(ctx, time.Now())
	for ; n < r.fleet; n++ {
		if _, err := r.addKeeper(ctx); err != nil {
			return err
		}
	}
	r.healSettle(ctx, f, o)
	return nil
}

// schedule lists the fault kinds in rounds: each round is every enabled
// kind once, in an order drawn from the seed, so that a short run sees
// every kind and a long one sees them equally often.
func (r *runner) nextKind(i int, round *[]string) string {
	if len(*round) == 0 {
		*round = append([]string(nil), r.o.Faults...)
		r.rng.Shuffle(len(*round), func(a, b int) { (*round)[a], (*round)[b] = (*round)[b], (*round)[a] })
	}
	k := (*round)[0]
	*round = (*round)[1:]
	return k
}

func (r *runner) faults(ctx context.Context) error {
	var round []string
	for i := 0; time.Since(r.start) < r.o.Duration || len(r.rep.Faults) < r.o.MinFaults; i++ {
		gap := time.Duration(float64(r.o.Gap) * (0.5 + r.rng.Float64()))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(gap):
		}
		kind := r.nextKind(i, &round)
		f := FaultRecord{Kind: kind, At: r.since()}
		steal, _ := stall.ReadSteal() // unknown: CPUs 0, reported as -1
		r.steals = append(r.steals, steal)
		if err := r.inject(ctx, &f); err != nil {
			return fmt.Errorf("%s at %.1fs: %w", kind, f.At, err)
		}
		r.checkCrashes()
		r.rep.Faults = append(r.rep.Faults, f)
		progress.From(ctx).Detail("faults: %d, last %s", len(r.rep.Faults), f.Kind)
		late := ""
		if f.EtcdLateS > 0 {
			late = fmt.Sprintf(" (etcd %.2fs late)", f.EtcdLateS)
		}
		r.logf("%6.1fs %-20s %-8s held %5.2fs  one owner after %5.2fs from the %s%s  after healing %5.2fs  stall %s  %s",
			f.At, f.Kind, f.Target, f.HeldS, f.SettleS, f.SettleFrom, late, f.HealSettleS,
			r.worstStall(f.At, r.since()).Round(time.Millisecond), f.Detail)
	}
	return nil
}

// checkCrashes reports keepers that exited without being stopped.
func (r *runner) checkCrashes() {
	for _, k := range r.c.Keepers() {
		if crashed, err := k.Crashed(); crashed {
			r.violation("keeper %s exited by itself (%v); log:\n%s", k.ID, err, k.LogTail(15))
			r.c.Remove(k)
		}
	}
}

func (r *runner) finish(ctx context.Context) error {
	r.w.Stop()
	workloadEnd := time.Now()
	r.endSteal, _ = stall.ReadSteal()
	r.logf("%6.1fs faults done: %d; settling and checking", r.since(), len(r.rep.Faults))
	if _, err := WaitOneOwner(ctx, r.c.Keepers(), r.shards, time.Minute); err != nil {
		r.rep.OneOwner = false
		r.violation("at the end, no single owner per shard within a minute: %v", err)
	}
	// With consumers stopped, the keepers must return every lease and lock.
	if err := r.c.WaitDrained(ctx, r.allQueues, 2*time.Minute); err != nil {
		r.violation("leases and locks not all returned two minutes after the workload stopped: %v", err)
	}
	r.samp.stop()
	r.stalls.Stop()
	r.hist.Stop()
	if err := r.hist.Collect(ctx); err != nil {
		return err
	}
	r.rep.DurationS = workloadEnd.Sub(r.start).Seconds()
	wl := r.w
	errs, nErrs := wl.Errors()
	r.rep.Workload = WorkloadReport{Enqueued: wl.Enqueued.Load(), Acked: wl.Acked.Load(), Nacked: wl.Nacked.Load(),
		Abandoned: wl.Abandoned.Load(), Extended: wl.Extended.Load(), Stale: wl.Stale.Load(), Pulled: wl.Pulled.Load(),
		Bursts: wl.Bursts(), TransientErrors: wl.TransientErrors(), Errors: errs, ErrorCount: nErrs}
	var err error
	r.rep.Messages, err = checkMessages(ctx, queue.NewClient(r.c.RDB, queue.ClientOptions{}), r.allQueues, r.w, r.failovers)
	if err != nil {
		return err
	}
	for _, l := range r.rep.Messages.Lost {
		r.rep.Messages.Problems = append(r.rep.Messages.Problems,
			fmt.Sprintf("passes on %s from a second before %s was sent: %s", l.Shard, l.ID, r.hist.passesSince(l.Shard, l.SentMs-1000)))
	}
	progress.From(ctx).Phase("chaos: checking fences and metrics", 0, "")
	r.rep.Fencing = r.hist.fenceCheck(r.frozen, r.samp.tokenOwners(), r.start)
	if r.col != nil {
		r.rep.Metrics = r.metricsCheck(ctx)
	}
	r.summarize()
	return nil
}
