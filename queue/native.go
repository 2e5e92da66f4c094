package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Native is the housekeeping side of the native layout: the Layout that
// tasks/ drives.
type Native struct {
	rdb    redis.UniversalClient
	prefix string
	record string // "1": every housekeeping pass is recorded in the shard's history
	// owner identifies this keeper process to the fences (see WithOwner).
	owner string
	// claimWait bounds how long a claim waits for a replica's
	// acknowledgement (see WithClaimWait).
	claimWait time.Duration
	subs      *wakeSubs // shared by the copies WithHistory and WithOwner make
}

var _ Layout = (*Native)(nil)

// NewNative returns the native layout under prefix (DefaultPrefix when empty).
func NewNative(rdb redis.UniversalClient, prefix string) *Native {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Native{rdb: rdb, prefix: prefix, record: "0", claimWait: DefaultClaimWait,
		subs: &wakeSubs{want: map[string]bool{}, pending: map[string]bool{}, notify: make(chan struct{}, 1)}}
}

// WithHistory returns a layout that records every housekeeping pass,
// accepted or refused, with its token and moved count, in a capped stream
// per shard (see History). It costs one XADD per pass; chaos runs turn it on.
func (n *Native) WithHistory() *Native {
	c := *n
	c.record = "1"
	return &c
}

// WithOwner returns a layout whose housekeeping writes carry owner, the
// identity of this keeper process (its member id and a random per-process
// nonce), beside the token. The fence keeps the owner of the token it holds
// and refuses an equal token from another owner: after etcd is restored
// from a backup, two keepers can hold equal tokens. Without it the owner is
// empty, which is one identity like any other.
func (n *Native) WithOwner(owner string) *Native {
	c := *n
	c.owner = owner
	return &c
}

// DefaultClaimWait is how long a claim waits for a replica's
// acknowledgement unless WithClaimWait says otherwise.
const DefaultClaimWait = time.Second

// WithClaimWait returns a layout whose claims wait up to d for a replica to
// acknowledge them, when the shard's node has replicas (see Probe).
func (n *Native) WithClaimWait(d time.Duration) *Native {
	c := *n
	c.claimWait = d
	return &c
}

// head is the keys and arguments every housekeeping script begins with
// (see lua/lib.lua), followed by the script's own.
func (n *Native) head(k shardKeys, token int64, keys []string, args ...any) ([]string, []any) {
	return append([]string{k.Fence, k.FenceOwner, k.History, k.Deleted}, keys...),
		append([]any{token, n.owner, n.record}, args...)
}

// Unlock implements Layout.
func (n *Native) Unlock(ctx context.Context, s Shard, token int64, batch int) (PassResult, error) {
	if err := checkBatch(batch); err != nil {
		return PassResult{}, err
	}
	k := keysFor(n.prefix, s)
	keys, args := n.head(k, token, []string{k.Locked, k.Ready, k.Prio, k.Stats, k.Clean}, batch)
	res, err := nativeScripts.unlock.Run(ctx, n.rdb, keys, args...).Int64Slice()
	if err != nil {
		return PassResult{}, asError(err, s, token)
	}
	r := PassResult{Moved: int(res[0]), NextMs: res[1], NowUs: res[2]}
	r.Full = r.Moved >= batch
	r.Lags = make([]time.Duration, 0, len(res)-3)
	for _, us := range res[3:] {
		r.Lags = append(r.Lags, time.Duration(us)*time.Microsecond)
	}
	return r, nil
}

// Requeue implements Layout.
func (n *Native) Requeue(ctx context.Context, s Shard, cfg Config, token int64, batch int) (PassResult, error) {
	if err := checkBatch(batch); err != nil {
		return PassResult{}, err
	}
	k := keysFor(n.prefix, s)
	keys, args := n.head(k, token, []string{k.Inflight, k.Ready, k.Dead, k.TTL, k.Tok, k.Dlv, k.Prio, k.Meta, k.Body,
		k.Stats, k.Clean}, batch, cfg.MaxDeliveries)
	res, err := nativeScripts.requeue.Run(ctx, n.rdb, keys, args...).Int64Slice()
	if err != nil {
		return PassResult{}, asError(err, s, token)
	}
	r := PassResult{Moved: int(res[0]), NextMs: res[1], NowUs: res[2],
		Requeued: int(res[3]), DeadLettered: int(res[4]), Expired: int(res[5])}
	r.Full = r.Moved >= batch
	if res[6] >= 0 {
		r.Hints = []Due{{Kind: DueExpire, AtMs: res[6]}}
	}
	return r, nil
}

