package tasks

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/service/servicetest"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

type harness struct {
	t      *testing.T
	ctx    context.Context
	srv    *redisserver.Server
	rdb    *redis.Client
	client *queue.Client
	layout *queue.Native
	rec    *recorder
	k      *Keeper
	fenced chan queue.Shard
}

func newHarness(t *testing.T, redisCfg redisserver.Config, cfg Config) *harness {
	t.Helper()
	srv := redisserver.StartConfigTB(t, redisCfg)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	h := &harness{t: t, ctx: context.Background(), srv: srv, rdb: rdb,
		client: queue.NewClient(rdb, queue.ClientOptions{ConfigTTL: time.Millisecond}),
		layout: queue.NewNative(rdb, ""), rec: &recorder{passes: map[string]int{}},
		fenced: make(chan queue.Shard, 16)}
	cfg.Recorder = h.rec
	cfg.OnFenced = func(s queue.Shard, _ int64) { h.fenced <- s }
	h.k = New(h.layout, cfg)
	if err := h.k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, h.k)
	return h
}

func (h *harness) create(name string, cfg queue.Config, token int64) queue.Config {
	h.t.Helper()
	if err := h.client.Registry().Create(h.ctx, name, cfg); err != nil {
		h.t.Fatal(err)
	}
	cfg = cfg.WithDefaults()
	h.k.SetConfig(name, cfg)
	shards := make([]queue.Shard, cfg.Partitions)
	for p := range shards {
		shards[p] = queue.Shard{Queue: name, Partition: p}
	}
	h.k.Own(shards, token)
	return cfg
}

func (h *harness) stats(q string) queue.QueueStats {
	h.t.Helper()
	st, err := h.client.Stats(h.ctx, q)
	if err != nil {
		h.t.Fatal(err)
	}
	return st
}

// stopAtCleanup stops k when the test ends.
func stopAtCleanup(t *testing.T, k *Keeper) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := k.Stop(ctx); err != nil {
			t.Errorf("stop keeper: %v", err)
		}
	})
}

// own sets cfg for s's queue and owns s under token.
func own(k *Keeper, s queue.Shard, cfg queue.Config, token int64) {
	k.SetConfig(s.Queue, cfg)
	k.Own([]queue.Shard{s}, token)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.For(t, timeout, what, poll.Holds(cond))
}

type recorder struct {
	mu       sync.Mutex
	lags     []time.Duration
	passes   map[string]int
	errors   []string
	refusals int
}

func (r *recorder) RecordUnlockLag(_ context.Context, _, _ string, lag time.Duration) {
	r.mu.Lock()
	r.lags = append(r.lags, lag)
	r.mu.Unlock()
}
func (r *recorder) RecordPass(_ context.Context, task string, _ time.Duration, _ error) {
	r.mu.Lock()
	r.passes[task]++
	r.mu.Unlock()
}
func (r *recorder) RecordError(_ context.Context, kind string) {
	r.mu.Lock()
	r.errors = append(r.errors, kind)
	r.mu.Unlock()
}
func (r *recorder) RecordFenceRefusal(context.Context, string, string) {
	r.mu.Lock()
	r.refusals++
	r.mu.Unlock()
}
func (r *recorder) count(task string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.passes[task]
}
func (r *recorder) errorKinds() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errors...)
}

