package queue

import (
	"context"
	"time"
)

// Layout is what the housekeeping tasks need from a queue's Redis layout.
// The native layout implements it; a Deckard-compatible layout can sit beside
// it, so that tasks/ never touches keys directly.
//
// Every write takes the shard's ownership token; the layout refuses it with
// a *FencedError when a higher token has written to the shard.
type Layout interface {
	// Passes runs one housekeeping pass per request, pipelined: on a
	// cluster, one round trip per node. Each pass is atomic and fenced on
	// its own shard, and has its own outcome: one shard's failure or
	// refusal leaves the others' results standing. The outcomes are in the
	// order of reqs.
	Passes(ctx context.Context, reqs []PassRequest) []PassOutcome
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

// Task is one kind of housekeeping pass over a shard, and the kind of
// deadline a hint names.
type Task uint8

// The tasks.
const (
	TaskUnlock  Task = iota // locked -> ready when the lock ends
	TaskRequeue             // expired lease -> ready, or dead past max deliveries
	TaskExpire              // drop messages past their TTL
	TaskTrim                // drop the lowest-score ready messages over max size
	TaskMeasure             // read counts and counters for metrics
	NumTasks
)

var taskNames = [NumTasks]string{"unlock", "requeue", "expire", "trim", "measure"}

// wakeCodes are the tasks' codes in wake messages; the scripts know them as
// WAKE_UNLOCK ... WAKE_MEASURE (see luaPreamble).
var wakeCodes = [NumTasks]byte{'u', 'r', 'e', 't', 'm'}

func (t Task) String() string {
	if t < NumTasks {
		return taskNames[t]
	}
	return "unknown"
}

// taskOfCode is the task whose wake code c is.
func taskOfCode(c byte) (Task, bool) {
	for t, w := range wakeCodes {
		if w == c {
			return Task(t), true
		}
	}
	return 0, false
}

// Due is a deadline of a shard, in Redis time (ms since the epoch).
type Due struct {
	Task Task
	AtMs int64
}

// PassRequest asks for one housekeeping pass over one shard.
type PassRequest struct {
	Shard Shard
	Task  Task
	// Token is the shard's ownership token (see Layout).
	Token int64
	// Batch is the most messages the pass handles, 1..MaxBatch; measure
	// ignores it.
	Batch int
	// Config is the queue's: requeue reads MaxDeliveries, trim MaxSize.
	Config Config
}

// PassOutcome is what one pass did. Result is set for every task (for
// measure only its clock, with NextMs -1), Measurement for measure only.
type PassOutcome struct {
	Result      PassResult
	Measurement Measurement
	Err         error
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
	// LockedAck and LockedNack split Locked by lock pool in a layout that
	// has two (Deckard's :lock_ack and :lock_nack); both 0 otherwise.
	LockedAck, LockedNack int64
	// HasReady tells whether ReadyHead is set.
	HasReady bool
	// ReadyHead is the lowest ready score (the enqueue time in ms, with
	// default priorities).
	ReadyHead float64
	Counters  Counters
	// Lag is the shard's unlock-lag histogram, kept in Redis by the
	// layout (zero for a layout that keeps none).
	Lag LagHistogram
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
