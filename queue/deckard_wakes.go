package queue

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Deckard's clients publish no hints: the Deckard layout learns of the
// deadlines they set from Redis keyspace notifications, or by polling.
//
// Keyspace (WakeKeyspace): for every watched queue, keeper subscribes to the
// keyspace channels of its tmp, lock_ack and lock_nack keys (and ready, to
// know when to measure again) on the Redis node that holds it: on a cluster,
// one subscription per primary, since keyspace notifications stay on their
// node. A write that can add a member (zadd, zincr, z*store) makes keeper
// read that key's head (ZRANGE 0 0, batched at most once a millisecond) and
// deliver it as a wake, so a deadline earlier than every known one is
// scheduled within about a millisecond plus a round trip. A subscription
// (re)established delivers a Resync: events published while keeper was not
// listening are lost, so the queue is probed again.
//
// Poll (WakePoll), for a Redis whose notifications cannot be turned on: each
// watched queue's earliest deadlines and pool sizes are read (deckard_probe,
// read-only) every PollMin while they change, and every time they did not
// change, at twice the interval, up to PollMax. A deadline earlier than every
// known one is thus seen within the queue's current interval: PollMin on a
// busy queue, up to PollMax on one that sat still. Deadlines a pass or a
// poll has seen are met to the millisecond either way: each pass returns the
// pool's next deadline. The cost is one command per watched queue per
// interval: an idle fleet pays queues/PollMax commands a second.

// Wake modes of the Deckard layout.
const (
	WakeKeyspace = "keyspace"
	WakePoll     = "poll"
)

// DeckardWakeConfig tunes how the Deckard layout wakes. Zero values take the
// defaults noted.
type DeckardWakeConfig struct {
	// Mode is WakeKeyspace or WakePoll (default); SetupKeyspaceEvents
	// chooses it.
	Mode string
	// KeepEvents, with WakeKeyspace, makes keeper check each primary's
	// notify-keyspace-events every 30s and set it again when it lost
	// keeper's flags (a restarted Redis forgets a CONFIG SET that was not
	// saved); the queues of that node are then probed again.
	KeepEvents bool
	// PollMin and PollMax bound the adaptive poll interval; defaults 50ms and
	// 1s (Deckard's own housekeeper runs every second).
	PollMin, PollMax time.Duration
	Logger           *slog.Logger
}

// Poll interval defaults.
const (
	DefaultPollMin = 50 * time.Millisecond
	DefaultPollMax = time.Second
)

