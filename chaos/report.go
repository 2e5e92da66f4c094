// The run report: what each fault did and what the checkers found, as
// `keeper chaos` prints it and as its --json object, and how a run's
// records and checks become it (summarize).

package chaos

import (
	"context"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// FaultRecord is one injected fault and how the fleet recovered.
type FaultRecord struct {
	Kind   string  `json:"kind"`
	Target string  `json:"target,omitempty"`
	Detail string  `json:"detail,omitempty"`
	At     float64 `json:"at_s"`   // injected, seconds since the run began
	HeldS  float64 `json:"held_s"` // how long the fault lasted before it was healed
	// SettleS is how long until every shard had exactly one owner again,
	// from SettleFrom: "fault" (the moment of injection) or "heal" (the
	// moment the faulty part served again: etcd back with a quorum, Redis
	// back up), for faults during which no keeper can own anything.
	SettleS    float64 `json:"settle_s"`
	SettleFrom string  `json:"settle_from"`
	// SettledAt is that moment, in seconds since the run began.
	SettledAt float64 `json:"settled_at_s"`
	// HealSettleS is how long after healing every shard had one owner
	// again (a resumed, reconnected or replacement keeper rejoining).
	HealSettleS float64 `json:"heal_settle_s,omitempty"`
	// EtcdLateS: for a keeper killed, frozen or cut from etcd, how long
	// after the latest moment its lease could have run out (TTL after the
	// fault) etcd deleted its member key; the settle bound is TTL + 1s plus
	// this, since no successor can start before etcd expires the lease.
	EtcdLateS float64 `json:"etcd_late_s,omitempty"`
	// LagMaxMs is the largest probe lag seen from this fault to the next.
	LagMaxMs float64 `json:"lag_max_ms"`
	// HostStallMs is the longest this process was not scheduled (a 100ms
	// ticker firing late) from this fault to the next: a sign of a machine
	// too busy for the figures to be read as keeper's alone.
	HostStallMs float64 `json:"host_stall_ms"`
	// HostStealPct is the share of the machine's processors the
	// hypervisor gave to other guests from this fault to the next (-1:
	// unknown): a machine slowed evenly, which no stall shows.
	HostStealPct float64 `json:"host_steal_pct"`
	// Late: one owner per shard came back only past the bound.
	Late  bool   `json:"late,omitempty"`
	Error string `json:"error,omitempty"`
}

// KindStats sums up the faults of one kind.
type KindStats struct {
	Count     int     `json:"count"`
	SettleP50 float64 `json:"settle_p50_s"`
	SettleMax float64 `json:"settle_max_s"`
	LagMaxMs  float64 `json:"lag_max_ms"`
}

// Settings are what the seed drew.
type Settings struct {
	Queues     map[string]queue.Config `json:"queues"`
	Keeper     []string                `json:"keeper_args"` // common to every keeper
	PerKeeper  map[string][]string     `json:"per_keeper_args"`
	Workload   WorkloadSummary         `json:"workload"`
	SessionTTL string                  `json:"session_ttl"`
}

// WorkloadSummary is the workload's shape.
type WorkloadSummary struct {
	Producers  int     `json:"producers"`
	Consumers  int     `json:"consumers"`
	Rate       int     `json:"rate"`
	LeaseMs    int64   `json:"lease_ms"`
	BurstEvery float64 `json:"burst_every_s"`
}

// WorkloadReport counts what the workload did.
type WorkloadReport struct {
	Enqueued, Acked, Nacked, Abandoned, Extended, Stale, Pulled int64
	Bursts                                                      []string `json:"bursts"`
	TransientErrors                                             int      `json:"transient_errors"`
	Errors                                                      []string `json:"errors,omitempty"`
	ErrorCount                                                  int      `json:"error_count"`
}

// Invariant is one checked property and its verdict.
type Invariant struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// RunReport is what `keeper chaos --json` prints.
type RunReport struct {
	Scenario   string               `json:"scenario"`
	Seed       uint64               `json:"seed"`
	Keepers    int                  `json:"keepers"`
	Shards     int                  `json:"shards"`
	DurationS  float64              `json:"duration_s"`
	Settings   Settings             `json:"settings"`
	Faults     []FaultRecord        `json:"faults"`
	FaultKinds int                  `json:"fault_kinds"`
	ByKind     map[string]KindStats `json:"by_kind"`
	SettleMaxS float64              `json:"settle_bound_s"` // TTL + 1s
	Invariants []Invariant          `json:"invariants"`
	Messages   MessageReport        `json:"messages"`
	Fencing    FenceReport          `json:"fencing"`
	OneOwner   bool                 `json:"one_owner_after_each_fault"`
	Workload   WorkloadReport       `json:"workload"`
	Metrics    []string             `json:"metrics_problems,omitempty"`
	Violations int                  `json:"violations"`
	// ViolationList names each violation (the first 50).
	ViolationList []string `json:"violation_list"`

	// The timeline, for the picture (not in the JSON).
	Timeline Timeline `json:"-"`
}

// metricsCheck waits until the scrape agrees with Redis: the last
// measurements and the aggregator's totals take an export or two.
func (r *runner) metricsCheck(ctx context.Context) []string {
	var problems []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		problems = MetricProblems(ctx, r.c, r.col, r.allQueues, r.shards)
		if len(problems) == 0 || time.Now().After(deadline) {
			return problems
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (r *runner) summarize() {
	rep := &r.rep
	lags := r.w.Lags()
	rep.Timeline = Timeline{Samples: r.samp.all(), Lags: lags, Shards: len(r.shards)}
	// Lag and stalls per fault: from its injection to the next one's.
	for i := range rep.Faults {
		end := rep.DurationS
		if i+1 < len(rep.Faults) {
			end = rep.Faults[i+1].At
		}
		rep.Faults[i].HostStallMs = float64(r.worstStall(rep.Faults[i].At, end).Milliseconds())
		rep.Faults[i].HostStealPct = -1
		if i < len(r.steals) {
			later := r.endSteal
			if i+1 < len(r.steals) {
				later = r.steals[i+1]
			}
			rep.Faults[i].HostStealPct = math.Round(r.steals[i].StealPct(later)*10) / 10
		}
		for _, l := range lags {
			if l.At >= rep.Faults[i].At && l.At < end {
				rep.Faults[i].LagMaxMs = max(rep.Faults[i].LagMaxMs, l.LagMs)
			}
		}
	}
	settles := map[string][]float64{}
	for _, f := range rep.Faults {
		settles[f.Kind] = append(settles[f.Kind], f.SettleS)
		ks := rep.ByKind[f.Kind]
		ks.Count++
		ks.LagMaxMs = max(ks.LagMaxMs, f.LagMaxMs)
		rep.ByKind[f.Kind] = ks
	}
	for kind, ss := range settles {
		sort.Float64s(ss)
		ks := rep.ByKind[kind]
		ks.SettleP50, ks.SettleMax = ss[(len(ss)-1)/2], ss[len(ss)-1]
		rep.ByKind[kind] = ks
	}
	rep.FaultKinds = len(rep.ByKind)

	m, fe := rep.Messages, rep.Fencing
	add := func(name string, ok bool, detail string, problems []string) {
		rep.Invariants = append(rep.Invariants, Invariant{Name: name, OK: ok, Detail: detail})
		for _, p := range problems {
			r.problems = append(r.problems, name+": "+p)
		}
	}
	add("one owner per shard within TTL+1s after each fault", rep.OneOwner,
		fmt.Sprintf("%d faults, bound %.1fs", len(rep.Faults), rep.SettleMaxS), nil)
	add("no message lost, none in two sets, counters balance", m.ProblemCnt == 0,
		fmt.Sprintf("%d enqueued, %d acked, %d present (%d dead), %d expired, %d trimmed; %d enqueues and %d acks uncertain; %d problems",
			m.Enqueued, m.Acked, m.Present, m.Dead, m.Expired, m.Trimmed, m.UncertainEnqueues, m.UncertainAcks, m.ProblemCnt), m.Problems)
	add("no write accepted under a stale token", len(fe.Problems) == 0,
		fmt.Sprintf("%d accepted and %d refused writes over %d shards; %d recorded passes lost with failed-over primaries; largest passes: unlock %d, requeue %d, expire %d, trim %d",
			fe.Accepted, fe.Refused, fe.Shards, fe.LostInFailover, fe.LargestPass["unlock"], fe.LargestPass["requeue"],
			fe.LargestPass["expire"], fe.LargestPass["trim"]), fe.Problems)
	add("a keeper stops writing before its successor starts (unless frozen)", len(fe.Late) == 0,
		fmt.Sprintf("%d late tries", len(fe.Late)), fe.Late)
	add("deliveries never exceed max_deliveries + 1", m.MaxDeliveriesOver <= 1,
		fmt.Sprintf("most seen over max_deliveries: %d", m.MaxDeliveriesOver), nil)
	add("no unexpected client error", rep.Workload.ErrorCount == 0,
		fmt.Sprintf("%d unexpected, %d while Redis was unreachable", rep.Workload.ErrorCount, rep.Workload.TransientErrors), rep.Workload.Errors)
	if r.col != nil {
		add("one series per per-shard and global key, sums equal Redis", len(rep.Metrics) == 0, fmt.Sprintf("%d problems", len(rep.Metrics)), rep.Metrics)
	}
	// Problems were added above; the count covers everything seen.
	rep.Violations = len(r.problems) + max(0, m.ProblemCnt-len(m.Problems)) + max(0, rep.Workload.ErrorCount-len(rep.Workload.Errors))
	rep.ViolationList = r.problems[:min(50, len(r.problems))]
	if rep.Violations > 0 {
		r.logf("seed %d: %d violations; replay with --seed %d", rep.Seed, rep.Violations, rep.Seed)
	}
}
