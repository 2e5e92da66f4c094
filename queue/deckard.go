package queue

import (
	"context"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"
)

// The Deckard layout: keeper housekeeps the Redis keys of Deckard
// (takenet/deckard) in place of Deckard's own housekeeper, for its unlock
// and timeout tasks (../shared/deckard-layout.md states the layout). Each
// Deckard queue is one shard, Shard{Queue: q} ("q#0"): its keys share the
// hash tag {q}, so every script touches one slot.
//
// Deckard's keys, under its prefix P (all sorted sets, scores in epoch ms of
// the Deckard pod's clock):
//
//	P:queue:{q}                      ready: id -> priority (lowest pulled first)
//	P:queue:{q}:tmp                  in flight: id -> ack deadline
//	P:queue:{q}:lock_ack, :lock_nack locked: id -> unlock time
//	P:queue:{q}:lock_ack:score, ...  id -> score to restore at unlock
//
// keeper's own keys for the queue carry the same hash tag under P.keeper,
// which is outside P: (Deckard's Flush deletes every key matching P:*, and
// its discovery takes any key matching P:queue:{*}... for a queue), so
// Deckard never touches them and they are never taken for queues:
//
//	P.keeper:{q}:fence, :owner       the fence (highest token) and its owner
//	P.keeper:{q}:history             passes, when history is on
//	P.keeper:{q}:deleted             the fence head's tombstone (Deckard has no queue delete: never set by keeper)
//	P.keeper:{q}:stats               keeper's counters: unlocked_ack, unlocked_nack, requeued (timed out)

// DefaultDeckardPrefix is Deckard's default DECKARD_CACHE_PREFIX, and
// redis.prefix's default with the deckard layout.
const DefaultDeckardPrefix = "deckard_v1"

// DeckardPrefix is the prefix Deckard uses for a configured one: surrounding
// spaces trimmed, then surrounding ':'; empty means the default (so
// " :p: " is "p").
func DeckardPrefix(configured string) string {
	p := strings.TrimSpace(configured)
	if p == "" {
		return DefaultDeckardPrefix
	}
	if p = strings.Trim(p, ":"); p == "" {
		return DefaultDeckardPrefix
	}
	return p
}

// checkDeckardPrefix refuses a prefix that would break the hash tag: a
// brace before {q} would make it the tag.
func checkDeckardPrefix(p string) error {
	if strings.ContainsAny(p, "{}") {
		return fmt.Errorf("%w: deckard prefix %q has a brace; the queue's hash tag must be the first", ErrBadConfig, p)
	}
	return nil
}

// MaxDeckardNameLen bounds the Deckard queue names keeper housekeeps.
// Deckard itself sets no bound; a longer name is reported at discovery and
// left to nobody.
const MaxDeckardNameLen = 1024

// ValidateDeckardName reports whether keeper can housekeep a Deckard queue
// of this name: Deckard refuses '{' and '}'; keeper also refuses an empty
// name, invalid UTF-8 and control characters (the name is a metric
// attribute and a log field), and names past MaxDeckardNameLen.
func ValidateDeckardName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: deckard queue name is empty", ErrBadName)
	case len(name) > MaxDeckardNameLen:
		return fmt.Errorf("%w: deckard queue name is %d bytes, the limit is %d", ErrBadName, len(name), MaxDeckardNameLen)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: deckard queue name %q is not UTF-8", ErrBadName, name)
	}
	for i, r := range name {
		if r == '{' || r == '}' || r < 0x20 || r == 0x7f {
			return fmt.Errorf("%w: deckard queue name %q has %q at byte %d", ErrBadName, name, r, i)
		}
	}
	return nil
}

// ParseDeckardShard is the inverse of Shard.String for a Deckard queue
// ("q#0"; q may hold '#').
func ParseDeckardShard(name string) (Shard, error) {
	q, ok := strings.CutSuffix(name, "#0")
	if !ok {
		return Shard{}, fmt.Errorf("%w: deckard shard %q does not end in #0", ErrBadName, name)
	}
	if err := ValidateDeckardName(q); err != nil {
		return Shard{}, err
	}
	return Shard{Queue: q}, nil
}