func (c DeckardWakeConfig) withDefaults() DeckardWakeConfig {
	if c.Mode == "" {
		c.Mode = WakePoll
	}
	if c.PollMin <= 0 {
		c.PollMin = DefaultPollMin
	}
	if c.PollMax <= 0 {
		c.PollMax = DefaultPollMax
	}
	c.PollMax = max(c.PollMax, c.PollMin)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Keyspace event modes (deckard.keyspace_events).
const (
	// KeyspaceAuto sets notify-keyspace-events when CONFIG is allowed, else
	// polls.
	KeyspaceAuto = "auto"
	// KeyspaceOn trusts that the operator enabled the events (a managed
	// Redis's parameter group) and never runs CONFIG SET; a CONFIG GET
	// that works and shows them off is refused.
	KeyspaceOn = "on"
	// KeyspaceOff polls.
	KeyspaceOff = "off"
)

// keyspaceFlags are the notify-keyspace-events classes keeper needs:
// keyspace channels (K) of sorted set commands (z).
const keyspaceFlags = "Kz"

// hasKeyspaceFlags reports whether flags (as CONFIG GET returns them)
// include keyspace events of sorted sets.
func hasKeyspaceFlags(flags string) bool {
	return strings.Contains(flags, "K") && (strings.Contains(flags, "z") || strings.Contains(flags, "A"))
}

// SetupKeyspaceEvents decides the wake mode for a keyspace_events setting
// (KeyspaceAuto, KeyspaceOn, KeyspaceOff) on every primary of rdb, setting
// notify-keyspace-events when auto allows it, and says why in plain words.
// It fails only when the setting is on and a readable config shows the
// events off, or when Redis cannot be reached.
func SetupKeyspaceEvents(ctx context.Context, rdb redis.UniversalClient, mode string) (wake, why string, err error) {
	switch mode {
	case KeyspaceOff:
		return WakePoll, "deckard.keyspace_events is off", nil
	case KeyspaceAuto, KeyspaceOn:
	default:
		return "", "", fmt.Errorf("%w: deckard.keyspace_events %q: want auto, on or off", ErrBadConfig, mode)
	}
	var reasons []string
	poll := false
	err = eachPrimary(ctx, rdb, func(ctx context.Context, node *redis.Client) error {
		addr := node.Options().Addr
		set, flags, err := ensureKeyspaceFlags(ctx, node, mode == KeyspaceAuto)
		var re redis.Error
		switch {
		case err != nil && errors.As(err, &re):
			// CONFIG refused (renamed, disabled or not permitted).
			if mode == KeyspaceAuto {
				poll = true
				reasons = append(reasons, fmt.Sprintf("%s: CONFIG refused (%v)", addr, err))
			} else {
				reasons = append(reasons, fmt.Sprintf("%s: CONFIG refused, trusting deckard.keyspace_events: on", addr))
			}
			return nil
		case err != nil:
			return fmt.Errorf("%s: %w", addr, err)
		case !hasKeyspaceFlags(flags):
			return fmt.Errorf("%w: %s has notify-keyspace-events %q, without keyspace events of sorted sets (%s); set them, or deckard.keyspace_events: auto or off",
				ErrBadConfig, addr, flags, keyspaceFlags)
		case set:
			reasons = append(reasons, fmt.Sprintf("%s: notify-keyspace-events set to %q", addr, flags))
		default:
			reasons = append(reasons, fmt.Sprintf("%s: notify-keyspace-events already %q", addr, flags))
		}
		return nil
	})
	if err != nil {
		return "", "", fmt.Errorf("keyspace events: %w", err)
	}
	if poll {
		return WakePoll, strings.Join(reasons, "; "), nil
	}
	return WakeKeyspace, strings.Join(reasons, "; "), nil
}

// ensureKeyspaceFlags reads a node's notify-keyspace-events and, when
// allowed and needed, adds keeper's flags to it (keeping every other flag
// someone set). It returns whether it set them, and the flags now.
func ensureKeyspaceFlags(ctx context.Context, node *redis.Client, set bool) (bool, string, error) {
	v, err := node.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		return false, "", err
	}
	flags := v["notify-keyspace-events"]
	if hasKeyspaceFlags(flags) || !set {
		return false, flags, nil
	}
	for _, f := range keyspaceFlags {
		if !strings.ContainsRune(flags, f) {
			flags += string(f)
		}
	}
	if err := node.ConfigSet(ctx, "notify-keyspace-events", flags).Err(); err != nil {
		return false, "", err
	}
	return true, flags, nil
}

// eachPrimary runs fn on the server, or on every primary of a cluster.
func eachPrimary(ctx context.Context, rdb redis.UniversalClient, fn func(context.Context, *redis.Client) error) error {
	switch c := rdb.(type) {
	case *redis.Client:
		return fn(ctx, c)
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	}
	return fmt.Errorf("unsupported redis client %T", rdb)
}

// deckardWakes is the wake side of a Deckard layout: the watched queues and
// how they are woken.
type deckardWakes struct {
	d   *Deckard
	cfg DeckardWakeConfig

	mu      sync.Mutex
	want    map[Shard]bool
	pending map[Shard]bool // changes since the running Wakes applied them
	notify  chan struct{}
}

func newDeckardWakes(d *Deckard, cfg DeckardWakeConfig) *deckardWakes {
	return &deckardWakes{d: d, cfg: cfg.withDefaults(), want: map[Shard]bool{}, pending: map[Shard]bool{},
		notify: make(chan struct{}, 1)}
}

func (w *deckardWakes) watch(shards []Shard, on bool) {
	w.mu.Lock()
	for _, s := range shards {
		if on {
			w.want[s] = true
		} else {
			delete(w.want, s)
		}
		w.pending[s] = on
	}
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// onlyWatched is fn for the queues still watched when it is called.
func (w *deckardWakes) onlyWatched(fn func(Wake)) func(Wake) {
	return func(x Wake) {
		w.mu.Lock()
		on := w.want[x.Shard]
		w.mu.Unlock()
		if on {
			fn(x)
		}
	}
}

// changes takes the changes since the last call; the first call of a Wakes
// (all true) takes every watched queue.
func (w *deckardWakes) changes(all bool) map[Shard]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if all {
		w.pending = make(map[Shard]bool, len(w.want))
		for s := range w.want {
			w.pending[s] = true
		}
	}
	c := w.pending
	w.pending = map[Shard]bool{}
	return c
}