// Expire implements Layout.
func (n *Native) Expire(ctx context.Context, s Shard, token int64, batch int) (PassResult, error) {
	if err := checkBatch(batch); err != nil {
		return PassResult{}, err
	}
	k := keysFor(n.prefix, s)
	keys, args := n.head(k, token, []string{k.TTL, k.Ready, k.Locked, k.Dead, k.Body, k.Meta, k.Prio, k.Dlv,
		k.Stats, k.Clean}, batch)
	res, err := nativeScripts.expire.Run(ctx, n.rdb, keys, args...).Int64Slice()
	if err != nil {
		return PassResult{}, asError(err, s, token)
	}
	r := PassResult{Moved: int(res[0]), NextMs: res[1], NowUs: res[2], Expired: int(res[0])}
	r.Full = r.Moved >= batch
	return r, nil
}

// Trim implements Layout. NextMs is always -1: trim is due only when a
// shard goes over its cap, which the enqueue script announces.
func (n *Native) Trim(ctx context.Context, s Shard, cfg Config, token int64, batch int) (PassResult, error) {
	if err := checkBatch(batch); err != nil {
		return PassResult{}, err
	}
	k := keysFor(n.prefix, s)
	keys, args := n.head(k, token, []string{k.Ready, k.Inflight, k.Locked, k.TTL, k.Body, k.Meta, k.Prio, k.Dlv,
		k.Stats, k.Clean, k.TrimWake}, batch, cfg.MaxSize)
	res, err := nativeScripts.trim.Run(ctx, n.rdb, keys, args...).Int64Slice()
	if err != nil {
		return PassResult{}, asError(err, s, token)
	}
	return PassResult{Moved: int(res[0]), Full: res[0] > 0 && res[1] > 0 && res[3] > 0, NextMs: -1, NowUs: res[2],
		Excess: res[1]}, nil
}

// checkBatch refuses a batch the scripts were not tested at.
func checkBatch(batch int) error {
	if batch < 1 || batch > MaxBatch {
		return fmt.Errorf("%w: batch %d not in 1..%d", ErrBadConfig, batch, MaxBatch)
	}
	return nil
}

// Measure implements Layout.
func (n *Native) Measure(ctx context.Context, s Shard, token int64) (Measurement, error) {
	k := keysFor(n.prefix, s)
	keys, args := n.head(k, token, []string{k.Ready, k.Inflight, k.Locked, k.Dead, k.Stats, k.Clean})
	res, err := nativeScripts.measure.Run(ctx, n.rdb, keys, args...).Slice()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Measurement{}, asError(err, s, token)
	}
	if len(res) < 6 {
		return Measurement{}, fmt.Errorf("shard %s: measure returned %d fields", s, len(res))
	}
	m := Measurement{NowUs: toInt64(res[0]), Ready: toInt64(res[1]), Inflight: toInt64(res[2]),
		Locked: toInt64(res[3]), Dead: toInt64(res[4]), Counters: map[string]int64{}}
	if h, ok := res[5].(string); ok {
		m.HasReady = true
		m.ReadyHead, _ = strconv.ParseFloat(h, 64)
	}
	for i := 6; i+1 < len(res); i += 2 {
		m.Counters[toString(res[i])] = toInt64(res[i+1])
	}
	return m, nil
}

// Probe implements Layout: one pipeline for the shards only read, and one
// per Redis node for the claims, on one connection, so that a claim can be
// confirmed by a replica (see claimOn).
func (n *Native) Probe(ctx context.Context, reqs []ProbeRequest) ([]ProbeResult, error) {
	out := make([]ProbeResult, len(reqs))
	if len(reqs) == 0 {
		return out, nil
	}
	// Make sure the script is loaded, so the pipelines can use EVALSHA.
	if err := nativeScripts.probe.Load(ctx, n.rdb).Err(); err != nil {
		return nil, fmt.Errorf("load probe script: %w", err)
	}
	var reads, claims []int
	for i, r := range reqs {
		if r.Claim {
			claims = append(claims, i)
		} else {
			reads = append(reads, i)
		}
	}
	if len(reads) > 0 {
		var results func() []int
		_, err := n.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			results = n.probeCmds(ctx, p, reqs, reads, out)
			return nil
		})
		if err != nil && !isScriptError(err) {
			return nil, fmt.Errorf("probe %d shards: %w", len(reads), err)
		}
		results()
	}
	for node, idx := range n.byNode(ctx, reqs, claims, out) {
		n.claimOn(ctx, node, reqs, idx, out)
	}
	return out, nil
}