// deckardKeys are the keys of one Deckard queue: Deckard's six sorted sets
// and keeper's own keys beside them.
type deckardKeys struct {
	Ready, Tmp, LockAck, LockNack, LockAckScore, LockNackScore string
	Fence, FenceOwner, History, Deleted, Stats                 string
}

// deckardOwnPrefix is where keeper's keys for Deckard prefix p live: beside
// p, never under "p:".
func deckardOwnPrefix(p string) string { return p + ".keeper" }

func deckardKeysFor(prefix, queue string) deckardKeys {
	r := prefix + ":queue:{" + queue + "}"
	own := deckardOwnPrefix(prefix) + ":{" + queue + "}:"
	return deckardKeys{Ready: r, Tmp: r + ":tmp", LockAck: r + ":lock_ack", LockNack: r + ":lock_nack",
		LockAckScore: r + ":lock_ack:score", LockNackScore: r + ":lock_nack:score",
		Fence: own + "fence", FenceOwner: own + "owner", History: own + "history", Deleted: own + "deleted",
		Stats: own + "stats"}
}

// ownKeys are keeper's keys of the queue.
func (k deckardKeys) ownKeys() []string {
	return []string{k.Fence, k.FenceOwner, k.History, k.Deleted, k.Stats}
}

// The Go–Lua contract of the Deckard layout (see contract.go for the native
// one's).
var (
	deckardUnlockScript = newDeckardScript("deckard_unlock", func(k deckardKeys) []string {
		return []string{k.LockAck, k.LockNack, k.LockAckScore, k.LockNackScore, k.Ready, k.Stats}
	}, "batch")
	deckardTimeoutScript = newDeckardScript("deckard_timeout", func(k deckardKeys) []string {
		return []string{k.Tmp, k.Ready, k.Stats}
	}, "batch")
	deckardMeasureScript = newDeckardScript("deckard_measure", func(k deckardKeys) []string {
		return []string{k.Ready, k.Tmp, k.LockAck, k.LockNack, k.Stats}
	})
	deckardProbeScript = newDeckardScript("deckard_probe", func(k deckardKeys) []string {
		return []string{k.LockAck, k.LockNack, k.Tmp, k.Ready}
	}, "claim", "sizes")
	deckardInspectScript = newScript("deckard_inspect", func(k deckardKeys) []string {
		return []string{k.Ready, k.Tmp, k.LockAck, k.LockNack, k.LockAckScore, k.LockNackScore}
	}, "id")
)

// deckardScripts is every script of the Deckard layout, for the header test.
var deckardScripts = []*script[deckardKeys]{deckardUnlockScript, deckardTimeoutScript, deckardMeasureScript,
	deckardProbeScript, deckardInspectScript}

func deckardFenceKeys(k deckardKeys) []string {
	return []string{k.Fence, k.FenceOwner, k.History, k.Deleted}
}

// newDeckardScript is a Deckard housekeeping script: lib.lua and
// deckard_lib.lua before it, the fence head before its keys and argv.
func newDeckardScript(name string, keys func(deckardKeys) []string, argv ...string) *script[deckardKeys] {
	return newScriptWith(name, []string{"lib", "deckard_lib"},
		func(k deckardKeys) []string { return append(deckardFenceKeys(k), keys(k)...) },
		append(append([]string{}, fenceArgv...), argv...)...)
}

// Deckard is the Deckard layout: the Layout that tasks/ drives for a
// Deckard deployment whose own unlock and timeout tasks are off.
type Deckard struct {
	rdb       redis.UniversalClient
	prefix    string
	record    string
	owner     string
	claimWait time.Duration
	wakes     *deckardWakes // shared by the copies the With methods make
}

var _ Layout = (*Deckard)(nil)

// NewDeckard returns the Deckard layout for prefix (trimmed as Deckard
// trims it: DeckardPrefix), woken as wake says.
func NewDeckard(rdb redis.UniversalClient, prefix string, wake DeckardWakeConfig) (*Deckard, error) {
	p := DeckardPrefix(prefix)
	if err := checkDeckardPrefix(p); err != nil {
		return nil, err
	}
	d := &Deckard{rdb: rdb, prefix: p, record: "0", claimWait: DefaultClaimWait}
	d.wakes = newDeckardWakes(d, wake)
	return d, nil
}

// Prefix is Deckard's key prefix, trimmed.
func (d *Deckard) Prefix() string { return d.prefix }