func (w *deckardWakes) run(ctx context.Context, fn func(Wake)) error {
	// Wakes of a queue no longer watched are dropped, however late.
	fn = w.onlyWatched(fn)
	if w.cfg.Mode == WakeKeyspace {
		return w.runKeyspace(ctx, fn)
	}
	return w.runPoll(ctx, fn)
}

// maxWakeMs bounds the deadlines delivered as wakes (about the year 2109):
// a score past it is no deadline anyone waits for, and keeper's timer
// arithmetic would overflow on it. The safety sweep still reads it.
const maxWakeMs = 1 << 42

// dueWakes delivers a queue's heads as wakes.
func dueWakes(fn func(Wake), s Shard, lockedHead, tmpHead int64) {
	for _, h := range [...]struct {
		task Task
		at   int64
	}{{TaskUnlock, lockedHead}, {TaskRequeue, tmpHead}} {
		if h.at >= 0 && h.at < maxWakeMs {
			fn(Wake{Shard: s, Due: Due{Task: h.task, AtMs: h.at}})
		}
	}
}

// polled is one watched queue in the poll schedule.
type polled struct {
	s     Shard
	next  time.Time
	every time.Duration
	last  deckardProbe
	seen  bool
	idx   int
}

type pollHeap []*polled

func (h pollHeap) Len() int           { return len(h) }
func (h pollHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h pollHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].idx, h[j].idx = i, j
}
func (h *pollHeap) Push(x any) {
	p := x.(*polled)
	p.idx = len(*h)
	*h = append(*h, p)
}
func (h *pollHeap) Pop() any {
	old := *h
	p := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	p.idx = -1
	return p
}

// pollChunk bounds one poll pipeline.
const pollChunk = 500

// runPoll polls the watched queues' heads and sizes until ctx ends (see the
// comment at the top of this file).
func (w *deckardWakes) runPoll(ctx context.Context, fn func(Wake)) error {
	byShard := map[Shard]*polled{}
	var h pollHeap
	timer := time.NewTimer(0)
	defer timer.Stop()
	apply := func(all bool) {
		now := time.Now()
		for s, on := range w.changes(all) {
			p, ok := byShard[s]
			switch {
			case on && !ok:
				// The keeper probes a queue it takes at once: first poll
				// after PollMin.
				p = &polled{s: s, next: now.Add(w.cfg.PollMin), every: w.cfg.PollMin}
				byShard[s] = p
				heap.Push(&h, p)
			case !on && ok:
				heap.Remove(&h, p.idx)
				delete(byShard, s)
			}
		}
	}
	apply(true)
	for {
		wait := time.Hour
		if len(h) > 0 {
			wait = time.Until(h[0].next)
		}
		timer.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return nil
		case <-w.notify:
			apply(false)
			continue
		case <-timer.C:
		}
		now := time.Now()
		var due []*polled
		for len(h) > 0 && !h[0].next.After(now) && len(due) < pollChunk {
			due = append(due, heap.Pop(&h).(*polled))
		}
		w.pollOnce(ctx, fn, due)
		now = time.Now()
		for _, p := range due {
			if _, ok := byShard[p.s]; !ok {
				continue
			}
			p.next = now.Add(p.every)
			heap.Push(&h, p)
		}
	}
}

// pollOnce reads the heads and sizes of due in one pipeline, delivers the
// heads as wakes and a measure wake for each queue that changed, and sets
// each queue's next interval.
func (w *deckardWakes) pollOnce(ctx context.Context, fn func(Wake), due []*polled) {
	if len(due) == 0 {
		return
	}
	calls := make([]call, len(due))
	for i, p := range due {
		calls[i] = w.d.fenced(deckardProbeScript, p.s, 0, claimArg(false), "1")
	}
	for i, cmd := range runAll(ctx, w.d.rdb, calls) {
		p := due[i]
		r, err := decodeDeckardProbe(cmd)
		if err != nil {
			// Redis unreachable or a broken queue: look again later, as
			// for an unchanged queue.
			p.every = min(2*p.every, w.cfg.PollMax)
			continue
		}
		dueWakes(fn, p.s, r.LockedHead, r.TmpHead)
		if p.seen && r == p.last {
			p.every = min(2*p.every, w.cfg.PollMax)
			continue
		}
		if p.seen {
			fn(Wake{Shard: p.s, Due: Due{Task: TaskMeasure}})
		}
		p.last, p.seen, p.every = r, true, w.cfg.PollMin
	}
}
