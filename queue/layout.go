package queue

import (
	"context"
	"time"
)

// Layout is what the housekeeping tasks need from a queue's Redis layout.
// The native layout implements it; a Deckard-compatible layout can sit beside
// it, so that tasks/ never touches keys directly.
//
// Every write method takes the shard's ownership token; the layout refuses it
// with a *FencedError when a higher token has written to the shard.
type Layout interface {
	// Unlock moves up to batch locked messages whose unlock time has come to
	// ready. Result.Lags holds each moved message's lag.
	Unlock(ctx context.Context, s Shard, token int64, batch int) (PassResult, error)
	// Requeue recovers up to batch expired leases (to ready, dead or gone).
	Requeue(ctx context.Context, s Shard, cfg Config, token int64, batch int) (PassResult, error)
	// Expire drops up to batch messages whose TTL passed.
	Expire(ctx context.Context, s Shard, token int64, batch int) (PassResult, error)
	// Trim drops up to batch ready messages over the shard's max size.
	Trim(ctx context.Context, s Shard, cfg Config, token int64, batch int) (PassResult, error)
	// Measure reads the shard's counts and counters and marks it clean.
	Measure(ctx context.Context, s Shard, token int64) (Measurement, error)
	// Probe reads the earliest deadlines of many shards at once; it writes
	// nothing except the fence of shards it is asked to claim. The result is
	// in the order of shards.
	Probe(ctx context.Context, shards []ProbeRequest) ([]ProbeResult, error)
	// Now is Redis's clock.
	Now(ctx context.Context) (time.Time, error)
	// Wakes delivers the deadline hints of the watched shards and queue
	// config notices until ctx ends.
	Wakes(ctx context.Context, fn func(Wake)) error
	// Watch adds (on) or removes shards whose hints Wakes delivers; only an
	// owner watches a shard, so hint traffic per keeper follows what it
	// owns. It never blocks on Redis. Each time a shard's subscription is
	// (re)established, Wakes delivers Wake{Shard: s, Resync: true}: hints
	// sent before it were not heard.
	Watch(shards []Shard, on bool)
}

// DueKind names which deadline of a shard a hint is about.
type DueKind byte

// The kinds of deadlines, with the one-letter codes used in wake messages.
const (
	DueUnlock  DueKind = 'u' // a lock ends
	DueRequeue DueKind = 'r' // a lease ends
	DueExpire  DueKind = 'e' // a TTL passes
	DueTrim    DueKind = 't' // the shard went over its max size
	DueMeasure DueKind = 'm' // the shard changed since it was last measured
)

func (k DueKind) String() string {
	switch k {
	case DueUnlock:
		return "unlock"
	case DueRequeue:
		return "requeue"
	case DueExpire:
		return "expire"
	case DueTrim:
		return "trim"
	case DueMeasure:
		return "measure"
	}
	return "unknown"
}

// Due is a deadline of a shard, in Redis time (ms since the epoch).
type Due struct {
	Kind DueKind
	AtMs int64
}

// PassResult is what one housekeeping pass did and what it learned.
type PassResult struct {
	// Moved counts the messages the pass handled.
	Moved int
	// Full is true when the pass hit its batch size: more may be due now.
	Full bool
	// NextMs is the shard's next deadline for this task (Redis ms), or -1.
	NextMs int64
	// NowUs is Redis's clock when the pass ran, in µs.
	NowUs int64
	// Lags (unlock only) are moved time - unlock time for each message.
	Lags []time.Duration
	// Excess (trim only) is how far the shard is still over its max size;
	// positive with Full false means in-flight and locked messages alone
	// exceed it, so messages returning to ready must be trimmed next.
	Excess int64
	// Requeue detail.
	Requeued, DeadLettered, Expired int
	// Hints are deadlines of other tasks the pass created (for example a
	// requeued message's TTL).
	Hints []Due
}

// Measurement is one shard's counts, read by its owner.
type Measurement struct {
	NowUs                         int64
	Ready, Inflight, Locked, Dead int64
	// HasReady tells whether ReadyHead is set.
	HasReady bool
	// ReadyHead is the lowest ready score (the enqueue time in ms, with
	// default priorities).
	ReadyHead float64
	// Counters are cumulative since the queue was created: enqueued,
	// deduplicated, pulled, acked, nacked, unlocked, requeued, expired,
	// dead_lettered, trimmed.
	Counters map[string]int64
}

// OldestReadyAge is now minus the head's score: the wait of the next message
// when scores are enqueue times (the default).
func (m Measurement) OldestReadyAge() time.Duration {
	if !m.HasReady {
		return 0
	}
	age := time.Duration(m.NowUs-int64(m.ReadyHead*1000)) * time.Microsecond
	if age < 0 {
		return 0
	}
	return age
}

// ProbeRequest names a shard to probe and its size cap (0 = none).
type ProbeRequest struct {
	Shard   Shard
	MaxSize int
	// Claim raises the shard's fence to Token (refused with a
	// *FencedError if a higher token wrote there): done once when a keeper
	// takes a shard, so that the previous owner is shut out at once.
	Claim bool
	Token int64
}

// ProbeResult holds a shard's earliest deadlines (Redis ms, -1 = none).
type ProbeResult struct {
	LockedHead, InflightHead, TTLHead int64
	// Excess is how far the shard is over its max size (≤ 0: within).
	Excess int64
	Err    error
}

// Wake is a hint from the wake channel.
type Wake struct {
	Shard Shard
	Due   Due
	// Resync is set when Shard's subscription was (re)established: hints
	// may have been lost, so the shard should be probed again.
	Resync bool
	// ConfigChanged is set when a queue config was created or changed.
	ConfigChanged bool
}