// WithHistory is Native.WithHistory for Deckard queues.
func (d *Deckard) WithHistory() *Deckard {
	c := *d
	c.record = "1"
	return &c
}

// WithOwner is Native.WithOwner for Deckard queues.
func (d *Deckard) WithOwner(owner string) *Deckard {
	c := *d
	c.owner = owner
	return &c
}

// WithClaimWait is Native.WithClaimWait for Deckard queues.
func (d *Deckard) WithClaimWait(wait time.Duration) *Deckard {
	c := *d
	c.claimWait = wait
	return &c
}

func (d *Deckard) keys(s Shard) deckardKeys { return deckardKeysFor(d.prefix, s.Queue) }

// fenced is a call of a Deckard housekeeping script on s.
func (d *Deckard) fenced(sc *script[deckardKeys], s Shard, token int64, args ...any) call {
	return sc.on(d.keys(s), append([]any{token, d.owner, d.record}, args...)...)
}

// ErrUnsupportedTask: the layout has no such task. Deckard's TTL and size
// cap need its storage, so Deckard keeps them.
var ErrUnsupportedTask = fmt.Errorf("%w: task not housekept in this layout", ErrBadConfig)

// Passes implements Layout: unlock (both lock pools), requeue (Deckard's
// timeout) and measure, pipelined like the native layout's.
func (d *Deckard) Passes(ctx context.Context, reqs []PassRequest) []PassOutcome {
	out := make([]PassOutcome, len(reqs))
	calls := make([]call, 0, len(reqs))
	idx := make([]int, 0, len(reqs))
	for i, r := range reqs {
		var c call
		switch r.Task {
		case TaskUnlock, TaskRequeue:
			if err := checkBatch(r.Batch); err != nil {
				out[i].Err = err
				continue
			}
			sc := deckardUnlockScript
			if r.Task == TaskRequeue {
				sc = deckardTimeoutScript
			}
			c = d.fenced(sc, r.Shard, r.Token, r.Batch)
		case TaskMeasure:
			c = d.fenced(deckardMeasureScript, r.Shard, r.Token)
		default:
			out[i].Err = fmt.Errorf("shard %s: %s: %w", r.Shard, r.Task, ErrUnsupportedTask)
			continue
		}
		calls = append(calls, c)
		idx = append(idx, i)
	}
	for j, cmd := range runAll(ctx, d.rdb, calls) {
		r := reqs[idx[j]]
		o, err := decodeDeckardPass(r, cmd)
		o.Err = asError(err, r.Shard, r.Token)
		out[idx[j]] = o
	}
	return out
}

// decodeDeckardPass reads the reply of a pass:
//
//	unlock  as the native unlock's (decodePass)
//	requeue {moved, next_due_ms, now_us}
//	measure see decodeDeckardMeasure
func decodeDeckardPass(r PassRequest, c *redis.Cmd) (PassOutcome, error) {
	switch r.Task {
	case TaskMeasure:
		m, err := decodeDeckardMeasure(c)
		return PassOutcome{Result: PassResult{NowUs: m.NowUs, NextMs: -1}, Measurement: m}, err
	case TaskRequeue:
		v, err := ints(c, "deckard_timeout", 3)
		if err != nil {
			return PassOutcome{}, err
		}
		n := int(v[0])
		return PassOutcome{Result: PassResult{Moved: n, Requeued: n, Full: n >= r.Batch, NextMs: v[1], NowUs: v[2]}}, nil
	}
	return decodePass(r, c)
}

// decodeDeckardMeasure reads {now_us, ready, tmp, lock_ack, lock_nack,
// ready_head_score or nil, field1, value1, ...}.
func decodeDeckardMeasure(c *redis.Cmd) (Measurement, error) {
	v, err := fields(c, "deckard_measure", 6)
	if err != nil {
		return Measurement{}, err
	}
	m := Measurement{NowUs: toInt64(v[0]), Ready: toInt64(v[1]), Inflight: toInt64(v[2]),
		LockedAck: toInt64(v[3]), LockedNack: toInt64(v[4])}
	m.Locked = m.LockedAck + m.LockedNack
	m.readTail(v)
	m.Counters.Unlocked = m.Counters.UnlockedAck + m.Counters.UnlockedNack
	return m, nil
}

