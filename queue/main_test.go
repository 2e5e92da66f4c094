package queue

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

// One real redis-server for the package, or with KEEPER_TEST_REDIS_CLUSTER=N
// a Redis Cluster of N primaries (`make test` runs the package both ways);
// each test works under its own key prefix so tests cannot see each other's
// keys.
var testAddrs []string

func TestMain(m *testing.M) {
	var stop func() error
	if n, _ := strconv.Atoi(os.Getenv("KEEPER_TEST_REDIS_CLUSTER")); n > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		c, err := redisserver.StartCluster(ctx, n, redisserver.Config{})
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, "queue tests on a cluster need redis-server:", err)
			os.Exit(1)
		}
		testAddrs, stop = c.Addrs(), c.Stop
		fmt.Fprintf(os.Stderr, "queue tests on a Redis Cluster of %d primaries: %s\n", n, strings.Join(testAddrs, " "))
	} else {
		s, err := redisserver.Start(context.Background(), redisserver.Config{})
		if err != nil {
			fmt.Fprintln(os.Stderr, "queue tests need redis-server:", err)
			os.Exit(1)
		}
		testAddrs, stop = []string{s.Addr}, s.Stop
	}
	code := m.Run()
	_ = stop()
	os.Exit(code)
}

var prefixSeq atomic.Int64

type env struct {
	t      *testing.T
	ctx    context.Context
	rdb    redis.UniversalClient
	prefix string
	c      *Client
	n      *Native
	in     *Inspector
}

func newEnv(t *testing.T) *env {
	t.Helper()
	// One address makes a plain client, several a cluster client.
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: testAddrs})
	t.Cleanup(func() { _ = rdb.Close() })
	prefix := fmt.Sprintf("t%d", prefixSeq.Add(1))
	return &env{t: t, ctx: context.Background(), rdb: rdb, prefix: prefix,
		c: NewClient(rdb, ClientOptions{Prefix: prefix, ConfigTTL: time.Millisecond}),
		n: NewNative(rdb, prefix), in: NewInspector(rdb, prefix)}
}

func (e *env) create(name string, cfg Config) {
	e.t.Helper()
	if err := e.c.Registry().Create(e.ctx, name, cfg); err != nil {
		e.t.Fatalf("create %s: %v", name, err)
	}
}

func (e *env) enqueue(q string, m Message) EnqueueResult {
	e.t.Helper()
	r, err := e.c.Enqueue(e.ctx, q, m)
	if err != nil {
		e.t.Fatalf("enqueue: %v", err)
	}
	return r
}

func (e *env) pull(q string, n int, lease time.Duration) []Delivery {
	e.t.Helper()
	d, err := e.c.Pull(e.ctx, q, n, lease)
	if err != nil {
		e.t.Fatalf("pull: %v", err)
	}
	return d
}

func (e *env) keys(s Shard) shardKeys { return keysFor(e.prefix, s) }

// snapshot is every key of the prefix with a dump of its value, to show
// that a refused operation changed nothing.
func (e *env) snapshot() map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for _, k := range e.allKeys(e.prefix + ":*") {
		v, err := e.rdb.Dump(e.ctx, k).Result()
		if err != nil {
			e.t.Fatal(err)
		}
		out[k] = v
	}
	return out
}

func (e *env) sameAs(before map[string]string) {
	e.t.Helper()
	after := e.snapshot()
	if len(after) != len(before) {
		e.t.Fatalf("key count changed: %d -> %d", len(before), len(after))
	}
	for k, v := range before {
		if after[k] != v {
			e.t.Fatalf("key %s changed", k)
		}
	}
}

// onEveryPrimary runs fn on the server, or on every primary of a cluster,
// one at a time: KEYS and PUBSUB NUMSUB answer for their own node only.
func (e *env) onEveryPrimary(fn func(ctx context.Context, c redis.Cmdable) error) {
	e.t.Helper()
	var err error
	if cc, ok := e.rdb.(*redis.ClusterClient); ok {
		var mu sync.Mutex
		err = cc.ForEachMaster(e.ctx, func(ctx context.Context, node *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return fn(ctx, node)
		})
	} else {
		err = fn(e.ctx, e.rdb)
	}
	if err != nil {
		e.t.Fatal(err)
	}
}

// allKeys is KEYS pattern over every primary.
func (e *env) allKeys(pattern string) []string {
	e.t.Helper()
	var keys []string
	e.onEveryPrimary(func(ctx context.Context, c redis.Cmdable) error {
		k, err := c.Keys(ctx, pattern).Result()
		keys = append(keys, k...)
		return err
	})
	return keys
}

// subscribers counts the clients subscribed to ch over every primary.
func (e *env) subscribers(ch string) int64 {
	e.t.Helper()
	var total int64
	e.onEveryPrimary(func(ctx context.Context, c redis.Cmdable) error {
		m, err := c.PubSubNumSub(ctx, ch).Result()
		total += m[ch]
		return err
	})
	return total
}

func (e *env) redisNowMs() int64 {
	e.t.Helper()
	now, err := e.n.Now(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return now.UnixMilli()
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	poll.For(t, timeout, what, poll.Holds(cond))
}

func ptr[T any](v T) *T { return &v }

func redisZ(score float64, member string) redis.Z { return redis.Z{Score: score, Member: member} }

// The single passes, through Layout.Passes, the one way a keeper runs them.
func pass(l Layout, ctx context.Context, r PassRequest) PassOutcome {
	return l.Passes(ctx, []PassRequest{r})[0]
}

func unlockPass(l Layout, ctx context.Context, s Shard, token int64, batch int) (PassResult, error) {
	o := pass(l, ctx, PassRequest{Shard: s, Task: TaskUnlock, Token: token, Batch: batch})
	return o.Result, o.Err
}

func requeuePass(l Layout, ctx context.Context, s Shard, cfg Config, token int64, batch int) (PassResult, error) {
	o := pass(l, ctx, PassRequest{Shard: s, Task: TaskRequeue, Token: token, Batch: batch, Config: cfg})
	return o.Result, o.Err
}

func expirePass(l Layout, ctx context.Context, s Shard, token int64, batch int) (PassResult, error) {
	o := pass(l, ctx, PassRequest{Shard: s, Task: TaskExpire, Token: token, Batch: batch})
	return o.Result, o.Err
}

func trimPass(l Layout, ctx context.Context, s Shard, cfg Config, token int64, batch int) (PassResult, error) {
	o := pass(l, ctx, PassRequest{Shard: s, Task: TaskTrim, Token: token, Batch: batch, Config: cfg})
	return o.Result, o.Err
}

func measurePass(l Layout, ctx context.Context, s Shard, token int64) (Measurement, error) {
	o := pass(l, ctx, PassRequest{Shard: s, Task: TaskMeasure, Token: token})
	return o.Measurement, o.Err
}