// probeCmds queues the probe script of reqs[i] for each i in idx on p; the
// results land in out once p has run.
func (n *Native) probeCmds(ctx context.Context, p redis.Pipeliner, reqs []ProbeRequest, idx []int, out []ProbeResult) func() []int {
	cmds := make([]*redis.Cmd, len(idx))
	for j, i := range idx {
		r := reqs[i]
		k := keysFor(n.prefix, r.Shard)
		claim := "0"
		if r.Claim {
			claim = "1"
		}
		keys, args := n.head(k, r.Token, []string{k.Locked, k.Inflight, k.TTL, k.Ready}, r.MaxSize, claim)
		cmds[j] = nativeScripts.probe.EvalSha(ctx, p, keys, args...)
	}
	// Reading the results waits for the pipeline.
	return func() []int {
		var ok []int
		for j, c := range cmds {
			i := idx[j]
			v, err := c.Int64Slice()
			if err != nil {
				out[i].Err = asError(err, reqs[i].Shard, reqs[i].Token)
				continue
			}
			out[i] = ProbeResult{LockedHead: v[0], InflightHead: v[1], TTLHead: v[2], Excess: v[3]}
			ok = append(ok, i)
		}
		return ok
	}
}

// byNode groups the claims by the Redis node that holds their shard: the
// node itself for a single server, its primary for each slot on a cluster.
// A shard whose node is unknown gets the error in out.
func (n *Native) byNode(ctx context.Context, reqs []ProbeRequest, idx []int, out []ProbeResult) map[*redis.Client][]int {
	groups := map[*redis.Client][]int{}
	if len(idx) == 0 {
		return groups
	}
	switch c := n.rdb.(type) {
	case *redis.Client:
		groups[c] = idx
	case *redis.ClusterClient:
		for _, i := range idx {
			node, err := c.MasterForKey(ctx, keysFor(n.prefix, reqs[i].Shard).Fence)
			if err != nil {
				out[i].Err = fmt.Errorf("claim %s: find its node: %w", reqs[i].Shard, err)
				continue
			}
			groups[node] = append(groups[node], i)
		}
	default:
		for _, i := range idx {
			out[i].Err = fmt.Errorf("claim %s: unsupported redis client %T", reqs[i].Shard, n.rdb)
		}
	}
	return groups
}

// claimOn runs the claims idx on node over one connection. When the node
// has replicas attached, the claims are trusted only once one replica
// acknowledged them (WAIT 1): a failover to a replica that never saw a
// fence would let the previous owner write again. A claim not acknowledged
// within the wait gets ErrClaimNotReplicated: the keeper does not count the
// shard as claimed, and claims it again.
func (n *Native) claimOn(ctx context.Context, node *redis.Client, reqs []ProbeRequest, idx []int, out []ProbeResult) {
	conn := node.Conn()
	defer conn.Close()
	var (
		results func() []int
		info    *redis.StringCmd
	)
	_, err := conn.Pipelined(ctx, func(p redis.Pipeliner) error {
		results = n.probeCmds(ctx, p, reqs, idx, out)
		info = p.Info(ctx, "replication")
		return nil
	})
	if err != nil && !isScriptError(err) {
		for _, i := range idx {
			out[i].Err = fmt.Errorf("claim %s: %w", reqs[i].Shard, err)
		}
		return
	}
	ok := results()
	if len(ok) == 0 || connectedReplicas(info.Val()) == 0 {
		return
	}
	acked, err := conn.Wait(ctx, 1, n.claimWait).Result()
	if err == nil && acked >= 1 {
		return
	}
	why := fmt.Sprintf("no replica acknowledged it within %s", n.claimWait)
	if err != nil {
		why = err.Error()
	}
	for _, i := range ok {
		out[i] = ProbeResult{Err: fmt.Errorf("%w: shard %s, token %d: %s", ErrClaimNotReplicated, reqs[i].Shard, reqs[i].Token, why)}
	}
}

