package queue

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// The keyspace side of deckardWakes (see deckard_wakes.go).

// Pools of a Deckard queue, as their keys end.
const (
	poolReady = iota
	poolTmp
	poolLockAck
	poolLockNack
)

// addEvents are the sorted set events that can put a member in a key with
// a score earlier than the key's head: only they make keeper read it.
var addEvents = map[string]bool{"zadd": true, "zincr": true, "zunionstore": true, "zinterstore": true,
	"zdiffstore": true, "zrangestore": true}

// subscribeShards bounds the queues of one SUBSCRIBE (four channels each),
// so taking over thousands of queues builds no huge command, and a queue's
// channels are never split across two.
const subscribeShards = 250

// keyspaceRecheck is how often the subscriptions are matched against the
// cluster's slots again, and the events' config checked (KeepEvents).
const keyspaceRecheck = 30 * time.Second

// measureEvery bounds the measure wakes of one queue: its changes within a
// second ask for one measure.
const measureEvery = time.Second

// keyspaceDB is the database number the keyspace channels name: a cluster
// has only database 0.
func keyspaceDB(rdb redis.UniversalClient) int {
	if c, ok := rdb.(*redis.Client); ok {
		return c.Options().DB
	}
	return 0
}

// channels are the keyspace channels of s, ready last: its subscription's
// confirmation means the queue's four are in place.
func (w *deckardWakes) channels(base string, s Shard) []string {
	k := w.d.keys(s)
	return []string{base + k.Tmp, base + k.LockAck, base + k.LockNack, base + k.Ready}
}

// parseKey is the queue and pool of a Deckard key.
func (w *deckardWakes) parseKey(key string) (Shard, int, bool) {
	rest, ok := strings.CutPrefix(key, w.d.prefix+":queue:{")
	if !ok {
		return Shard{}, 0, false
	}
	q, suffix, ok := strings.Cut(rest, "}")
	if !ok {
		return Shard{}, 0, false
	}
	p, ok := watchedPools[suffix]
	return Shard{Queue: q}, p, ok
}

// watchedPools are the pools whose keyspace channels keeper follows, by
// key suffix.
var watchedPools = map[string]int{"": poolReady, ":tmp": poolTmp, ":lock_ack": poolLockAck, ":lock_nack": poolLockNack}

// keyspaceSub is the subscription on one Redis node.
type keyspaceSub struct {
	node   *redis.Client
	ps     *redis.PubSub
	shards map[Shard]bool
}

// runKeyspace follows the watched queues' keyspace channels until ctx ends.
func (w *deckardWakes) runKeyspace(ctx context.Context, fn func(Wake)) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	subs := map[string]*keyspaceSub{} // by node address
	where := map[Shard]string{}
	defer func() {
		cancel()
		for _, sub := range subs {
			_ = sub.ps.Close()
		}
		wg.Wait()
	}()
	base := fmt.Sprintf("__keyspace@%d__:", keyspaceDB(w.d.rdb))
	heads := &headReader{rdb: w.d.rdb, fn: fn, want: map[string]headKey{}, kick: make(chan struct{}, 1)}
	dirty := &dirtySet{fn: fn, set: map[Shard]bool{}}
	wg.Add(2)
	go func() { defer wg.Done(); heads.run(ctx) }()
	go func() { defer wg.Done(); dirty.run(ctx) }()

	subscribe := func(addr string, node *redis.Client, ss []Shard) {
		sub := subs[addr]
		if sub == nil {
			sub = &keyspaceSub{node: node, ps: node.Subscribe(ctx), shards: map[Shard]bool{}}
			subs[addr] = sub
			// Its reader starts once the first channels are asked for.
			defer func() {
				wg.Add(1)
				go func() { defer wg.Done(); w.readNode(ctx, sub, base, heads, dirty, fn) }()
			}()
		}
		for len(ss) > 0 {
			b := ss[:min(subscribeShards, len(ss))]
			ss = ss[len(b):]
			var chans []string
			for _, s := range b {
				sub.shards[s] = true
				where[s] = addr
				chans = append(chans, w.channels(base, s)...)
			}
			// A failed write leaves the channels in ps's own list, and
			// go-redis subscribes them on its next connection.
			_ = sub.ps.Subscribe(ctx, chans...)
		}
	}
	unsubscribe := func(s Shard) {
		addr, ok := where[s]
		if !ok {
			return
		}
		delete(where, s)
		sub := subs[addr]
		delete(sub.shards, s)
		_ = sub.ps.Unsubscribe(ctx, w.channels(base, s)...)
	}
	apply := func(changes map[Shard]bool) {
		add := map[string][]Shard{}
		nodes := map[string]*redis.Client{}
		for s, on := range changes {
			unsubscribe(s)
			if !on {
				continue
			}
			node, err := w.nodeOf(ctx, s)
			if err != nil {
				// Not placed: tried again at the next recheck.
				w.cfg.Logger.Warn("keyspace events: cannot find the node of a queue; retrying", "queue", s.Queue,
					"shard", s.String(), "err", err)
				continue
			}
			addr := node.Options().Addr
			nodes[addr] = node
			add[addr] = append(add[addr], s)
		}
		for addr, ss := range add {
			subscribe(addr, nodes[addr], ss)
		}
	}
	apply(w.changes(true))
	tick := time.NewTicker(keyspaceRecheck)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.notify:
			apply(w.changes(false))
		case <-tick.C:
			// Queues whose slot moved to another primary (or that could
			// not be placed) are subscribed again where they are now.
			moved := map[Shard]bool{}
			w.mu.Lock()
			for s := range w.want {
				moved[s] = true
			}
			w.mu.Unlock()
			if _, cluster := w.d.rdb.(*redis.ClusterClient); cluster {
				for s := range moved {
					if node, err := w.nodeOf(ctx, s); err == nil && where[s] == node.Options().Addr {
						delete(moved, s)
					}
				}
			} else {
				for s := range where {
					delete(moved, s)
				}
			}
			apply(moved)
			if w.cfg.KeepEvents {
				for _, sub := range subs {
					w.keepEvents(ctx, sub, fn)
				}
			}
		}
	}
}

