package queue

import (
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Go–Lua contract of the native layout: every script with the keys it
// takes and the names of its arguments, in the order its .lua header states
// them, and the one decoder of each script's reply.
var (
	// The producer and consumer side (Client).
	enqueueScript = newScript("enqueue", func(k shardKeys) []string {
		return []string{k.Deleted, k.Gen, k.Ready, k.Locked, k.Inflight, k.TTL, k.Body, k.Meta, k.Prio, k.Dlv,
			k.Stats, k.Clean, k.TrimWake}
	}, "id", "payload", "priority", "delay_ms", "ttl_ms", "max_payload", "max_size", "wake", "shard", "generation")
	pullScript = newScript("pull", func(k shardKeys) []string {
		return []string{k.Deleted, k.Gen, k.Ready, k.Inflight, k.TTL, k.Body, k.Meta, k.Prio, k.Dlv, k.Tok, k.Seq,
			k.Stats, k.Clean}
	}, "n", "lease_ms", "inflight_share", "wake", "shard", "generation")
	ackScript = newScript("ack", func(k shardKeys) []string {
		return []string{k.Deleted, k.Inflight, k.Tok, k.Body, k.Meta, k.Prio, k.Dlv, k.Stats, k.Clean}
	}, "id", "delivery", "wake", "shard")
	nackScript = newScript("nack", func(k shardKeys) []string {
		return []string{k.Deleted, k.Inflight, k.Ready, k.Locked, k.Dead, k.TTL, k.Tok, k.Body, k.Meta, k.Prio,
			k.Dlv, k.Stats, k.Clean}
	}, "id", "delivery", "lock_ms", "priority", "max_deliveries", "wake", "shard")
	extendScript = newScript("extend", func(k shardKeys) []string {
		return []string{k.Deleted, k.Inflight, k.Tok}
	}, "id", "delivery", "lease_ms", "wake", "shard")
	inspectScript = newScript("inspect", func(k shardKeys) []string {
		return []string{k.Deleted, k.Ready, k.Inflight, k.Locked, k.Dead, k.Body, k.Meta, k.Prio, k.Dlv}
	}, "id")
	holdsScript = newScript("holds", func(k shardKeys) []string {
		return []string{k.Deleted, k.Gen, k.Meta, k.Stats}
	}, "id", "generation")

	// The registry's (queue create, update and delete).
	bumpScript = newScript("bump", func(k shardKeys) []string {
		return []string{k.Deleted, k.Gen}
	}, "generation", "added")
	dropScript = newScript("drop", func(k shardKeys) []string {
		return append([]string{k.Deleted}, k.messages()...)
	})

	// The housekeeping side (Native): fenced.
	unlockScript = multiShard(newFencedScript("unlock", func(k shardKeys) []string {
		return []string{k.Locked, k.Ready, k.Prio, k.Stats, k.Clean}
	}, "batch"))
	requeueScript = multiShard(newFencedScript("requeue", func(k shardKeys) []string {
		return []string{k.Inflight, k.Ready, k.Dead, k.TTL, k.Tok, k.Dlv, k.Prio, k.Meta, k.Body, k.Stats, k.Clean}
	}, "batch", "max_deliveries"))
	expireScript = multiShard(newFencedScript("expire", func(k shardKeys) []string {
		return []string{k.TTL, k.Ready, k.Locked, k.Dead, k.Body, k.Meta, k.Prio, k.Dlv, k.Stats, k.Clean}
	}, "batch"))
	trimScript = multiShard(newFencedScript("trim", func(k shardKeys) []string {
		return []string{k.Ready, k.Inflight, k.Locked, k.TTL, k.Body, k.Meta, k.Prio, k.Dlv, k.Stats, k.Clean, k.TrimWake}
	}, "batch", "max_size"))
	measureScript = multiShard(newFencedScript("measure", func(k shardKeys) []string {
		return []string{k.Ready, k.Inflight, k.Locked, k.Dead, k.Stats, k.Clean}
	}))
	probeScript = multiShard(newFencedScript("probe", func(k shardKeys) []string {
		return []string{k.Locked, k.Inflight, k.TTL, k.Ready}
	}, "max_size", "claim"))

	// Benchmarks and tests only (Inspector).
	seedScript = newScript("seed", func(k shardKeys) []string {
		return []string{k.Deleted, k.Locked, k.Body, k.Meta, k.Prio, k.Stats}
	}, "prefix", "first", "count", "first_due_ms", "step_us", "payload")
)

// passScripts are the housekeeping scripts by task.
var passScripts = [NumTasks]*script[shardKeys]{TaskUnlock: unlockScript, TaskRequeue: requeueScript,
	TaskExpire: expireScript, TaskTrim: trimScript, TaskMeasure: measureScript}

// allScripts is every script, for the header test.
var allScripts = []*script[shardKeys]{enqueueScript, pullScript, ackScript, nackScript, extendScript, inspectScript,
	holdsScript, bumpScript, dropScript, unlockScript, requeueScript, expireScript, trimScript, measureScript,
	probeScript, seedScript}

// passArgs are a housekeeping pass's own arguments, after the fence head, in
// the order of its script's argv.
func passArgs(r PassRequest) []any {
	switch r.Task {
	case TaskRequeue:
		return []any{r.Batch, r.Config.MaxDeliveries}
	case TaskTrim:
		return []any{r.Batch, r.Config.MaxSize}
	case TaskMeasure:
		return nil
	}
	return []any{r.Batch}
}

// decodePass reads the reply of a pass of r.Task:
//
//	unlock  {moved, next_due_ms, now_us, lag_us...}
//	requeue {handled, next_due_ms, now_us, requeued, dead_lettered, expired, ttl_head_ms}
//	expire  {expired, next_due_ms, now_us}
//	trim    {trimmed, excess_left, now_us, ready_left}
//	measure see decodeMeasure
func decodePass(r PassRequest, c *redis.Cmd) (PassOutcome, error) {
	if r.Task == TaskMeasure {
		m, err := decodeMeasure(c)
		return PassOutcome{Result: PassResult{NowUs: m.NowUs, NextMs: -1}, Measurement: m}, err
	}
	want := [NumTasks]int{TaskUnlock: 3, TaskRequeue: 7, TaskExpire: 3, TaskTrim: 4}[r.Task]
	v, err := ints(c, r.Task.String(), want)
	if err != nil {
		return PassOutcome{}, err
	}
	res := PassResult{Moved: int(v[0]), NextMs: v[1], NowUs: v[2]}
	res.Full = res.Moved >= r.Batch
	switch r.Task {
	case TaskUnlock:
		res.Lags = make([]time.Duration, 0, len(v)-3)
		for _, us := range v[3:] {
			res.Lags = append(res.Lags, time.Duration(us)*time.Microsecond)
		}
	case TaskRequeue:
		res.Requeued, res.DeadLettered, res.Expired = int(v[3]), int(v[4]), int(v[5])
		if v[6] >= 0 {
			res.Hints = []Due{{Task: TaskExpire, AtMs: v[6]}}
		}
	case TaskExpire:
		res.Expired = res.Moved
	case TaskTrim:
		// Trim is due only when a shard goes over its cap, which the
		// enqueue script announces: it has no next deadline. It is full
		// when it stopped at the batch with ready messages still over.
		res.Excess, res.NextMs = v[1], -1
		res.Full = v[0] > 0 && v[1] > 0 && v[3] > 0
	}
	return PassOutcome{Result: res}, nil
}

// decodeMeasure reads {now_us, ready, inflight, locked, dead,
// ready_head_score or nil, field1, value1, ...} (the stats hash).
func decodeMeasure(c *redis.Cmd) (Measurement, error) {
	v, err := fields(c, "measure", 6)
	if err != nil {
		return Measurement{}, err
	}
	m := Measurement{NowUs: toInt64(v[0]), Ready: toInt64(v[1]), Inflight: toInt64(v[2]),
		Locked: toInt64(v[3]), Dead: toInt64(v[4])}
	m.readTail(v)
	return m, nil
}

// readTail reads what both layouts' measure replies end with:
// ready_head_score or nil at v[5], then the stats hash's fields and values.
func (m *Measurement) readTail(v []any) {
	if h, ok := v[5].(string); ok {
		m.HasReady = true
		m.ReadyHead, _ = strconv.ParseFloat(h, 64)
	}
	for i := 6; i+1 < len(v); i += 2 {
		name, value := toString(v[i]), toString(v[i+1])
		if !m.Lag.readLag(name, value) {
			m.Counters.readCounter(name, value)
		}
	}
}

// decodeProbe reads {locked_head_ms, inflight_head_ms, ttl_head_ms, excess}.
func decodeProbe(c *redis.Cmd) (ProbeResult, error) {
	v, err := ints(c, "probe", 4)
	if err != nil {
		return ProbeResult{}, err
	}
	return ProbeResult{LockedHead: v[0], InflightHead: v[1], TTLHead: v[2], Excess: v[3]}, nil
}

// enqueueReply is {added (1) or duplicate (0), enqueued_ms}.
type enqueueReply struct {
	Added      bool
	EnqueuedMs int64
}

func decodeEnqueue(c *redis.Cmd) (enqueueReply, error) {
	v, err := ints(c, "enqueue", 2)
	if err != nil {
		return enqueueReply{}, err
	}
	return enqueueReply{Added: v[0] == 1, EnqueuedMs: v[1]}, nil
}

// pullReply is {capped, deadline_ms, id1, token1, deliveries1, body1, ...}.
type pullReply struct {
	Capped     bool
	DeadlineMs int64
	Messages   []pulledMessage
}

type pulledMessage struct {
	ID         string
	Token      int64
	Deliveries int
	Body       string
}

func decodePull(c *redis.Cmd) (pullReply, error) {
	v, err := fields(c, "pull", 2)
	if err != nil {
		return pullReply{}, err
	}
	r := pullReply{Capped: toInt64(v[0]) == 1, DeadlineMs: toInt64(v[1]), Messages: make([]pulledMessage, 0, (len(v)-2)/4)}
	for i := 2; i+3 < len(v); i += 4 {
		r.Messages = append(r.Messages, pulledMessage{ID: toString(v[i]), Token: toInt64(v[i+1]),
			Deliveries: int(toInt64(v[i+2])), Body: toString(v[i+3])})
	}
	return r, nil
}

// nackStates are nack's replies: 1 ready, 2 locked, 3 dead, 4 expired.
var nackStates = [...]State{1: StateReady, 2: StateLocked, 3: StateDead, 4: StateExpired}

func decodeNack(c *redis.Cmd) (State, error) {
	v, err := c.Int64()
	if err != nil {
		return "", err
	}
	if v < 1 || v >= int64(len(nackStates)) {
		return "", fmt.Errorf("nack returned state %d", v)
	}
	return nackStates[v], nil
}

// inspectReply is {state, score, meta, priority, deliveries, payload_bytes};
// state "" when the message is unknown.
type inspectReply struct {
	State        State
	Score        string
	Meta         string
	Priority     string
	Deliveries   string
	PayloadBytes int64
}

func decodeInspect(c *redis.Cmd) (inspectReply, error) {
	v, err := fields(c, "inspect", 6)
	if err != nil {
		return inspectReply{}, err
	}
	return inspectReply{State: State(toString(v[0])), Score: toString(v[1]), Meta: toString(v[2]),
		Priority: toString(v[3]), Deliveries: toString(v[4]), PayloadBytes: toInt64(v[5])}, nil
}

// ints reads a reply of at least n integers from script name.
func ints(c *redis.Cmd, name string, n int) ([]int64, error) {
	v, err := c.Int64Slice()
	if err == nil && len(v) < n {
		err = fmt.Errorf("%s returned %d fields, want %d", name, len(v), n)
	}
	return v, err
}

// fields reads a reply of at least n values from script name.
func fields(c *redis.Cmd, name string, n int) ([]any, error) {
	v, err := c.Slice()
	if err == nil && len(v) < n {
		err = fmt.Errorf("%s returned %d fields, want %d", name, len(v), n)
	}
	return v, err
}

func toInt64(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return 0
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int64:
		return strconv.FormatInt(x, 10)
	}
	return ""
}
