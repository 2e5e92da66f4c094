package queue

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

func TestUnlockRestoresPriorityOldestFirst(t *testing.T) {
	e := newEnv(t)
	e.create("u", Config{})
	s := Shard{"u", 0}
	for i, id := range []string{"a", "b", "c"} {
		e.enqueue("u", Message{ID: id, Priority: ptr(int64(100 + i))})
	}
	ds := e.pull("u", 3, time.Minute)
	for i, d := range ds {
		// a: 30ms, b: 10ms, c: one hour
		lock := []time.Duration{30 * time.Millisecond, 10 * time.Millisecond, time.Hour}[i]
		if _, err := e.c.Nack(e.ctx, d, NackOptions{LockFor: lock}); err != nil {
			t.Fatal(err)
		}
	}
	due := e.redisNowMs() + 30
	waitUntil(t, 5*time.Second, "both short locks due", func() bool { return e.redisNowMs() > due })
	r, err := unlockPass(e.n, e.ctx, s, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	if r.Moved != 1 || !r.Full {
		t.Fatalf("batch of 1 moved %d full=%v", r.Moved, r.Full)
	}
	if got, _ := e.rdb.ZRange(e.ctx, e.keys(s).Ready, 0, -1).Result(); len(got) != 1 || got[0] != "b" {
		t.Fatalf("oldest due first: ready = %v, want [b]", got)
	}
	r, err = unlockPass(e.n, e.ctx, s, 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	if r.Moved != 1 || r.Full || len(r.Lags) != 1 || r.Lags[0] <= 0 {
		t.Fatalf("second pass %+v", r)
	}
	if wantNext := e.redisNowMs() + int64(time.Hour/time.Millisecond); r.NextMs < wantNext-1000 || r.NextMs > wantNext+1000 {
		t.Fatalf("next due %d, want about an hour from now", r.NextMs)
	}
	scores, _ := e.rdb.ZRangeWithScores(e.ctx, e.keys(s).Ready, 0, -1).Result()
	if len(scores) != 2 || scores[0].Member != "a" || scores[0].Score != 100 || scores[1].Score != 101 {
		t.Fatalf("restored scores %v", scores)
	}
}

func TestRequeueAndDeadLetter(t *testing.T) {
	e := newEnv(t)
	e.create("r", Config{MaxDeliveries: 2})
	s := Shard{"r", 0}
	e.enqueue("r", Message{ID: "m"})
	d1 := e.pull("r", 1, 20*time.Millisecond)[0]
	waitUntil(t, 5*time.Second, "lease expiry", func() bool { return e.redisNowMs() > d1.LeaseDeadline.UnixMilli() })
	r, err := requeuePass(e.n, e.ctx, s, Config{MaxDeliveries: 2}, 1, 100)
	if err != nil || r.Requeued != 1 || r.DeadLettered != 0 {
		t.Fatalf("requeue = %+v, %v", r, err)
	}
	// The consumer whose lease was recovered now holds a stale token.
	if err := e.c.Ack(e.ctx, d1); !errors.Is(err, ErrStale) {
		t.Fatalf("ack after recovery = %v, want ErrStale", err)
	}
	d2 := e.pull("r", 1, 20*time.Millisecond)[0]
	if d2.Deliveries != 2 || d2.Token == d1.Token {
		t.Fatalf("redelivery %+v", d2)
	}
	if err := e.c.Ack(e.ctx, d1); !errors.Is(err, ErrStale) {
		t.Fatalf("old token acked the new delivery: %v", err)
	}
	waitUntil(t, 5*time.Second, "lease expiry", func() bool { return e.redisNowMs() > d2.LeaseDeadline.UnixMilli() })
	r, err = requeuePass(e.n, e.ctx, s, Config{MaxDeliveries: 2}, 1, 100)
	if err != nil || r.DeadLettered != 1 || r.NextMs != -1 {
		t.Fatalf("requeue at max deliveries = %+v, %v", r, err)
	}
	info, _ := e.c.Inspect(e.ctx, "r", "m")
	if info.State != StateDead {
		t.Fatalf("state %s, want dead", info.State)
	}
}

func TestExpireAndTTLOfInflight(t *testing.T) {
	e := newEnv(t)
	e.create("e", Config{})
	s := Shard{"e", 0}
	e.enqueue("e", Message{ID: "ready", TTL: 20 * time.Millisecond})
	e.enqueue("e", Message{ID: "locked", TTL: 20 * time.Millisecond, Delay: time.Hour})
	e.enqueue("e", Message{ID: "busy", TTL: 20 * time.Millisecond, Priority: ptr(int64(-1))})
	e.enqueue("e", Message{ID: "forever"})
	busy := e.pull("e", 1, 30*time.Millisecond)[0]
	if busy.ID != "busy" {
		t.Fatalf("pulled %s", busy.ID)
	}
	now := e.redisNowMs()
	waitUntil(t, 5*time.Second, "ttl", func() bool { return e.redisNowMs() > now+40 })
	r, err := expirePass(e.n, e.ctx, s, 1, 100)
	if err != nil || r.Moved != 2 || r.NextMs != -1 {
		t.Fatalf("expire = %+v, %v", r, err)
	}
	// The in-flight one is not dropped under its consumer; it goes when its
	// lease ends.
	if _, err := e.c.Inspect(e.ctx, "e", "busy"); err != nil {
		t.Fatalf("in-flight message dropped by expire: %v", err)
	}
	rq, err := requeuePass(e.n, e.ctx, s, Config{}, 1, 100)
	if err != nil || rq.Expired != 1 {
		t.Fatalf("requeue of an expired lease = %+v, %v", rq, err)
	}
	st, _ := e.c.Stats(e.ctx, "e")
	if st.Ready != 1 || st.Inflight+st.Locked+st.Dead != 0 || st.Counters.Expired != 3 {
		t.Fatalf("stats %+v", st)
	}
	if n, _ := e.rdb.HLen(e.ctx, e.keys(s).Body).Result(); n != 1 {
		t.Fatalf("%d bodies left, want 1", n)
	}
}

func TestTrimDropsOldestReady(t *testing.T) {
	e := newEnv(t)
	cfg := Config{MaxSize: 3}
	e.create("t", cfg)
	s := Shard{"t", 0}
	for i := 0; i < 6; i++ {
		e.enqueue("t", Message{ID: string(rune('a' + i)), Priority: ptr(int64(i))})
	}
	e.pull("t", 1, time.Hour) // "a" in flight counts but is never trimmed
	r, err := trimPass(e.n, e.ctx, s, cfg, 1, 2)
	if err != nil || r.Moved != 2 || !r.Full {
		t.Fatalf("trim = %+v, %v", r, err)
	}
	r, err = trimPass(e.n, e.ctx, s, cfg, 1, 2)
	if err != nil || r.Moved != 1 || r.Full {
		t.Fatalf("second trim = %+v, %v", r, err)
	}
	ready, _ := e.rdb.ZRange(e.ctx, e.keys(s).Ready, 0, -1).Result()
	if len(ready) != 2 || ready[0] != "e" || ready[1] != "f" {
		t.Fatalf("ready after trim %v, want [e f]", ready)
	}
	st, _ := e.c.Stats(e.ctx, "t")
	if st.Counters.Trimmed != 3 {
		t.Fatalf("trimmed counter %d", st.Counters.Trimmed)
	}
}

func TestFenceRefusesLowerTokens(t *testing.T) {
	e := newEnv(t)
	e.create("f", Config{})
	s := Shard{"f", 0}
	e.enqueue("f", Message{ID: "x", Delay: time.Millisecond})
	if _, err := unlockPass(e.n, e.ctx, s, 10, 100); err != nil {
		t.Fatal(err)
	}
	before := e.snapshot()
	for name, call := range map[string]func() error{
		"unlock":  func() error { _, err := unlockPass(e.n, e.ctx, s, 9, 100); return err },
		"requeue": func() error { _, err := requeuePass(e.n, e.ctx, s, Config{}, 9, 100); return err },
		"expire":  func() error { _, err := expirePass(e.n, e.ctx, s, 9, 100); return err },
		"trim":    func() error { _, err := trimPass(e.n, e.ctx, s, Config{MaxSize: 1}, 9, 100); return err },
		"measure": func() error { _, err := measurePass(e.n, e.ctx, s, 9); return err },
	} {
		err := call()
		var fe *FencedError
		if !errors.As(err, &fe) || fe.Fence != 10 || fe.Token != 9 || fe.Shard != s {
			t.Errorf("%s with token 9 after 10 = %v, want FencedError{fence 10}", name, err)
		}
	}
	e.sameAs(before)
	if _, err := unlockPass(e.n, e.ctx, s, 11, 100); err != nil {
		t.Fatal(err)
	}
	if f, _ := e.rdb.Get(e.ctx, e.keys(s).Fence).Int64(); f != 11 {
		t.Fatalf("fence %d after token 11", f)
	}
}

func TestMeasureAndCleanFlag(t *testing.T) {
	e := newEnv(t)
	e.create("m", Config{})
	s := Shard{"m", 0}
	e.enqueue("m", Message{ID: "a", Priority: ptr(int64(1000))})
	e.enqueue("m", Message{ID: "b", Delay: time.Hour})
	m, err := measurePass(e.n, e.ctx, s, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Ready != 1 || m.Locked != 1 || !m.HasReady || m.ReadyHead != 1000 || m.Counters.Enqueued != 2 {
		t.Fatalf("measure %+v", m)
	}
	if m.OldestReadyAge() < time.Hour {
		t.Fatalf("age of a score-1000 head %s", m.OldestReadyAge())
	}
	wakes := subscribe(t, e, s)
	e.enqueue("m", Message{ID: "c"})
	e.enqueue("m", Message{ID: "d"})
	w := wakes.next(t)
	if w.Due.Task != TaskMeasure || w.Shard != s {
		t.Fatalf("first change after measure woke %+v", w)
	}
	if got := wakes.drain(t, e, s); len(got) != 0 {
		t.Fatalf("second change woke again: %+v", got)
	}
	empty, err := measurePass(e.n, e.ctx, Shard{"m", 7}, 1)
	if err != nil || empty.HasReady || empty.Ready != 0 {
		t.Fatalf("measure of an empty shard %+v, %v", empty, err)
	}
}

func TestWakesOnEarlierDeadlinesOnly(t *testing.T) {
	e := newEnv(t)
	e.create("w", Config{MaxSize: 2})
	s := Shard{"w", 0}
	e.enqueue("w", Message{ID: "a"})
	e.enqueue("w", Message{ID: "b"})
	e.enqueue("w", Message{ID: "c"})
	ds := e.pull("w", 3, time.Minute)
	if _, err := measurePass(e.n, e.ctx, s, 1); err != nil {
		t.Fatal(err)
	}
	s2 := Shard{"w2", 0}
	wakes := subscribe(t, e, s, s2)
	// Empty locked set: the first lock wakes.
	if _, err := e.c.Nack(e.ctx, ds[0], NackOptions{LockFor: time.Minute}); err != nil {
		t.Fatal(err)
	}
	// Later than the head: silent. Earlier: wakes.
	if _, err := e.c.Nack(e.ctx, ds[1], NackOptions{LockFor: 2 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Nack(e.ctx, ds[2], NackOptions{LockFor: time.Second}); err != nil {
		t.Fatal(err)
	}
	var kinds []Task
	deadline := time.Now().Add(2 * time.Second)
	for len(kinds) < 3 && time.Now().Before(deadline) {
		kinds = append(kinds, wakes.next(t).Due.Task)
	}
	want := []Task{TaskMeasure, TaskUnlock, TaskUnlock}
	for i := range want {
		if i >= len(kinds) || kinds[i] != want[i] {
			t.Fatalf("wakes %q, want %q", kinds, want)
		}
	}
	if extra := wakes.drain(t, e, s); len(extra) != 0 {
		t.Fatalf("a later lock woke the keeper: %+v", extra)
	}
	// Going over max size says so once, until a trim pass runs.
	e.create("w2", Config{MaxSize: 2})
	e.enqueue("w2", Message{})
	e.enqueue("w2", Message{})
	if got := wakes.drain(t, e, s2); len(got) != 0 {
		t.Fatalf("enqueues within max size woke %+v", got)
	}
	e.enqueue("w2", Message{})
	e.enqueue("w2", Message{})
	if got := wakes.drain(t, e, s2); len(got) != 1 || got[0].Due.Task != TaskTrim || got[0].Shard.Queue != "w2" {
		t.Fatalf("crossing max size woke %+v, want one trim", got)
	}
}

// A client whose clock is far from Redis's changes no deadline: every
// deadline is computed inside the scripts from Redis TIME. This Redis runs an
// hour ahead of the test process.
func TestClientClockDoesNotMatter(t *testing.T) {
	srv := redisserver.StartConfigTB(t, redisserver.Config{ClockOffset: time.Hour})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx := context.Background()
	c := NewClient(rdb, ClientOptions{})
	n := NewNative(rdb, "")
	if err := c.Registry().Create(ctx, "skew", Config{}); err != nil {
		t.Fatal(err)
	}
	redisNow := func() int64 { t, _ := n.Now(ctx); return t.UnixMilli() }
	if skew := redisNow() - time.Now().UnixMilli(); skew < 3500_000 {
		t.Fatalf("redis clock only %dms ahead; the shim did not load", skew)
	}
	e := &env{t: t, ctx: ctx, rdb: rdb, prefix: DefaultPrefix, c: c, n: n}
	e.enqueue("skew", Message{ID: "m"})
	d := e.pull("skew", 1, 30*time.Second)
	if got := d[0].LeaseDeadline.UnixMilli() - redisNow(); got < 29_000 || got > 31_000 {
		t.Fatalf("lease deadline is redis-now+%dms, want +30s", got)
	}
	if _, err := c.Nack(ctx, d[0], NackOptions{LockFor: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	k := keysFor(DefaultPrefix, Shard{"skew", 0})
	score, _ := rdb.ZScore(ctx, k.Locked, "m").Result()
	if got := int64(score) - redisNow(); got < 0 || got > 50 {
		t.Fatalf("lock ends at redis-now+%dms, want within 50ms", got)
	}
	waitUntil(t, 5*time.Second, "unlock", func() bool {
		r, err := unlockPass(n, ctx, Shard{"skew", 0}, 1, 10)
		return err == nil && r.Moved == 1 && r.Lags[0] >= 0 && r.Lags[0] < time.Second
	})
}

type wakeRecorder struct {
	ch      chan Wake
	resyncs chan Shard
}

// subscribe watches shards and runs Wakes, returning once every shard's
// subscription is confirmed (its Resync arrived). Resyncs are recorded in
// resyncs, other wakes in ch.
func subscribe(t *testing.T, e *env, shards ...Shard) *wakeRecorder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &wakeRecorder{ch: make(chan Wake, 100), resyncs: make(chan Shard, 100)}
	e.n.Watch(shards, true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.n.Wakes(ctx, func(x Wake) {
			switch {
			case x.Resync:
				w.resyncs <- x.Shard
			case x.ConfigChanged:
			default:
				w.ch <- x
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	w.confirmed(t, shards...)
	// On a cluster, hints published on another node just before the
	// subscription may still be on their way over the cluster bus: flush
	// them, so tests see only what they cause.
	for _, s := range shards {
		w.drain(t, e, s)
	}
	return w
}

// confirmed waits for the Resync of each of shards.
func (w *wakeRecorder) confirmed(t *testing.T, shards ...Shard) {
	t.Helper()
	want := map[Shard]bool{}
	for _, s := range shards {
		want[s] = true
	}
	for len(want) > 0 {
		select {
		case s := <-w.resyncs:
			delete(want, s)
		case <-time.After(5 * time.Second):
			t.Fatalf("subscriptions of %v not confirmed", want)
		}
	}
}

func (w *wakeRecorder) next(t *testing.T) Wake {
	t.Helper()
	select {
	case x := <-w.ch:
		return x
	case <-time.After(5 * time.Second):
		t.Fatal("no wake within 5s")
	}
	return Wake{}
}

// drainMarker is the deadline of drain's marker: a measure hint, which no
// script sends with a deadline.
const drainMarker = -7

// drain returns the wakes of s that arrived before a marker it publishes
// itself on s's channel: Redis delivers the messages of one origin in order,
// so everything published there before the marker comes before it.
func (w *wakeRecorder) drain(t *testing.T, e *env, s Shard) []Wake {
	t.Helper()
	// Published by a script on one of the shard's keys, so that on a cluster
	// it leaves from the node where the shard's scripts publish: messages
	// reach other nodes in order only along one bus link.
	if err := e.rdb.Eval(e.ctx, "redis.call('PUBLISH', ARGV[1], ARGV[2])", []string{e.keys(s).Ready},
		e.keys(s).Wake, fmt.Sprintf("%c %s %d", wakeCodes[TaskMeasure], s, drainMarker)).Err(); err != nil && err != redis.Nil {
		t.Fatal(err)
	}
	var out []Wake
	for {
		x := w.next(t)
		if x.Due == (Due{Task: TaskMeasure, AtMs: drainMarker}) {
			return out
		}
		out = append(out, x)
	}
}

func TestHistoryRecordsAcceptedAndRefusedPasses(t *testing.T) {
	e := newEnv(t)
	e.create("h", Config{})
	s := Shard{"h", 0}
	n := e.n.WithHistory()
	e.enqueue("h", Message{ID: "a", Delay: time.Millisecond})
	waitUntil(t, 5*time.Second, "lock due", func() bool {
		r, err := unlockPass(n, e.ctx, s, 3, 10)
		return err == nil && r.Moved == 1
	})
	var fe *FencedError
	if _, err := expirePass(n, e.ctx, s, 2, 10); !errors.As(err, &fe) {
		t.Fatalf("lower token accepted: %v", err)
	}
	if _, err := expirePass(e.n, e.ctx, s, 3, 10); err != nil { // history off: not recorded
		t.Fatal(err)
	}
	h, err := e.in.History(e.ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	last := h[len(h)-2:]
	if last[0].Task != "unlock" || !last[0].Accepted || last[0].Token != 3 || last[0].Moved != 1 {
		t.Fatalf("accepted pass recorded as %+v", last[0])
	}
	if last[1].Task != "expire" || last[1].Accepted || last[1].Token != 2 {
		t.Fatalf("refused pass recorded as %+v", last[1])
	}
}

// Wakes carries the hints of watched shards only: a keeper hears the shards
// it owns, not the fleet's. Watching a shard later confirms it with a Resync
// before its hints arrive; unwatching stops them.
func TestWakesOnlyForWatchedShards(t *testing.T) {
	e := newEnv(t)
	e.create("x", Config{Partitions: 2})
	a, b := Shard{"x", 0}, Shard{"x", 1}
	// Ids that land in each partition.
	idIn := func(s Shard, tag string) string {
		for i := 0; ; i++ {
			if id := fmt.Sprint(tag, i); PartitionOf(id, 2) == s.Partition {
				return id
			}
		}
	}
	lockOne := func(s Shard) {
		t.Helper()
		// A delayed message is a lock: on an empty locked set it wakes.
		e.enqueue("x", Message{ID: idIn(s, "first"), Delay: time.Hour})
	}
	wakes := subscribe(t, e, a)
	lockOne(b)
	lockOne(a)
	if got := wakes.drain(t, e, a); len(got) != 1 || got[0].Shard != a || got[0].Due.Task != TaskUnlock {
		t.Fatalf("wakes %+v; want a's unlock hint only", got)
	}
	e.n.Watch([]Shard{b}, true)
	wakes.confirmed(t, b)
	wakes.drain(t, e, b) // b's first lock, in flight on a cluster's bus
	if _, err := measurePass(e.n, e.ctx, b, 1); err != nil {
		t.Fatal(err)
	}
	e.enqueue("x", Message{ID: idIn(b, "late"), Delay: time.Minute})
	if got := wakes.drain(t, e, b); len(got) != 2 || got[0].Shard != b || got[1].Shard != b {
		t.Fatalf("after watching b: wakes %+v; want b's measure and unlock hints", got)
	}

	e.n.Watch([]Shard{a}, false)
	poll.For(t, 5*time.Second, "a unsubscribed", func() (bool, string) {
		n := e.subscribers(e.keys(a).Wake)
		return n == 0, fmt.Sprint(n, " subscribers")
	})
	if _, err := measurePass(e.n, e.ctx, a, 1); err != nil {
		t.Fatal(err)
	}
	e.enqueue("x", Message{ID: idIn(a, "unheard"), Delay: time.Second})
	if got := wakes.drain(t, e, b); len(got) != 0 {
		t.Fatalf("after unwatching a: wakes %+v", got)
	}
}

// After etcd is restored from a backup, two keepers can hold an equal
// token for a shard. The fence keeps the owner of its token: an equal token
// from another owner is refused by every housekeeping script and by a
// claim, and changes nothing; the same owner re-presenting its token is
// accepted, and a strictly higher token from anyone is accepted as before.
func TestFenceRefusesAnEqualTokenFromAnotherOwner(t *testing.T) {
	e := newEnv(t)
	e.create("eq", Config{})
	s := Shard{"eq", 0}
	e.enqueue("eq", Message{ID: "x", Delay: time.Millisecond})
	a := e.n.WithOwner("keeper-a/1f2e").WithHistory()
	b := e.n.WithOwner("keeper-b/9c3d").WithHistory()
	if _, err := a.Probe(e.ctx, []ProbeRequest{{Shard: s, Claim: true, Token: 10}}); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.Del(e.ctx, e.keys(s).History).Err(); err != nil {
		t.Fatal(err)
	}
	before := e.snapshot()
	calls := func(n *Native, token int64) map[string]func() error {
		return map[string]func() error{
			"unlock":  func() error { _, err := unlockPass(n, e.ctx, s, token, 100); return err },
			"requeue": func() error { _, err := requeuePass(n, e.ctx, s, Config{}, token, 100); return err },
			"expire":  func() error { _, err := expirePass(n, e.ctx, s, token, 100); return err },
			"trim":    func() error { _, err := trimPass(n, e.ctx, s, Config{MaxSize: 1}, token, 100); return err },
			"measure": func() error { _, err := measurePass(n, e.ctx, s, token); return err },
			"claim": func() error {
				r, err := n.Probe(e.ctx, []ProbeRequest{{Shard: s, Claim: true, Token: token}})
				if err != nil {
					return err
				}
				return r[0].Err
			},
		}
	}
	for name, call := range calls(b, 10) {
		err := call()
		var fe *FencedError
		if !errors.As(err, &fe) || fe.Fence != 10 || fe.Token != 10 || fe.Owner != "keeper-a/1f2e" {
			t.Errorf("%s with an equal token from another owner = %v, want FencedError held by keeper-a", name, err)
		}
	}
	// Only the refusals were recorded, each with the owner refused.
	h, err := e.in.History(e.ctx, s)
	if err != nil || len(h) != 6 {
		t.Fatalf("history of the refusals: %+v, %v", h, err)
	}
	for _, x := range h {
		if x.Accepted || x.Owner != "keeper-b/9c3d" || x.Token != 10 {
			t.Fatalf("refusal recorded as %+v", x)
		}
	}
	if err := e.rdb.Del(e.ctx, e.keys(s).History).Err(); err != nil {
		t.Fatal(err)
	}
	e.sameAs(before)
	for name, call := range calls(a, 10) {
		if err := call(); err != nil {
			t.Errorf("%s re-presented by the fence's owner: %v", name, err)
		}
	}
	for name, call := range calls(b, 11) {
		if err := call(); err != nil {
			t.Errorf("%s with a higher token: %v", name, err)
		}
	}
	if o, _ := e.rdb.Get(e.ctx, e.keys(s).FenceOwner).Result(); o != "keeper-b/9c3d" {
		t.Fatalf("fence owner %q after keeper-b's higher token", o)
	}
	h, err = e.in.History(e.ctx, s)
	if err != nil || len(h) == 0 || h[len(h)-1].Owner != "keeper-b/9c3d" || h[len(h)-1].Token != 11 {
		t.Fatalf("history %+v, %v", h, err)
	}
	// A fence set before owners were recorded holds no owner: an equal
	// token is accepted once, and its owner recorded.
	e.rdb.Set(e.ctx, e.keys(s).Fence, "20", 0)
	e.rdb.Del(e.ctx, e.keys(s).FenceOwner)
	if _, err := measurePass(a, e.ctx, s, 20); err != nil {
		t.Fatalf("equal token on a fence without owner: %v", err)
	}
	if _, err := measurePass(b, e.ctx, s, 20); !errors.As(err, new(*FencedError)) {
		t.Fatalf("equal token of another owner after the first was recorded: %v", err)
	}
}

// One Probe call with shards read and shards claimed, in one order: each
// result is its own shard's heads (Redis ms), -1 where a set is empty, and
// its excess over the size given; claims raise the fence, reads do not.
func TestProbeMixesReadsAndClaims(t *testing.T) {
	e := newEnv(t)
	e.create("p", Config{Partitions: 3})
	idIn := func(p, skip int) string {
		for i := 0; ; i++ {
			if id := fmt.Sprint("p", i); PartitionOf(id, 3) == p {
				if skip == 0 {
					return id
				}
				skip--
			}
		}
	}
	now := e.redisNowMs()
	e.enqueue("p", Message{ID: idIn(0, 0), Delay: time.Hour, TTL: 2 * time.Hour})
	e.enqueue("p", Message{ID: idIn(1, 0)})
	e.enqueue("p", Message{ID: idIn(1, 1)})
	if ds := e.pull("p", 3, time.Minute); len(ds) != 2 {
		t.Fatalf("pulled %d, want p#1's two", len(ds))
	}
	reqs := []ProbeRequest{
		{Shard: Shard{"p", 0}, Token: 4},
		{Shard: Shard{"p", 1}, Claim: true, Token: 5, MaxSize: 1},
		{Shard: Shard{"p", 2}, Token: 6},
		{Shard: Shard{"p", 0}, Claim: true, Token: 7},
	}
	res, err := e.n.Probe(e.ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	near := func(got, want int64) bool { return got >= want-50 && got <= want+1000 }
	hour := int64(time.Hour / time.Millisecond)
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	if r := res[0]; !near(r.LockedHead, now+hour) || r.InflightHead != -1 || !near(r.TTLHead, now+2*hour) || r.Excess != 0 {
		t.Errorf("read of p#0: %+v", r)
	}
	if r := res[3]; r.LockedHead != res[0].LockedHead || r.TTLHead != res[0].TTLHead {
		t.Errorf("claim of p#0: %+v, want the heads of the read", r)
	}
	if r := res[1]; r.LockedHead != -1 || !near(r.InflightHead, now+60_000) || r.TTLHead != -1 || r.Excess != 1 {
		t.Errorf("claim of p#1: %+v", r)
	}
	if r := res[2]; r.LockedHead != -1 || r.InflightHead != -1 || r.TTLHead != -1 {
		t.Errorf("read of the empty p#2: %+v", r)
	}
	fences, _ := e.in.Fences(e.ctx, []Shard{{"p", 0}, {"p", 1}, {"p", 2}})
	if fences[0] != 7 || fences[1] != 5 || fences[2] != 0 {
		t.Errorf("fences %v; want [7 5 0]: claims raise them, reads do not", fences)
	}
}

// Many passes in one call, over shards spread across slots (and nodes, on a
// cluster): each has its own outcome in request order. A refused token, a
// bad batch and a wrong-typed key fail their own pass only; the others move
// their messages. A server that lost its scripts (SCRIPT FLUSH) is sent
// them again within the call.
func TestPassesKeepEachOutcome(t *testing.T) {
	e := newEnv(t)
	const parts = 8
	e.create("many", Config{Partitions: parts, MaxSize: 3})
	now := e.redisNowMs()
	for p := 0; p < parts; p++ {
		e.seedLocked(Shard{"many", p}, fmt.Sprint("m", p, "-"), 5, now-10)
	}
	// Partition 1's fence is above our token (a pass under it moved one
	// message); partition 2's clean flag is a hash.
	if _, err := unlockPass(e.n, e.ctx, Shard{"many", 1}, 9, 1); err != nil {
		t.Fatal(err)
	}
	clean := e.keys(Shard{"many", 2}).Clean
	if err := e.rdb.HSet(e.ctx, clean, "x", "y").Err(); err != nil {
		t.Fatal(err)
	}
	e.onEveryPrimary(func(ctx context.Context, c redis.Cmdable) error { return c.ScriptFlush(ctx).Err() })
	var reqs []PassRequest
	for p := 0; p < parts; p++ {
		reqs = append(reqs, PassRequest{Shard: Shard{"many", p}, Task: TaskUnlock, Token: 5, Batch: 100})
	}
	reqs[3].Batch = MaxBatch + 1
	reqs = append(reqs, PassRequest{Shard: Shard{"many", 4}, Task: TaskMeasure, Token: 5},
		PassRequest{Shard: Shard{"many", 5}, Task: TaskTrim, Token: 5, Batch: 100, Config: Config{MaxSize: 3}})
	out := e.n.Passes(e.ctx, reqs)
	if len(out) != len(reqs) {
		t.Fatalf("%d outcomes for %d requests", len(out), len(reqs))
	}
	for i, o := range out[:parts] {
		switch i {
		case 1:
			var fe *FencedError
			if !errors.As(o.Err, &fe) || fe.Fence != 9 || fe.Shard != reqs[i].Shard {
				t.Errorf("pass %d under a lower token: %v", i, o.Err)
			}
		case 2:
			if !errors.Is(o.Err, ErrWrongType) {
				t.Errorf("pass %d on a wrong-typed key: %v", i, o.Err)
			}
		case 3:
			if !errors.Is(o.Err, ErrBadConfig) {
				t.Errorf("pass %d over the batch cap: %v", i, o.Err)
			}
		default:
			if o.Err != nil || o.Result.Moved != 5 || len(o.Result.Lags) != 5 {
				t.Errorf("pass %d: %+v", i, o)
			}
		}
	}
	if m := out[parts]; m.Err != nil || m.Measurement.Ready != 5 || m.Measurement.Counters.Unlocked != 5 ||
		m.Result.NowUs != m.Measurement.NowUs || m.Result.NextMs != -1 {
		t.Errorf("measure after its shard's unlock in the same call: %+v", m)
	}
	if tr := out[parts+1]; tr.Err != nil || tr.Result.Moved != 2 || tr.Result.Excess != 0 {
		t.Errorf("trim after its shard's unlock in the same call: %+v", tr)
	}
	if err := e.rdb.Del(e.ctx, clean).Err(); err != nil {
		t.Fatal(err)
	}
	// Ready: 5 in each of the five shards unlocked, one in partition 1, and
	// partition 5 trimmed to 3.
	e.wantCounts("many", 5*5+1-2, 0, 4+5+5, 0)
}

// The cost of a housekeeping pass with nothing due (a round trip and a
// script that reads the fence and the set's head), by how many passes one
// Passes call carries: what pipelining the due passes of many shards saves.
func BenchmarkPasses(b *testing.B) {
	for _, per := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("per_call=%d", per), func(b *testing.B) {
			rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: testAddrs})
			defer rdb.Close()
			prefix := fmt.Sprintf("b%d", prefixSeq.Add(1))
			ctx, n := context.Background(), NewNative(rdb, prefix)
			if err := NewRegistry(rdb, prefix).Create(ctx, "bench", Config{Partitions: per}); err != nil {
				b.Fatal(err)
			}
			reqs := make([]PassRequest, per)
			for p := range reqs {
				reqs[p] = PassRequest{Shard: Shard{"bench", p}, Task: TaskUnlock, Token: 1, Batch: 1000}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += per {
				for _, o := range n.Passes(ctx, reqs) {
					if o.Err != nil {
						b.Fatal(o.Err)
					}
				}
			}
		})
	}
}

// The cost of unlock passes that each move one message (what thousands of
// shards with a lock or two due each send), by how many shards one script
// call takes, and of passes that each move 24 (what a few shards at 100,000
// unlocks/s send): Redis's own time per pass (redis-us/pass, from INFO
// commandstats) and per message moved beside the wall time.
func BenchmarkUnlockDue(b *testing.B) {
	const shards = 512
	ctx, rdb, prefix := benchQueue(b, shards, false)
	in := NewInspector(rdb, prefix)
	round := 0
	for _, c := range []struct{ per, msgs int }{{1, 1}, {passShardsPerCall, 1}, {passShardsPerCall, 24}} {
		per, msgs := c.per, c.msgs
		b.Run(fmt.Sprintf("per_call=%d/msgs=%d", per, msgs), func(b *testing.B) {
			n := NewNative(rdb, prefix)
			n.perCall = per
			reqs := make([]PassRequest, shards)
			for p := range reqs {
				reqs[p] = PassRequest{Shard: Shard{"bench", p}, Task: TaskUnlock, Token: 1, Batch: 1000}
			}
			var redisUs float64
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += shards {
				b.StopTimer()
				round++
				// Due a moment ago, as a keeper on time finds them: the lag
				// decides the histogram bucket the script looks for.
				now, err := rdb.Time(ctx).Result()
				if err != nil {
					b.Fatal(err)
				}
				for p := range reqs {
					if err := in.SeedLocked(ctx, reqs[p].Shard, fmt.Sprintf("r%d-", round), 0, msgs, now.UnixMilli()-1, 0, []byte("x")); err != nil {
						b.Fatal(err)
					}
				}
				redisUs += inRedis(b, ctx, rdb, func() {
					for _, o := range n.Passes(ctx, reqs) {
						if o.Err != nil || o.Result.Moved != msgs {
							b.Fatalf("%+v", o)
						}
					}
				})
			}
			rounds := (b.N + shards - 1) / shards
			b.ReportMetric(redisUs/float64(rounds*shards), "redis-us/pass")
			b.ReportMetric(redisUs/float64(rounds*shards*msgs), "redis-us/msg")
		})
	}
}

// The cost of measuring shards that changed, by how many shards one script
// call takes: Redis's own time per shard (redis-us/shard). A takeover
// measures every shard it took within a quarter of the measure interval,
// beside its claims and first passes.
func BenchmarkMeasure(b *testing.B) {
	const shards = 512
	ctx, rdb, prefix := benchQueue(b, shards, true)
	for _, per := range []int{1, passShardsPerCall} {
		b.Run(fmt.Sprintf("per_call=%d", per), func(b *testing.B) {
			n := NewNative(rdb, prefix)
			n.perCall = per
			reqs := make([]PassRequest, shards)
			for p := range reqs {
				reqs[p] = PassRequest{Shard: Shard{"bench", p}, Task: TaskMeasure, Token: 1}
			}
			var redisUs float64
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += shards {
				redisUs += inRedis(b, ctx, rdb, func() {
					for _, o := range n.Passes(ctx, reqs) {
						if o.Err != nil || o.Measurement.Locked != 10 {
							b.Fatalf("%+v", o)
						}
					}
				})
			}
			b.ReportMetric(redisUs/float64((b.N+shards-1)/shards*shards), "redis-us/shard")
		})
	}
}

// benchQueue creates a queue of the given shards under a fresh prefix on
// the package's one server (Redis's time is read from it, so the benchmarks
// that report it skip on a cluster), each shard seeded with ten locks an
// hour ahead when seed is set.
func benchQueue(b *testing.B, shards int, seed bool) (context.Context, *redis.Client, string) {
	b.Helper()
	if len(testAddrs) > 1 {
		b.Skip("Redis time is read from one server")
	}
	rdb := redis.NewClient(&redis.Options{Addr: testAddrs[0]})
	b.Cleanup(func() { _ = rdb.Close() })
	prefix := fmt.Sprintf("b%d", prefixSeq.Add(1))
	ctx := context.Background()
	if err := NewRegistry(rdb, prefix).Create(ctx, "bench", Config{Partitions: shards}); err != nil {
		b.Fatal(err)
	}
	if seed {
		in, at := NewInspector(rdb, prefix), time.Now().UnixMilli()+3_600_000
		for p := 0; p < shards; p++ {
			if err := in.SeedLocked(ctx, Shard{"bench", p}, "m", 0, 10, at, time.Second, []byte("x")); err != nil {
				b.Fatal(err)
			}
		}
	}
	return ctx, rdb, prefix
}

// inRedis runs f with the benchmark's timer on and returns the time Redis
// spent in scripts meanwhile (its stats are reset before).
func inRedis(b *testing.B, ctx context.Context, rdb *redis.Client, f func()) float64 {
	b.StopTimer()
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	f()
	b.StopTimer()
	us := scriptUsec(b, ctx, rdb)
	b.StartTimer()
	return us
}

// scriptUsec is the time Redis spent in scripts since its stats were reset.
func scriptUsec(b *testing.B, ctx context.Context, rdb *redis.Client) float64 {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	total := 0.0
	for _, l := range strings.Split(info, "\n") {
		for _, cmd := range []string{"cmdstat_evalsha:", "cmdstat_eval:"} {
			if rest, ok := strings.CutPrefix(strings.TrimSpace(l), cmd); ok {
				for _, f := range strings.Split(rest, ",") {
					if v, ok := strings.CutPrefix(f, "usec="); ok {
						us, _ := strconv.ParseFloat(v, 64)
						total += us
					}
				}
			}
		}
	}
	return total
}

// A probe that cannot reach Redis fails as a whole, so that the keeper
// probes again, rather than reporting each shard as failed.
func TestProbeFailsWholeWithoutRedis(t *testing.T) {
	port, err := loopback.Port() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: loopback.Addr(port), MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	res, err := NewNative(rdb, "").Probe(context.Background(), []ProbeRequest{{Shard: Shard{"q", 0}}, {Shard: Shard{"q", 1}}})
	if err == nil {
		t.Fatalf("probe without redis: no error, results %+v", res)
	}
}

// A probe that only reads does no type checks of its own (they were most
// of what the safety sweep cost Redis): a wrong-typed key still fails it
// with ErrWrongType, changing nothing, and a claim still checks before it
// writes the fence.
func TestProbeOfAWrongTypedKey(t *testing.T) {
	e := newEnv(t)
	e.create("wt", Config{MaxSize: 10})
	s := Shard{"wt", 0}
	for _, key := range []string{e.keys(s).Locked, e.keys(s).Inflight, e.keys(s).TTL, e.keys(s).Ready} {
		if err := e.rdb.Del(e.ctx, key).Err(); err != nil {
			t.Fatal(err)
		}
		if err := e.rdb.Set(e.ctx, key, "junk", 0).Err(); err != nil {
			t.Fatal(err)
		}
		before := e.snapshot()
		for _, claim := range []bool{false, true} {
			res, err := e.n.Probe(e.ctx, []ProbeRequest{{Shard: s, MaxSize: 10, Claim: claim, Token: 3}})
			if err != nil {
				t.Fatal(err)
			}
			if !errors.Is(res[0].Err, ErrWrongType) {
				t.Errorf("probe (claim %v) with %s wrong-typed = %+v, want ErrWrongType", claim, key, res[0])
			}
		}
		e.sameAs(before)
		if err := e.rdb.Del(e.ctx, key).Err(); err != nil {
			t.Fatal(err)
		}
	}
}

// Fences reads any number of shards a pipeline of shardsPerRoundTrip at a
// time, each fence at its shard's index.
func TestFencesAcrossRoundTrips(t *testing.T) {
	e := newEnv(t)
	n := 2*shardsPerRoundTrip + 7
	shards := make([]Shard, n)
	for i := range shards {
		shards[i] = Shard{Queue: "f", Partition: i}
		if i%3 != 0 {
			if err := e.rdb.Set(e.ctx, e.keys(shards[i]).Fence, i, 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	fences, err := e.in.Fences(e.ctx, shards)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range fences {
		want := int64(i)
		if i%3 == 0 {
			want = 0
		}
		if f != want {
			t.Fatalf("fence of %s = %d, want %d", shards[i], f, want)
		}
	}
}

// A pass with work to do refuses every wrong-typed key it touches with
// ErrWrongType and changes nothing: the fence and its owner (read by one
// MGET, their types asked when it finds none), the keys it reads before writing (their reads
// fail by themselves), and those it writes unread (checked before the first
// write, only when there is something to write, which spares a pass with
// nothing due a TYPE call a key). A measurement names the key in every case.
func TestPassRefusesEachWrongTypedKey(t *testing.T) {
	e := newEnv(t)
	for _, c := range []struct {
		task Task
		keys func(k shardKeys) []string
	}{
		{TaskUnlock, unlockScript.keys},
		{TaskRequeue, requeueScript.keys},
		{TaskMeasure, measureScript.keys},
	} {
		for i := range c.keys(shardKeys{}) {
			if i == 2 || i == 3 {
				continue // the history (checked only with record on) and the tombstone (any type means deleted)
			}
			name := fmt.Sprintf("w%s%d", c.task, i)
			cfg := Config{MaxDeliveries: 3}
			e.create(name, cfg)
			s := Shard{name, 0}
			// Work that falls due within a millisecond: a lock for unlock,
			// a lease for requeue.
			if c.task == TaskUnlock {
				e.enqueue(name, Message{ID: "m", Delay: time.Millisecond, TTL: time.Hour})
			} else {
				e.enqueue(name, Message{ID: "m", TTL: time.Hour})
				e.pull(name, 1, time.Millisecond)
			}
			key := c.keys(e.keys(s))[i]
			e.rdb.Del(e.ctx, key)
			if i < 2 || strings.HasSuffix(key, ":clean") {
				e.rdb.RPush(e.ctx, key, "not a string")
			} else {
				e.rdb.Set(e.ctx, key, "not a "+key, 0)
			}
			var (
				before map[string]string
				res    PassResult
				err    error
			)
			// Until it is due, a pass may find nothing to do (and raise the
			// fence): the state before the pass that refuses is compared.
			poll.For(t, 5*time.Second, "the pass meets the due work", poll.Holds(func() bool {
				before = e.snapshot()
				switch c.task {
				case TaskUnlock:
					res, err = unlockPass(e.n, e.ctx, s, 1, 10)
				case TaskRequeue:
					res, err = requeuePass(e.n, e.ctx, s, cfg, 1, 10)
				default: // a measurement always has work
					o := pass(e.n, e.ctx, PassRequest{Shard: s, Task: c.task, Token: 1})
					res, err = o.Result, o.Err
					return true
				}
				return err != nil || res.Moved > 0
			}))
			if !errors.Is(err, ErrWrongType) {
				t.Errorf("%s with %s wrong-typed = %+v, %v; want ErrWrongType", c.task, key, res, err)
				continue
			}
			e.sameAs(before)
			if (i < 2 || c.task == TaskMeasure) && !strings.Contains(err.Error(), key) {
				t.Errorf("%s: the error does not name %s: %v", c.task, key, err)
			}
		}
	}
}

// LockedHeads reads each shard's earliest lock, -1 for a shard without,
// across more shards than one round trip reads.
func TestLockedHeads(t *testing.T) {
	e := newEnv(t)
	n := shardsPerRoundTrip + 3
	shards := make([]Shard, n)
	for i := range shards {
		shards[i] = Shard{Queue: "h", Partition: i}
		if i%2 == 1 {
			k := e.keys(shards[i])
			e.rdb.ZAdd(e.ctx, k.Locked, redis.Z{Score: float64(1000 + i), Member: "a"}, redis.Z{Score: float64(5000 + i), Member: "b"})
		}
	}
	heads, err := e.in.LockedHeads(e.ctx, shards)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range heads {
		want := int64(-1)
		if i%2 == 1 {
			want = int64(1000 + i)
		}
		if h != want {
			t.Fatalf("head of %s = %d, want %d", shards[i], h, want)
		}
	}
}

// A probe of more shards than one script call takes (probeShardsPerCall)
// answers each shard on its own: a refused claim, a wrong-typed key and a
// deleted queue fail their shard only, change nothing of it, and the
// claims around them raise their fences.
func TestProbeManyShardsEachAnswered(t *testing.T) {
	e := newEnv(t)
	n := 2*probeShardsPerCall + 13
	e.create("many", Config{Partitions: n})
	e.create("gone", Config{})
	if err := e.c.Registry().Delete(e.ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	const fenced, wrongReady, wrongLocked = 7, probeShardsPerCall, probeShardsPerCall + 1
	if err := e.rdb.Set(e.ctx, e.keys(Shard{"many", fenced}).Fence, 99, 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []int{wrongReady, wrongLocked} {
		k := e.keys(Shard{"many", p})
		key := k.Ready
		if p == wrongLocked {
			key = k.Locked
		}
		if err := e.rdb.Set(e.ctx, key, "junk", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	before := e.snapshot()
	var reqs []ProbeRequest
	for p := 0; p < n; p++ {
		reqs = append(reqs, ProbeRequest{Shard: Shard{"many", p}, Claim: true, Token: 10})
		if p == n/2 {
			reqs = append(reqs, ProbeRequest{Shard: Shard{"gone", 0}, Claim: true, Token: 10})
		}
	}
	res, err := e.n.Probe(e.ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	var shards []Shard
	for i, r := range res {
		s := reqs[i].Shard
		shards = append(shards, s)
		var fe *FencedError
		switch {
		case s.Queue == "gone":
			if !errors.Is(r.Err, ErrUnknownQueue) {
				t.Errorf("%s: %v, want ErrUnknownQueue", s, r.Err)
			}
		case s.Partition == fenced:
			if !errors.As(r.Err, &fe) || fe.Fence != 99 {
				t.Errorf("%s: %v, want fenced at 99", s, r.Err)
			}
		case s.Partition == wrongReady || s.Partition == wrongLocked:
			if !errors.Is(r.Err, ErrWrongType) || !strings.Contains(r.Err.Error(), e.prefix) {
				t.Errorf("%s: %v, want ErrWrongType naming the key", s, r.Err)
			}
		case r.Err != nil || r.LockedHead != -1 || r.InflightHead != -1 || r.TTLHead != -1:
			t.Errorf("%s: %+v, want an empty shard claimed", s, r)
		}
	}
	fences, err := e.in.Fences(e.ctx, shards)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range fences {
		want := int64(10)
		switch s := shards[i]; {
		case s.Queue == "gone" || s.Partition == wrongReady || s.Partition == wrongLocked:
			want = 0
		case s.Partition == fenced:
			want = 99
		}
		if f != want {
			t.Errorf("fence of %s = %d, want %d", shards[i], f, want)
		}
	}
	// The refused shards' keys are as they were.
	after := e.snapshot()
	for _, p := range []int{fenced, wrongReady, wrongLocked} {
		k := e.keys(Shard{"many", p})
		for _, key := range []string{k.Fence, k.FenceOwner, k.Ready, k.Locked} {
			if after[key] != before[key] {
				t.Errorf("%s changed by a refused claim", key)
			}
		}
	}
}

// One unlock script call takes many shards (passShardsPerCall): each shard
// is answered alone, and one refused (fenced, wrong-typed, deleted) changes
// nothing of its own while the others in its call move their messages.
func TestUnlockManyShardsEachAnswered(t *testing.T) {
	e := newEnv(t)
	n := 2*passShardsPerCall + 5
	e.create("many", Config{Partitions: n})
	e.create("gone", Config{})
	if err := e.c.Registry().Delete(e.ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	now := e.redisNowMs()
	for p := 0; p < n; p++ {
		e.seedLocked(Shard{"many", p}, "m", 2, now-5)
	}
	// In the first call, the second and the last of the rest.
	const fenced, wrongLocked, wrongReady, wrongStats = 3, passShardsPerCall + 1, 2 * passShardsPerCall, 2*passShardsPerCall + 4
	if err := e.rdb.Set(e.ctx, e.keys(Shard{"many", fenced}).Fence, 99, 0).Err(); err != nil {
		t.Fatal(err)
	}
	for p, key := range map[int]string{wrongLocked: e.keys(Shard{"many", wrongLocked}).Locked,
		wrongReady: e.keys(Shard{"many", wrongReady}).Ready, wrongStats: e.keys(Shard{"many", wrongStats}).Stats} {
		if err := e.rdb.Del(e.ctx, key).Err(); err != nil {
			t.Fatal(err)
		}
		if err := e.rdb.Set(e.ctx, key, "junk", 0).Err(); err != nil {
			t.Fatalf("shard %d: %v", p, err)
		}
	}
	before := e.snapshot()
	var reqs []PassRequest
	for p := 0; p < n; p++ {
		reqs = append(reqs, PassRequest{Shard: Shard{"many", p}, Task: TaskUnlock, Token: 10, Batch: MaxBatch})
		if p == n/2 {
			reqs = append(reqs, PassRequest{Shard: Shard{"gone", 0}, Task: TaskUnlock, Token: 10, Batch: MaxBatch})
		}
	}
	refused := map[int]bool{fenced: true, wrongLocked: true, wrongReady: true, wrongStats: true}
	for i, o := range e.n.Passes(e.ctx, reqs) {
		s := reqs[i].Shard
		var fe *FencedError
		switch {
		case s.Queue == "gone":
			if !errors.Is(o.Err, ErrUnknownQueue) {
				t.Errorf("%s: %v, want ErrUnknownQueue", s, o.Err)
			}
		case s.Partition == fenced:
			if !errors.As(o.Err, &fe) || fe.Fence != 99 {
				t.Errorf("%s: %v, want fenced at 99", s, o.Err)
			}
		case refused[s.Partition]:
			if !errors.Is(o.Err, ErrWrongType) {
				t.Errorf("%s: %v, want ErrWrongType", s, o.Err)
			}
		case o.Err != nil || o.Result.Moved != 2 || len(o.Result.Lags) != 2 || o.Result.NextMs != -1:
			t.Errorf("%s: %+v, want 2 moved", s, o)
		}
	}
	after := e.snapshot()
	for p := range refused {
		k := e.keys(Shard{"many", p})
		for _, key := range []string{k.Fence, k.FenceOwner, k.Ready, k.Locked, k.Stats, k.Clean} {
			if after[key] != before[key] {
				t.Errorf("%s changed by a refused pass", key)
			}
		}
	}
	for _, p := range []int{0, fenced + 1, passShardsPerCall, n - 2} {
		if c := e.shardCounts(Shard{"many", p}); c != "ready 2, inflight 0, locked 0, dead 0, bodies 2" {
			t.Errorf("shard %d after its unlock: %s", p, c)
		}
	}
}

// Every pass script answers each shard of a call alone: a fenced shard
// between two others is refused while they run, whatever the task.
func TestEveryPassScriptAnswersEachShard(t *testing.T) {
	e := newEnv(t)
	e.create("three", Config{Partitions: 3, MaxSize: 100})
	if err := e.rdb.Set(e.ctx, e.keys(Shard{"three", 1}).Fence, 99, 0).Err(); err != nil {
		t.Fatal(err)
	}
	for task := range NumTasks {
		var reqs []PassRequest
		for p := range 3 {
			reqs = append(reqs, PassRequest{Shard: Shard{"three", p}, Task: task, Token: 5, Batch: 10,
				Config: Config{Partitions: 3, MaxSize: 100}})
		}
		out := e.n.Passes(e.ctx, reqs)
		var fe *FencedError
		if !errors.As(out[1].Err, &fe) || fe.Fence != 99 {
			t.Errorf("%s of the fenced shard: %+v, want fenced at 99", task, out[1])
		}
		for _, p := range []int{0, 2} {
			if out[p].Err != nil || out[p].Result.NowUs == 0 {
				t.Errorf("%s of shard %d beside a fenced one: %+v", task, p, out[p])
			}
		}
	}
}

// Passes join calls by script and hash slot, up to the limit a call, and a
// shard's passes still run in the order asked.
func TestGroupPassesKeepsEachShardsOrder(t *testing.T) {
	u := func(p int) PassRequest { return PassRequest{Shard: Shard{"q", p}, Task: TaskUnlock} }
	m := func(p int) PassRequest { return PassRequest{Shard: Shard{"q", p}, Task: TaskMeasure} }
	slot := func(s Shard) int { return s.Partition % 2 }
	for _, c := range []struct {
		name string
		reqs []PassRequest
		per  int
		want [][]int
	}{
		{"one call", []PassRequest{u(0), u(2), u(4)}, 8, [][]int{{0, 1, 2}}},
		{"by limit", []PassRequest{u(0), u(2), u(4)}, 2, [][]int{{0, 1}, {2}}},
		{"by slot", []PassRequest{u(0), u(1), u(2), u(3)}, 8, [][]int{{0, 2}, {1, 3}}},
		{"by script", []PassRequest{m(0), u(0), m(2), u(2)}, 8, [][]int{{0, 2}, {1, 3}}},
		// The unlock of 0 must not run before the measure of 0 it came
		// after: it opens a call of its own.
		{"a shard's order", []PassRequest{u(2), m(0), u(0), u(4)}, 8, [][]int{{0}, {1}, {2, 3}}},
		{"measure after its unlock", []PassRequest{u(0), m(0), u(2)}, 8, [][]int{{0, 2}, {1}}},
	} {
		idx := make([]int, len(c.reqs))
		for i := range idx {
			idx[i] = i
		}
		if got := groupPasses(c.reqs, idx, c.per, slot); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// The cost of probing 500 shards (what the keeper sends in one go), each
// with locks due, by how many shards one script call takes: claims (a new
// token each time) and reads. Redis's own time per shard (redis-us/shard,
// from INFO commandstats) is what a takeover of many shards waits for on a
// single Redis core: each shard a keeper takes costs it once.
func BenchmarkProbe(b *testing.B) {
	const shards = 500
	ctx, rdb, prefix := benchQueue(b, shards, true)
	n := NewNative(rdb, prefix)
	token := int64(0)
	for _, per := range []int{1, 10, probeShardsPerCall} {
		for _, claim := range []bool{false, true} {
			b.Run(fmt.Sprintf("per_call=%d/claim=%v", per, claim), func(b *testing.B) {
				p := n.prober(per)
				reqs := make([]ProbeRequest, shards)
				var redisUs float64
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i += shards {
					token++
					for s := range reqs {
						reqs[s] = ProbeRequest{Shard: Shard{"bench", s}, Claim: claim, Token: token}
					}
					redisUs += inRedis(b, ctx, rdb, func() {
						res, err := p.probe(ctx, reqs)
						if err != nil {
							b.Fatal(err)
						}
						for _, r := range res {
							if r.Err != nil || r.LockedHead < 0 {
								b.Fatalf("%+v", r)
							}
						}
					})
				}
				b.ReportMetric(redisUs/float64((b.N+shards-1)/shards*shards), "redis-us/shard")
			})
		}
	}
}

// keySlot is Redis Cluster's CLUSTER KEYSLOT (values asked of a
// redis-server 7.0 in cluster mode).
func TestKeySlot(t *testing.T) {
	for key, want := range map[string]int{"foo": 12182, "bar": 5061, "hello": 866,
		"{foo}.bar": 12182, "x{bar}y": 5061, "{}foo": 9500, "foo{}": 5542, "keeper:{q#3}:fence": 15037} {
		if got := keySlot(key); got != want {
			t.Errorf("keySlot(%q) = %d, want %d", key, got, want)
		}
	}
}

// Shards that share a hash slot share a probe call on a cluster (and any
// shards on a single server): 4,096 shards over 16,384 slots give hundreds
// of shared slots, each claimed in one call, every shard answered.
func TestProbeShardsSharingASlot(t *testing.T) {
	e := newEnv(t)
	e.create("slots", Config{Partitions: MaxPartitions})
	reqs := make([]ProbeRequest, MaxPartitions)
	idx := make([]int, len(reqs))
	shards := make([]Shard, len(reqs))
	for p := range reqs {
		shards[p] = Shard{"slots", p}
		reqs[p], idx[p] = ProbeRequest{Shard: shards[p], Claim: true, Token: 5}, p
	}
	p := e.n.prober(probeShardsPerCall)
	p.bySlot = true
	shared := 0
	for _, g := range p.chunks(reqs, idx, probeShardsPerCall) {
		slot := keySlot(e.keys(shards[g[0]]).Fence)
		for _, i := range g {
			if keySlot(e.keys(shards[i]).Fence) != slot {
				t.Fatalf("a call spans slots: %v", g)
			}
		}
		if len(g) > 1 {
			shared++
		}
	}
	if shared == 0 {
		t.Fatal("no two shards share a slot: the test proves nothing")
	}
	res, err := e.n.Probe(e.ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("%s: %v", shards[i], r.Err)
		}
	}
	fences, err := e.in.Fences(e.ctx, shards)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range fences {
		if f != 5 {
			t.Fatalf("fence of %s = %d, want 5", shards[i], f)
		}
	}
}
