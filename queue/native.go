package queue

import (
	"cmp"
	"context"
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
	// perCall is how many shards one call of a multi-shard pass script
	// takes (passShardsPerCall; benchmarks vary it).
	perCall int
	subs    *wakeSubs // shared by the copies WithHistory and WithOwner make
}

var _ Layout = (*Native)(nil)

// NewNative returns the native layout under prefix (DefaultPrefix when empty).
func NewNative(rdb redis.UniversalClient, prefix string) *Native {
	prefix = cmp.Or(prefix, DefaultPrefix)
	return &Native{rdb: rdb, prefix: prefix, record: "0", claimWait: DefaultClaimWait, perCall: passShardsPerCall,
		subs: &wakeSubs{want: map[string]bool{}, pending: map[string]bool{}, notify: make(chan struct{}, 1)}}
}

// WithHistory returns a layout that records every housekeeping pass,
// accepted or refused, with its token and moved count, in a capped stream
// per shard (see Inspector.History). It costs one XADD per pass; chaos runs
// turn it on.
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

// passShardsPerCall is how many shards one call of a pass script takes: the
// due passes of many shards then cost one script run per few dozen of them
// instead of one each, which spares Redis the run's own cost (about 7 µs
// here: EVALSHA and lib.lua's definitions) but not the ~3 µs of each
// redis.call inside, most of what a pass costs. More shards a call would
// save little more and hold Redis, which serves no one else while a script
// runs, longer at a time.
const passShardsPerCall = 32

// Passes implements Layout: one pipeline for all the passes (on a cluster
// client, one per node, in parallel), the passes of one task joined into
// calls of up to perCall shards (see groupPasses).
func (n *Native) Passes(ctx context.Context, reqs []PassRequest) []PassOutcome {
	out := make([]PassOutcome, len(reqs))
	idx := make([]int, 0, len(reqs))
	for i, r := range reqs {
		if r.Task >= NumTasks {
			out[i].Err = fmt.Errorf("shard %s: unknown task %d", r.Shard, r.Task)
			continue
		}
		if r.Task != TaskMeasure {
			if err := checkBatch(r.Batch); err != nil {
				out[i].Err = err
				continue
			}
		}
		idx = append(idx, i)
	}
	_, bySlot := n.rdb.(*redis.ClusterClient)
	groups := groupPasses(reqs, idx, n.perCall, func(s Shard) int {
		if !bySlot {
			return 0
		}
		return keySlot(keysFor(n.prefix, s).Fence)
	})
	calls := joinCalls(groups, func(i int) call {
		r := reqs[i]
		return n.fenced(passScripts[r.Task], r.Shard, r.Token, passArgs(r)...)
	})
	for j, cmd := range runAll(ctx, n.rdb, calls) {
		g := groups[j]
		replies := []*redis.Cmd{cmd}
		if passScripts[reqs[g[0]].Task].multi {
			replies = splitReply(ctx, cmd, len(g))
		}
		for k, i := range g {
			r := reqs[i]
			o, err := decodePass(r, replies[k])
			o.Err = asError(err, r.Shard, r.Token)
			out[i] = o
		}
	}
	return out
}

// groupPasses puts the passes reqs[i], i in idx, into script calls (see
// groupCalls): a pass of a multi-shard script joins the open call of its
// task and of its shard's hash slot (slot), every other pass is a call of
// its own.
func groupPasses(reqs []PassRequest, idx []int, per int, slot func(Shard) int) [][]int {
	type openKey struct {
		task Task
		slot int
	}
	return groupCalls(idx, per, func(i int) Shard { return reqs[i].Shard }, func(i int) (openKey, bool) {
		r := reqs[i]
		if !passScripts[r.Task].multi {
			return openKey{}, false
		}
		return openKey{r.Task, slot(r.Shard)}, true
	})
}

// fenced is a call of a housekeeping script on s: the fence head's
// arguments, then args.
func (n *Native) fenced(sc *script[shardKeys], s Shard, token int64, args ...any) call {
	return sc.on(keysFor(n.prefix, s), append([]any{token, n.owner, n.record}, args...)...)
}

// checkBatch refuses a batch the scripts were not tested at.
func checkBatch(batch int) error {
	if batch < 1 || batch > MaxBatch {
		return fmt.Errorf("%w: batch %d not in 1..%d", ErrBadConfig, batch, MaxBatch)
	}
	return nil
}

// Probe implements Layout (see prober).
func (n *Native) Probe(ctx context.Context, reqs []ProbeRequest) ([]ProbeResult, error) {
	p := n.prober(probeShardsPerCall)
	// On a cluster one call's shards share a hash slot: a cluster refuses
	// a script whose keys span slots.
	_, p.bySlot = n.rdb.(*redis.ClusterClient)
	return p.probe(ctx, reqs)
}

// prober probes perCall shards per script call.
func (n *Native) prober(perCall int) prober {
	return prober{rdb: n.rdb, claimWait: n.claimWait, decode: decodeProbe, perCall: perCall,
		node: func(s Shard) string { return keysFor(n.prefix, s).Fence },
		call: func(r ProbeRequest) call {
			return n.fenced(probeScript, r.Shard, r.Token, r.MaxSize, claimArg(r.Claim))
		}}
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
		ch := wakeChannel(n.prefix, s)
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
		msg, err := receive(ctx, ps)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
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

// receive is ps.Receive. After an error it waits a little before it
// returns it: go-redis reconnects and resubscribes by itself on the next
// Receive, and a dead server is not hammered.
func receive(ctx context.Context, ps *redis.PubSub) (any, error) {
	msg, err := ps.Receive(ctx)
	if err != nil && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	return msg, err
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
	task, ok := taskOfCode(f[0][0])
	if !ok {
		return Wake{}, false
	}
	return Wake{Shard: s, Due: Due{Task: task, AtMs: at}}, true
}