// connectedReplicas reads connected_slaves from INFO replication.
func connectedReplicas(info string) int {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "connected_slaves:"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// isScriptError tells a per-shard failure inside a pipeline (reported per
// command) from a connection failure (reported for the whole pipeline).
func isScriptError(err error) bool {
	var re redis.Error
	return errors.As(err, &re)
}

// Now implements Layout.
func (n *Native) Now(ctx context.Context) (time.Time, error) {
	t, err := n.rdb.Time(ctx).Result()
	if err != nil {
		return time.Time{}, fmt.Errorf("redis TIME: %w", err)
	}
	return t, nil
}

// wakeSubs is the wake subscription state of a Native: the channels its
// owner wants, and the changes the running Wakes has yet to apply.
type wakeSubs struct {
	mu   sync.Mutex
	want map[string]bool // wake channels of watched shards
	// pending are the changes since the running Wakes last applied them
	// (true: subscribe, false: unsubscribe), so that applying them costs
	// the changes, not the tens of thousands of channels a keeper may hold.
	pending map[string]bool
	notify  chan struct{} // pending grew
}

// Watch implements Layout.
func (n *Native) Watch(shards []Shard, on bool) {
	n.subs.mu.Lock()
	for _, s := range shards {
		ch := keysFor(n.prefix, s).Wake
		if on {
			n.subs.want[ch] = true
		} else {
			delete(n.subs.want, ch)
		}
		n.subs.pending[ch] = on
	}
	n.subs.mu.Unlock()
	select {
	case n.subs.notify <- struct{}{}:
	default:
	}
}

// WakeChannel is the pub/sub channel of s's deadline hints.
func (n *Native) WakeChannel(s Shard) string { return keysFor(n.prefix, s).Wake }

// subscribeBatch bounds the channels of one SUBSCRIBE command, so taking
// over tens of thousands of shards does not build one huge command.
const subscribeBatch = 1000

// Wakes implements Layout: it subscribes to the config channel and to the
// wake channel of every watched shard, following Watch, and calls fn for
// each hint. A shard's (re)subscription is reported as a Resync for that
// shard, since pub/sub drops what it sent while nobody listened; go-redis
// resubscribes every channel by itself after a reconnect. One Wakes runs at
// a time per Native (copies from WithHistory included): the watched set is
// one keeper's.
func (n *Native) Wakes(ctx context.Context, fn func(Wake)) error {
	ps := n.rdb.Subscribe(ctx, configChannel(n.prefix))
	// Receive does not watch ctx; closing the subscription is what ends it.
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.followWatch(ctx, ps)
	}()
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer func() {
		cancel()
		stop()
		_ = ps.Close()
		wg.Wait()
	}()
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// go-redis reconnects and resubscribes by itself on the next
			// Receive; back off a little so a dead server is not hammered.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			if m.Channel == configChannel(n.prefix) {
				// Notices sent while unsubscribed are lost: read again.
				fn(Wake{ConfigChanged: true})
			} else if s, ok := shardOfWakeChannel(n.prefix, m.Channel); ok {
				fn(Wake{Shard: s, Resync: true})
			}
		case *redis.Message:
			if m.Channel == configChannel(n.prefix) {
				fn(Wake{ConfigChanged: true})
				continue
			}
			if w, ok := parseWake(m.Payload); ok {
				fn(w)
			}
		}
	}
}

// followWatch subscribes ps to every watched shard's channel, then applies
// each change Watch makes, until ctx ends.
func (n *Native) followWatch(ctx context.Context, ps *redis.PubSub) {
	// A new PubSub holds nothing yet: everything wanted is a change.
	n.subs.mu.Lock()
	n.subs.pending = make(map[string]bool, len(n.subs.want))
	for ch := range n.subs.want {
		n.subs.pending[ch] = true
	}
	n.subs.mu.Unlock()
	for {
		n.subs.mu.Lock()
		changes := n.subs.pending
		n.subs.pending = map[string]bool{}
		n.subs.mu.Unlock()
		var add, drop []string
		for ch, on := range changes {
			if on {
				add = append(add, ch)
			} else {
				drop = append(drop, ch)
			}
		}
		// A failed write leaves the channels in ps's own list, and go-redis
		// subscribes them on its next connection.
		for len(add) > 0 {
			b := add[:min(subscribeBatch, len(add))]
			add = add[len(b):]
			_ = ps.Subscribe(ctx, b...)
		}
		for len(drop) > 0 {
			b := drop[:min(subscribeBatch, len(drop))]
			drop = drop[len(b):]
			_ = ps.Unsubscribe(ctx, b...)
		}
		select {
		case <-ctx.Done():
			return
		case <-n.subs.notify:
		}
	}
}