// nodeOf is the client of the node that holds s's keys.
func (w *deckardWakes) nodeOf(ctx context.Context, s Shard) (*redis.Client, error) {
	switch c := w.d.rdb.(type) {
	case *redis.Client:
		return c, nil
	case *redis.ClusterClient:
		return c.MasterForKey(ctx, w.d.keys(s).Tmp)
	}
	return nil, fmt.Errorf("unsupported redis client %T", w.d.rdb)
}

// keepEvents sets the node's keyspace events again if it lost them (a
// restart forgets a CONFIG SET not saved), and has the node's queues probed
// again: events were lost meanwhile.
func (w *deckardWakes) keepEvents(ctx context.Context, sub *keyspaceSub, fn func(Wake)) {
	set, flags, err := ensureKeyspaceFlags(ctx, sub.node, true)
	if err != nil || !set {
		return
	}
	w.cfg.Logger.Warn("keyspace events were off on a node (restarted?); set again, its queues probed again",
		"node", sub.node.Options().Addr, "notify_keyspace_events", flags)
	for s := range sub.shards {
		fn(Wake{Shard: s, Resync: true})
	}
}

// readNode receives one node's events until ctx ends.
func (w *deckardWakes) readNode(ctx context.Context, sub *keyspaceSub, base string, heads *headReader, dirty *dirtySet, fn func(Wake)) {
	stop := context.AfterFunc(ctx, func() { _ = sub.ps.Close() })
	defer stop()
	lost := false
	for {
		msg, err := receive(ctx, sub.ps)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			lost = true
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			if lost && w.cfg.KeepEvents {
				// Back after a lost connection, perhaps to a restarted
				// server: its events config first, then the Resyncs.
				lost = false
				_, _, _ = ensureKeyspaceFlags(ctx, sub.node, true)
			}
			if s, pool, ok := w.parseKey(strings.TrimPrefix(m.Channel, base)); ok && pool == poolReady {
				fn(Wake{Shard: s, Resync: true})
			}
		case *redis.Message:
			key := strings.TrimPrefix(m.Channel, base)
			s, pool, ok := w.parseKey(key)
			if !ok {
				continue
			}
			dirty.mark(s)
			if pool != poolReady && addEvents[m.Payload] {
				task := TaskUnlock
				if pool == poolTmp {
					task = TaskRequeue
				}
				heads.add(key, headKey{shard: s, task: task})
			}
		}
	}
}

// headKey is a key whose head a headReader reads, and what its head is.
type headKey struct {
	shard Shard
	task  Task
}

// headReader reads the heads of keys that events named, all of them in one
// pipeline at most once a millisecond, and delivers each as a wake.
type headReader struct {
	rdb  redis.UniversalClient
	fn   func(Wake)
	mu   sync.Mutex
	want map[string]headKey
	kick chan struct{}
}

// headRound is the shortest time between two rounds of head reads: under
// a storm of events on a busy queue, one read per key per round.
const headRound = time.Millisecond

func (h *headReader) add(key string, k headKey) {
	h.mu.Lock()
	h.want[key] = k
	h.mu.Unlock()
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

func (h *headReader) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.kick:
		}
		start := time.Now()
		h.mu.Lock()
		want := h.want
		h.want = make(map[string]headKey, len(want))
		h.mu.Unlock()
		keys := make([]string, 0, len(want))
		cmds := make([]*redis.ZSliceCmd, 0, len(want))
		_, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for key := range want {
				keys = append(keys, key)
				cmds = append(cmds, p.ZRangeWithScores(ctx, key, 0, 0))
			}
			return nil
		})
		for i, c := range cmds {
			k := want[keys[i]]
			if err != nil && c.Err() != nil {
				// Not read: have the queue probed instead.
				h.fn(Wake{Shard: k.shard, Resync: true})
				continue
			}
			if z := c.Val(); len(z) == 1 {
				at := int64(max(z[0].Score, 0))
				if z[0].Score < maxWakeMs {
					h.fn(Wake{Shard: k.shard, Due: Due{Task: k.task, AtMs: at}})
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(headRound - time.Since(start)):
		}
	}
}

// dirtySet turns change events into measure wakes, at most one per queue per
// measureEvery.
type dirtySet struct {
	fn  func(Wake)
	mu  sync.Mutex
	set map[Shard]bool
}

func (d *dirtySet) mark(s Shard) {
	d.mu.Lock()
	d.set[s] = true
	d.mu.Unlock()
}

func (d *dirtySet) run(ctx context.Context) {
	t := time.NewTicker(measureEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		set := d.set
		d.set = map[Shard]bool{}
		d.mu.Unlock()
		for s := range set {
			d.fn(Wake{Shard: s, Due: Due{Task: TaskMeasure}})
		}
	}
}
