// The run report: what each fault did and what the checkers found, as
// `keeper chaos` prints it and as its --json object.

package chaos

import "github.com/keeperhq/keeper/queue"

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