// parseWake reads "<kind> <shard> <ms>".
func parseWake(p string) (Wake, bool) {
	f := strings.Fields(p)
	if len(f) != 3 || len(f[0]) != 1 {
		return Wake{}, false
	}
	s, err := ParseShard(f[1])
	if err != nil {
		return Wake{}, false
	}
	at, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return Wake{}, false
	}
	return Wake{Shard: s, Due: Due{Kind: DueKind(f[0][0]), AtMs: at}}, true
}

// maxSeed is the most messages one call of the seed script writes.
const maxSeed = 50_000

// SeedLocked writes count locked messages into s, for benchmarks and load
// tests: ids idPrefix+index for index in [first, first+count), message i
// unlocking at firstDueMs + i*step (Redis ms). It bypasses the wake channel
// on purpose: the keeper under test must learn of them by probing.
func (n *Native) SeedLocked(ctx context.Context, s Shard, idPrefix string, first, count int, firstDueMs int64, step time.Duration, payload []byte) error {
	k := keysFor(n.prefix, s)
	for done := 0; done < count; done += maxSeed {
		c := min(maxSeed, count-done)
		err := nativeScripts.seed.Run(ctx, n.rdb, []string{k.Deleted, k.Locked, k.Body, k.Meta, k.Prio, k.Stats},
			idPrefix, first+done, c, firstDueMs, step.Microseconds(), payload).Err()
		if err != nil {
			return fmt.Errorf("seed %s: %w", s, asError(err, s, 0))
		}
	}
	return nil
}

// HistoryEntry is one recorded housekeeping pass.
type HistoryEntry struct {
	ID       string // stream id: Redis ms time and sequence
	Task     string
	Token    int64
	Owner    string // the identity that presented Token (see WithOwner)
	Accepted bool
	Moved    int
}

// History reads a shard's recorded passes, oldest first (see WithHistory).
func (n *Native) History(ctx context.Context, s Shard) ([]HistoryEntry, error) {
	msgs, err := n.rdb.XRange(ctx, keysFor(n.prefix, s).History, "-", "+").Result()
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", s, err)
	}
	return ParseHistory(msgs), nil
}

// HistoryKey is the stream that s's passes are recorded in (see
// WithHistory), for a checker that follows it while it grows.
func (n *Native) HistoryKey(s Shard) string { return keysFor(n.prefix, s).History }

// ParseHistory reads entries of a history stream, as XRANGE returns them.
func ParseHistory(msgs []redis.XMessage) []HistoryEntry {
	out := make([]HistoryEntry, 0, len(msgs))
	for _, m := range msgs {
		e := HistoryEntry{ID: m.ID, Task: fmt.Sprint(m.Values["task"]), Accepted: fmt.Sprint(m.Values["ok"]) == "1"}
		if o, ok := m.Values["owner"].(string); ok {
			e.Owner = o
		}
		e.Token, _ = strconv.ParseInt(fmt.Sprint(m.Values["token"]), 10, 64)
		e.Moved, _ = strconv.Atoi(fmt.Sprint(m.Values["moved"]))
		out = append(out, e)
	}
	return out
}

// Fences reads the fence (highest accepted ownership token) of each shard.
func (n *Native) Fences(ctx context.Context, shards []Shard) ([]int64, error) {
	cmds := make([]*redis.StringCmd, len(shards))
	_, err := n.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, s := range shards {
			cmds[i] = p.Get(ctx, keysFor(n.prefix, s).Fence)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read fences: %w", err)
	}
	out := make([]int64, len(shards))
	for i, c := range cmds {
		out[i], _ = strconv.ParseInt(c.Val(), 10, 64)
	}
	return out, nil
}