// Locks are returned at their deadline because the nack told the keeper,
// not because it polled: one unlock pass per distinct deadline, no more.
func TestUnlockAtDeadlineWithoutPolling(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	h.create("jobs", queue.Config{}, 1)
	for i := 0; i < 3; i++ {
		if _, err := h.client.Enqueue(h.ctx, "jobs", queue.Message{ID: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := h.client.Pull(h.ctx, "jobs", 3, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Let the first probe and measure settle, then count from here.
	waitFor(t, 5*time.Second, "first measure", func() bool { return h.rec.count("measure") > 0 })
	before := h.rec.count("unlock")
	for i, d := range ds {
		if _, err := h.client.Nack(h.ctx, d, queue.NackOptions{LockFor: time.Duration(150-40*i) * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	// A pass records its lags after its script returned, so Redis can show
	// all three ready a moment before the third lag is recorded.
	lagsSoFar := func() []time.Duration {
		h.rec.mu.Lock()
		defer h.rec.mu.Unlock()
		return append([]time.Duration(nil), h.rec.lags...)
	}
	waitFor(t, 5*time.Second, "all three unlocked and their lags recorded", func() bool {
		return h.stats("jobs").Ready == 3 && len(lagsSoFar()) >= 3
	})
	passes := h.rec.count("unlock") - before
	if passes < 1 || passes > 4 {
		t.Fatalf("%d unlock passes for three deadlines; want 1..4 (no polling)", passes)
	}
	lags := lagsSoFar()
	if len(lags) != 3 {
		t.Fatalf("recorded %d lags, want 3", len(lags))
	}
	t.Logf("unlock lags %v in %d passes", lags, passes)
}

func TestRequeueExpireTrimRunByThemselves(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	cfg := h.create("q", queue.Config{Partitions: 2, MaxDeliveries: 1, MaxSize: 5}, 1)
	for i := 0; i < 4; i++ {
		if _, err := h.client.Enqueue(h.ctx, "q", queue.Message{ID: fmt.Sprint("lease", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.client.Pull(h.ctx, "q", 4, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// Max deliveries 1: every expired lease dead-letters.
	waitFor(t, 5*time.Second, "expired leases dead-lettered", func() bool { return h.stats("q").Dead == 4 })
	for i := 0; i < 3; i++ {
		if _, err := h.client.Enqueue(h.ctx, "q", queue.Message{ID: fmt.Sprint("ttl", i), TTL: 60 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "TTL expiry", func() bool { return h.stats("q").Counters.Expired == 3 })
	// Size cap 5 per partition: push one partition over it.
	for i := 0; i < 40; i++ {
		if _, err := h.client.Enqueue(h.ctx, "q", queue.Message{ID: fmt.Sprint("fill", i)}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "trim to max size", func() bool {
		st := h.stats("q")
		for _, s := range st.Shards {
			if s.Ready+s.Inflight+s.Locked > int64(cfg.MaxSize) {
				return false
			}
		}
		return st.Counters.Trimmed > 0
	})
}

func TestFencedShardIsDroppedAtOnce(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	h.create("f", queue.Config{}, 5)
	s := queue.Shard{Queue: "f", Partition: 0}
	if _, err := h.client.Enqueue(h.ctx, "f", queue.Message{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "first measure", func() bool { return h.rec.count("measure") > 0 })
	// A successor with token 6 writes to the shard.
	if _, err := h.unlock(s, 6, 10); err != nil {
		t.Fatal(err)
	}
	// Our keeper's next write (the delayed message's unlock) is refused.
	if _, err := h.client.Enqueue(h.ctx, "f", queue.Message{ID: "b", Delay: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-h.fenced:
		if got != s {
			t.Fatalf("fenced %v", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("keeper never noticed the fence")
	}
	if _, owned := h.k.Owned()[s.String()]; owned {
		t.Fatal("fenced shard still owned")
	}
	if st := h.stats("f"); st.Locked != 1 {
		t.Fatalf("refused write changed the shard: %+v", st)
	}
}

// unlock runs one unlock pass of s under token, as a keeper would.
func (h *harness) unlock(s queue.Shard, token int64, batch int) (queue.PassResult, error) {
	o := h.layout.Passes(h.ctx, []queue.PassRequest{{Shard: s, Task: queue.TaskUnlock, Token: token, Batch: batch}})[0]
	return o.Result, o.Err
}

// Disown returns only after the shard's running pass finished.
func TestDisownWaitsForRunningPass(t *testing.T) {
	slow := &slowLayout{}
	h := newHarness(t, redisserver.Config{}, Config{})
	// Its own Native: a Native's wake subscriptions serve one keeper.
	slow.Layout = queue.NewNative(h.rdb, "")
	slow.started = make(chan struct{}, 1)
	slow.release = make(chan struct{})
	k := New(slow, Config{})
	if err := k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	cfg := h.create("d", queue.Config{}, 1)
	h.k.DisownAll()
	s := queue.Shard{Queue: "d", Partition: 0}
	own(k, s, cfg, 1)
	<-slow.started
	done := make(chan struct{})
	go func() { k.Disown([]queue.Shard{s}); close(done) }()
	select {
	case <-done:
		t.Fatal("Disown returned while a pass was running")
	case <-slow.started:
		t.Fatal("a new pass started after Disown")
	default:
	}
	close(slow.release)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Disown did not return after the pass finished")
	}
	if len(k.Owned()) != 0 {
		t.Fatal("still owned after Disown")
	}
}

// A probe claims a newly owned shard's fence; a Disown that returned while
// that claim was in flight let it reach Redis after the successor had
// claimed (the chaos harness saw it 30ms after a handoff).
func TestDisownWaitsForClaimingProbe(t *testing.T) {
	slow := &slowProbe{started: make(chan struct{}, 1), release: make(chan struct{})}
	h := newHarness(t, redisserver.Config{}, Config{})
	slow.Layout = queue.NewNative(h.rdb, "")
	k := New(slow, Config{})
	if err := k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(slow.release) }) }
	t.Cleanup(unblock) // runs before the keeper's stop
	cfg := h.create("p", queue.Config{}, 1)
	h.k.DisownAll()
	s := queue.Shard{Queue: "p", Partition: 0}
	own(k, s, cfg, 1)
	<-slow.started
	done := make(chan struct{})
	go func() { k.Disown([]queue.Shard{s}); close(done) }()
	poll.For(t, 5*time.Second, "the shard dropped", func() (bool, string) {
		return len(k.Owned()) == 0, "still owned"
	})
	select {
	case <-done:
		t.Fatal("Disown returned while the claiming probe was in flight")
	case <-time.After(300 * time.Millisecond):
	}
	unblock()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Disown did not return after the probe finished")
	}
}

// slowProbe holds the first claiming probe until release.
type slowProbe struct {
	queue.Layout
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (s *slowProbe) Probe(ctx context.Context, reqs []queue.ProbeRequest) ([]queue.ProbeResult, error) {
	if len(reqs) > 0 && reqs[0].Claim {
		s.once.Do(func() {
			s.started <- struct{}{}
			<-s.release
		})
	}
	return s.Layout.Probe(ctx, reqs)
}

type slowLayout struct {
	queue.Layout
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (s *slowLayout) Passes(ctx context.Context, reqs []queue.PassRequest) []queue.PassOutcome {
	if reqs[0].Task == queue.TaskMeasure {
		s.once.Do(func() {
			s.started <- struct{}{}
			<-s.release
		})
	}
	return s.Layout.Passes(ctx, reqs)
}

// A Redis an hour ahead of the keeper's clock changes nothing: deadlines are
// Redis's, and the keeper converts them with the offset it measures.
func TestKeeperWithSkewedRedisClock(t *testing.T) {
	h := newHarness(t, redisserver.Config{ClockOffset: time.Hour}, Config{})
	h.create("skew", queue.Config{}, 1)
	if _, err := h.client.Enqueue(h.ctx, "skew", queue.Message{ID: "a", Delay: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	var lag time.Duration
	waitFor(t, 10*time.Second, "unlock and its lag recorded", func() bool {
		h.rec.mu.Lock()
		defer h.rec.mu.Unlock()
		if len(h.rec.lags) == 0 {
			return false
		}
		lag = h.rec.lags[0]
		return true
	})
	// A keeper that used its own clock would be an hour late (or early).
	if lag < 0 || lag > 10*time.Second {
		t.Fatalf("unlock lag %s with a skewed redis clock", lag)
	}
}

// One broken shard (a wrong-typed key) does not stop the others, and its
// errors are counted by kind.
func TestBadShardDoesNotStopOthers(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	h.create("ok", queue.Config{}, 1)
	h.create("broken", queue.Config{}, 1)
	h.rdb.HSet(h.ctx, "keeper:{broken#0}:clean", "f", "v")
	if _, err := h.client.Enqueue(h.ctx, "ok", queue.Message{ID: "a", Delay: 20 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "healthy shard served", func() bool { return h.stats("ok").Ready == 1 })
	waitFor(t, 5*time.Second, "broken shard's error counted", func() bool {
		for _, k := range h.rec.errorKinds() {
			if k == "wrongtype" {
				return true
			}
		}
		return false
	})
}

// Redis going away and coming back on the same port: the keeper retries
// with backoff and resumes, and hints lost meanwhile are recovered by the
// resync probe.
func TestRedisRestartIsSurvived(t *testing.T) {
	port, err := loopback.Port()
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, redisserver.Config{Port: port}, Config{MaxBackoff: 200 * time.Millisecond})
	h.create("r", queue.Config{}, 1)
	waitFor(t, 5*time.Second, "first measure", func() bool { return h.rec.count("measure") > 0 })
	_ = h.srv.Stop()
	waitFor(t, 5*time.Second, "a failure while redis is down", func() bool {
		h.k.mu.Lock()
		defer h.k.mu.Unlock()
		for _, st := range h.k.shards {
			if st.fail != nil {
				return true
			}
		}
		// Force a pass so there is something to fail.
		for _, st := range h.k.shards {
			h.k.heap.schedule(st, Unlock, monoNow())
		}
		h.k.signal(h.k.kick)
		return false
	})
	srv2 := redisserver.StartConfigTB(t, redisserver.Config{Port: port})
	_ = srv2
	// The new server is empty: recreate the queue and put a delayed message.
	if err := h.client.Registry().Create(h.ctx, "r", queue.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.client.Enqueue(h.ctx, "r", queue.Message{ID: "x", Delay: 30 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "unlock after redis came back", func() bool { return h.stats("r").Ready == 1 })
}

// A keeper subscribes to the hint channels of the shards it owns and no
// others, so hint traffic per keeper follows its share of the fleet; a
// shard it disowns is unsubscribed.
func TestKeeperHearsOnlyOwnedShards(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	if err := h.client.Registry().Create(h.ctx, "own", queue.Config{Partitions: 3}); err != nil {
		t.Fatal(err)
	}
	cfg := queue.Config{Partitions: 3}.WithDefaults()
	s := func(p int) queue.Shard { return queue.Shard{Queue: "own", Partition: p} }
	own(h.k, s(0), cfg, 1)
	own(h.k, s(1), cfg, 1)
	subscribers := func(p int) int64 {
		ch := queue.NewInspector(h.rdb, "").WakeChannel(s(p))
		n, err := h.rdb.PubSubNumSub(h.ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n[ch]
	}
	poll.For(t, 5*time.Second, "owned shards subscribed", func() (bool, string) {
		got := []int64{subscribers(0), subscribers(1), subscribers(2)}
		return got[0] == 1 && got[1] == 1 && got[2] == 0, fmt.Sprint("subscribers per partition ", got)
	})
	h.k.Disown([]queue.Shard{s(1)})
	poll.For(t, 5*time.Second, "disowned shard unsubscribed", func() (bool, string) {
		got := []int64{subscribers(0), subscribers(1), subscribers(2)}
		return got[0] == 1 && got[1] == 0 && got[2] == 0, fmt.Sprint("subscribers per partition ", got)
	})
	// A lock on the owned shard is still returned on time by its hint.
	if _, err := h.client.Enqueue(h.ctx, "own", queue.Message{ID: idIn(0, 3), Delay: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "owned shard's lock returned", func() bool { return h.stats("own").Ready == 1 })
}

// idIn is a message id that lands in partition p of n.
func idIn(p, n int) string {
	for i := 0; ; i++ {
		if id := fmt.Sprint("m", i); queue.PartitionOf(id, n) == p {
			return id
		}
	}
}

// TestWorkloadUnderKeeper runs producers and consumers against a live
// keeper and audits invariants 1 and 2 at the end.
func TestWorkloadUnderKeeper(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{Batch: 7})
	cfg := h.create("w", queue.Config{Partitions: 4, MaxDeliveries: 4, MaxSize: 60, TTL: queue.Duration(400 * time.Millisecond)}, 1)
	ctx, cancel := context.WithTimeout(h.ctx, 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var acks atomic.Int64
	var failures atomic.Value
	fail := func(err error) { failures.CompareAndSwap(nil, err); cancel() }
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			var held []queue.Delivery
			for ctx.Err() == nil {
				switch r := rng.Intn(10); {
				case r < 4:
					m := queue.Message{ID: fmt.Sprint(rng.Intn(3000))}
					if rng.Intn(4) == 0 {
						m.Delay = time.Duration(rng.Intn(50)) * time.Millisecond
					}
					if _, err := h.client.Enqueue(ctx, "w", m); err != nil && ctx.Err() == nil {
						fail(err)
					}
				case r < 6:
					ds, err := h.client.Pull(ctx, "w", rng.Intn(4)+1, time.Duration(rng.Intn(40)+5)*time.Millisecond)
					if err != nil && ctx.Err() == nil {
						fail(err)
					}
					held = append(held, ds...)
				case len(held) > 0:
					i := rng.Intn(len(held))
					d := held[i]
					held = append(held[:i], held[i+1:]...)
					var err error
					if r < 8 {
						if err = h.client.Ack(ctx, d); err == nil {
							acks.Add(1)
						}
					} else {
						_, err = h.client.Nack(ctx, d, queue.NackOptions{LockFor: time.Duration(rng.Intn(30)) * time.Millisecond})
					}
					if err != nil && !errors.Is(err, queue.ErrStale) && ctx.Err() == nil {
						fail(err)
					}
				}
			}
		}(int64(g))
	}
	wg.Wait()
	if err, _ := failures.Load().(error); err != nil {
		t.Fatal(err)
	}
	// With no consumers left, the keeper must bring every lease and lock
	// back and expire or trim the rest.
	waitFor(t, 10*time.Second, "leases and locks drained", func() bool {
		st := h.stats("w")
		return st.Inflight == 0 && st.Locked == 0
	})
	a, err := h.client.Audit(h.ctx, "w")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		t.Fatalf("audit: %v", a.Problems)
	}
	if a.Counters.Acked != acks.Load() {
		t.Fatalf("acked counter %d, consumers saw %d", a.Counters.Acked, acks.Load())
	}
	for _, s := range h.stats("w").Shards {
		if s.Ready+s.Inflight+s.Locked > int64(cfg.MaxSize) {
			t.Fatalf("shard %s over max size: %+v", s.Shard, s)
		}
	}
	t.Logf("counters %v, present %d", a.Counters, a.Present())
}

// Taking a shard claims it at once: the fence rises to the new token with
// the first probe, so a paused previous owner is refused from then on even
// if nothing is due on the shard.
func TestOwnClaimsTheShardAtOnce(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	s := queue.Shard{Queue: "c", Partition: 0}
	if err := h.client.Registry().Create(h.ctx, "c", queue.Config{}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.unlock(s, 6, 10); err != nil { // the previous owner
		t.Fatal(err)
	}
	own(h.k, s, queue.Config{}.WithDefaults(), 7)
	waitFor(t, 5*time.Second, "fence raised to 7", func() bool {
		f, err := queue.NewInspector(h.rdb, "").Fences(h.ctx, []queue.Shard{s})
		return err == nil && f[0] == 7
	})
	var fe *queue.FencedError
	if _, err := h.unlock(s, 6, 10); !errors.As(err, &fe) {
		t.Fatalf("previous owner's write after the claim: %v", err)
	}
	// A claim under a token below the fence drops the shard at once.
	own(h.k, queue.Shard{Queue: "c", Partition: 2}, queue.Config{}.WithDefaults(), 7)
	s2 := queue.Shard{Queue: "c", Partition: 2}
	if _, err := h.unlock(s2, 9, 10); err != nil {
		t.Fatal(err)
	}
	h.k.DisownAll()
	own(h.k, s2, queue.Config{}.WithDefaults(), 8)
	select {
	case got := <-h.fenced:
		if got != s2 {
			t.Fatalf("fenced %v, want %v", got, s2)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a claim below the fence was not reported")
	}
}

// A keeper stopped while its dispatcher is handing a pass to a worker that
// cannot take it yet must not leave that pass counted as running: Disown
// would then wait for it forever, and so would a SIGTERM's handoff (issue 9,
// defect 2). The one worker is held in OnFenced, after it has counted its
// own pass as done, so the dispatcher hands the next pass and blocks.
func TestStopWhileHandingAPassLetsDisownReturn(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	inFenced := make(chan struct{}, 1)
	release := make(chan struct{})
	releaseWorker := sync.OnceFunc(func() { close(release) })
	k := New(queue.NewNative(h.rdb, ""), Config{Workers: 1, MeasureInterval: 40 * time.Millisecond,
		OnFenced: func(queue.Shard, int64) {
			inFenced <- struct{}{}
			<-release
		}})
	if err := k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(releaseWorker)
	stopAtCleanup(t, k)
	for _, q := range []string{"a", "b"} {
		if err := h.client.Registry().Create(h.ctx, q, queue.Config{}); err != nil {
			t.Fatal(err)
		}
	}
	cfg := queue.Config{}.WithDefaults()
	a, b := queue.Shard{Queue: "a"}, queue.Shard{Queue: "b"}

	// Take a and wait for its claim; probes after the claim only read, so
	// the refusal below comes from a worker's pass.
	own(k, a, cfg, 5)
	waitFor(t, 10*time.Second, "a claimed", func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		st := k.shards[a]
		return st != nil && st.claimed
	})
	if _, err := h.unlock(a, 6, 10); err != nil { // a successor
		t.Fatal(err)
	}
	if _, err := h.client.Enqueue(h.ctx, "a", queue.Message{ID: "x", Delay: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inFenced:
	case <-time.After(10 * time.Second):
		t.Fatal("no pass on a was refused")
	}

	// The worker is stuck in OnFenced; b's first measurement comes due and
	// the dispatcher blocks handing it over.
	own(k, b, cfg, 5)
	waitFor(t, 10*time.Second, "dispatcher handing b's pass", func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		st := k.shards[b]
		return st != nil && st.busy == 1 && k.trips == 1
	})
	go func() { _ = k.Stop(context.Background()) }()
	waitFor(t, 10*time.Second, "keeper stopping", func() bool { return k.base.Life().Err() != nil })
	var disowned atomic.Bool
	go func() { k.Disown([]queue.Shard{b}); disowned.Store(true) }()
	waitFor(t, 10*time.Second, "Disown(b) to return after Stop", disowned.Load)
	releaseWorker()
}

// The context given to Start bounds the start only. The daemon starts its
// keeper under the signal context, and a SIGTERM must not stop the passes
// before the shards are handed over: only Stop ends them.
func TestStartContextDoesNotStopPasses(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	k := New(queue.NewNative(h.rdb, ""), Config{})
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	cancel()
	if err := h.client.Registry().Create(h.ctx, "s", queue.Config{}); err != nil {
		t.Fatal(err)
	}
	own(k, queue.Shard{Queue: "s"}, queue.Config{}.WithDefaults(), 1)
	if _, err := h.client.Enqueue(h.ctx, "s", queue.Message{ID: "x", Delay: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "lock returned after the start context ended", func() bool { return h.stats("s").Ready == 1 })
}

// A shard taken over is owned before its first measurement: EachOwned lists
// it (its unlock lags are kept for it) while EachMeasurement does not (it
// has no gauges to report yet).
func TestEachOwnedListsShardsNotMeasuredYet(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	slow := &slowLayout{Layout: queue.NewNative(h.rdb, ""), started: make(chan struct{}, 1), release: make(chan struct{})}
	k := New(slow, Config{})
	if err := k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	t.Cleanup(func() { close(slow.release) })
	if err := h.client.Registry().Create(h.ctx, "m", queue.Config{}); err != nil {
		t.Fatal(err)
	}
	s := queue.Shard{Queue: "m"}
	own(k, s, queue.Config{}.WithDefaults(), 1)
	select {
	case <-slow.started: // the first measurement is held
	case <-time.After(10 * time.Second):
		t.Fatal("no first measurement")
	}
	var owned []queue.Shard
	k.EachOwned(func(x queue.Shard) { owned = append(owned, x) })
	measured := 0
	k.EachMeasurement(func(ShardMeasurement) { measured++ })
	if len(owned) != 1 || owned[0] != s || measured != 0 {
		t.Fatalf("owned %v, measured %d; want [%v] and 0", owned, measured, s)
	}
}

// The keeper keeps the lifecycle rules (internal/service).
func TestKeeperStartStop(t *testing.T) {
	srv := redisserver.StartConfigTB(t, redisserver.Config{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	servicetest.Stress(t, 20, func(t *testing.T) service.Service {
		k := New(queue.NewNative(rdb, ""), Config{})
		k.SetConfig("q", queue.Config{}.WithDefaults())
		k.Own([]queue.Shard{{Queue: "q"}}, 1)
		return k
	})
}

// watchCounter counts the layout's Watch calls.
type watchCounter struct {
	queue.Layout
	mu    sync.Mutex
	calls []int // shards per call, + on, - off
}

func (w *watchCounter) Watch(shards []queue.Shard, on bool) {
	w.mu.Lock()
	n := len(shards)
	if !on {
		n = -n
	}
	w.calls = append(w.calls, n)
	w.mu.Unlock()
	w.Layout.Watch(shards, on)
}

// Owning and disowning a unit's shards costs one Watch call each, whatever
// the number of shards: a handoff's cost follows the units that move.
func TestOwnAndDisownAUnitInOneCall(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	wc := &watchCounter{Layout: queue.NewNative(h.rdb, "")}
	k := New(wc, Config{})
	if err := k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	cfg := queue.Config{Partitions: 1000}.WithDefaults()
	if err := h.client.Registry().Create(h.ctx, "u", cfg); err != nil {
		t.Fatal(err)
	}
	k.SetConfig("u", cfg)
	shards := make([]queue.Shard, 1000)
	for p := range shards {
		shards[p] = queue.Shard{Queue: "u", Partition: p}
	}
	k.Own(shards, 3)
	waitFor(t, 30*time.Second, "every shard claimed", func() bool {
		f, err := queue.NewInspector(h.rdb, "").Fences(h.ctx, shards)
		if err != nil {
			return false
		}
		for _, v := range f {
			if v != 3 {
				return false
			}
		}
		return true
	})
	k.Disown(shards[:500])
	k.DisownAll()
	wc.mu.Lock()
	defer wc.mu.Unlock()
	if want := []int{1000, -500, -500}; !slices.Equal(wc.calls, want) {
		t.Fatalf("Watch calls %v, want %v", wc.calls, want)
	}
	if n := k.OwnedCount(); n != 0 {
		t.Fatalf("%d shards still owned", n)
	}
}

// A taken shard is measured only after its claim: a takeover's claims come
// before its measurements, which would otherwise compete with them for
// Redis (one measurement per taken shard within a quarter interval).
func TestTakenShardMeasuredAfterItsClaim(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	slow := &slowProbe{started: make(chan struct{}, 1), release: make(chan struct{}), Layout: queue.NewNative(h.rdb, "")}
	k := New(slow, Config{MeasureInterval: 40 * time.Millisecond})
	if err := k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(slow.release) }) }
	t.Cleanup(unblock)
	cfg := h.create("c", queue.Config{}, 1)
	h.k.DisownAll()
	s := queue.Shard{Queue: "c", Partition: 0}
	// A message makes the shard changed: a wake asks for its measurement.
	if _, err := h.client.Enqueue(h.ctx, "c", queue.Message{ID: "x"}); err != nil {
		t.Fatal(err)
	}
	own(k, s, cfg, 1)
	<-slow.started
	// Several measure intervals pass while the claim is held.
	deadline := time.Now().Add(400 * time.Millisecond)
	for time.Now().Before(deadline) {
		measured := 0
		k.EachMeasurement(func(ShardMeasurement) { measured++ })
		if measured != 0 {
			t.Fatal("measured before its claim returned")
		}
		time.Sleep(10 * time.Millisecond)
	}
	unblock()
	poll.For(t, 10*time.Second, "measured after the claim", func() (bool, string) {
		var m []ShardMeasurement
		k.EachMeasurement(func(x ShardMeasurement) { m = append(m, x) })
		return len(m) == 1 && m[0].Measurement.Ready == 1, fmt.Sprintf("%+v", m)
	})
}

// Claims of a takeover go out in several pipelines at once, and no shard is
// ever in two probes at the same time (its Resync, asked while its claim is
// in flight, waits for the next batch).
func TestProbePipelinesNeverShareAShard(t *testing.T) {
	h := newHarness(t, redisserver.Config{}, Config{})
	tr := &probeTracker{Layout: queue.NewNative(h.rdb, ""), inFlight: map[queue.Shard]bool{}}
	k := New(tr, Config{})
	if err := k.Start(h.ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	// Two queues: the shards of several rounds of pipelines are more than
	// one queue's partitions may be.
	per := 2 * ProbePipelines * probeChunk
	var shards []queue.Shard
	for _, q := range []string{"many-a", "many-b"} {
		cfg := h.create(q, queue.Config{Partitions: per}, 1)
		k.SetConfig(q, cfg)
		for p := 0; p < per; p++ {
			shards = append(shards, queue.Shard{Queue: q, Partition: p})
		}
	}
	h.k.DisownAll()
	n := len(shards)
	k.Own(shards, 2) // above the harness keeper's claims
	fences := queue.NewInspector(h.rdb, "")
	poll.For(t, time.Minute, "every shard claimed", func() (bool, string) {
		f, err := fences.Fences(h.ctx, shards)
		if err != nil {
			return false, err.Error()
		}
		left := 0
		for _, v := range f {
			if v != 2 {
				left++
			}
		}
		return left == 0, fmt.Sprintf("%d of %d not claimed", left, n)
	})
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.overlaps > 0 {
		t.Errorf("%d probes asked for a shard already in another probe in flight", tr.overlaps)
	}
	if tr.maxConcurrent < 2 {
		t.Errorf("at most %d probe at once, want claims in several pipelines", tr.maxConcurrent)
	}
}

// probeTracker counts probes in flight at once, and shards asked for while
// already in a probe in flight.
type probeTracker struct {
	queue.Layout
	mu                      sync.Mutex
	inFlight                map[queue.Shard]bool
	concurrent              int
	maxConcurrent, overlaps int
}

func (p *probeTracker) Probe(ctx context.Context, reqs []queue.ProbeRequest) ([]queue.ProbeResult, error) {
	p.mu.Lock()
	p.concurrent++
	p.maxConcurrent = max(p.maxConcurrent, p.concurrent)
	for _, r := range reqs {
		if p.inFlight[r.Shard] {
			p.overlaps++
		}
		p.inFlight[r.Shard] = true
	}
	p.mu.Unlock()
	res, err := p.Layout.Probe(ctx, reqs)
	p.mu.Lock()
	p.concurrent--
	for _, r := range reqs {
		delete(p.inFlight, r.Shard)
	}
	p.mu.Unlock()
	return res, err
}