// deckardProbe is a deckard_probe reply: {locked_head_ms, tmp_head_ms}
// and, when asked for (the poller), {ready, tmp, lock_ack, lock_nack}.
type deckardProbe struct {
	LockedHead, TmpHead           int64
	Ready, Tmp, LockAck, LockNack int64
}

func decodeDeckardProbe(c *redis.Cmd) (deckardProbe, error) {
	v, err := ints(c, "deckard_probe", 2)
	if err != nil {
		return deckardProbe{}, err
	}
	p := deckardProbe{LockedHead: v[0], TmpHead: v[1]}
	if len(v) >= 6 {
		p.Ready, p.Tmp, p.LockAck, p.LockNack = v[2], v[3], v[4], v[5]
	}
	return p, nil
}

// Probe implements Layout (see prober). A Deckard queue has no TTL set and
// no size cap: TTLHead is -1, Excess 0.
func (d *Deckard) Probe(ctx context.Context, reqs []ProbeRequest) ([]ProbeResult, error) {
	return d.prober().probe(ctx, reqs)
}

func (d *Deckard) prober() prober {
	return prober{rdb: d.rdb, claimWait: d.claimWait,
		node: func(s Shard) string { return d.keys(s).Fence },
		call: func(r ProbeRequest) call {
			return d.fenced(deckardProbeScript, r.Shard, r.Token, claimArg(r.Claim), "0")
		},
		decode: func(c *redis.Cmd) (ProbeResult, error) {
			p, err := decodeDeckardProbe(c)
			return ProbeResult{LockedHead: p.LockedHead, InflightHead: p.TmpHead, TTLHead: -1}, err
		}}
}

// Now implements Layout.
func (d *Deckard) Now(ctx context.Context) (time.Time, error) {
	t, err := d.rdb.Time(ctx).Result()
	if err != nil {
		return time.Time{}, fmt.Errorf("redis TIME: %w", err)
	}
	return t, nil
}

// Watch implements Layout (see deckardWakes).
func (d *Deckard) Watch(shards []Shard, on bool) { d.wakes.watch(shards, on) }

// Wakes implements Layout (see deckardWakes).
func (d *Deckard) Wakes(ctx context.Context, fn func(Wake)) error { return d.wakes.run(ctx, fn) }

// DeckardPlace is where one id of a Deckard queue is: its pool ("ready",
// "tmp", "lock_ack" or "lock_nack"), its score there, and for a lock pool
// the score saved for its unlock (empty: none, the pool's default applies).
type DeckardPlace struct {
	Pool       string `json:"pool"`
	Score      string `json:"score"`
	SavedScore string `json:"saved_score,omitempty"`
}

// InspectDeckard finds id in queue q: normally one place, none when the id
// is in no pool, more when Deckard's invariant (one pool per id) broke.
func (d *Deckard) InspectDeckard(ctx context.Context, q, id string) ([]DeckardPlace, error) {
	if err := ValidateDeckardName(q); err != nil {
		return nil, err
	}
	v, err := deckardInspectScript.on(d.keys(Shard{Queue: q}), id).run(ctx, d.rdb).Slice()
	if err != nil {
		return nil, fmt.Errorf("inspect %s in deckard queue %s: %w", id, q, err)
	}
	var out []DeckardPlace
	for i := 0; i+2 < len(v); i += 3 {
		out = append(out, DeckardPlace{Pool: toString(v[i]), Score: toString(v[i+1]), SavedScore: toString(v[i+2])})
	}
	return out, nil
}

// History reads a Deckard queue's recorded passes, oldest first (see
// WithHistory).
func (d *Deckard) History(ctx context.Context, q string) ([]HistoryEntry, error) {
	msgs, err := d.rdb.XRange(ctx, d.keys(Shard{Queue: q}).History, "-", "+").Result()
	if err != nil {
		return nil, fmt.Errorf("history of deckard queue %s: %w", q, err)
	}
	return ParseHistory(msgs), nil
}

// OwnKeysPattern is the SCAN pattern of every key keeper keeps for the
// Deckard queues under this prefix (outside Deckard's prefix).
func (d *Deckard) OwnKeysPattern() string { return globEscape(deckardOwnPrefix(d.prefix)) + ":*" }
