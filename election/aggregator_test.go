package election

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/service/servicetest"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
)

const testTTL = 3 * time.Second

// testLog sends slog output to t.Log until the test ends; goroutines that
// outlive it (a revoke still in flight) must not log into a finished test.
func testLog(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

type cluster struct {
	t     *testing.T
	srv   *etcdserver.Server
	admin *clientv3.Client
	log   *slog.Logger
}

func newCluster(t *testing.T) *cluster {
	c := &cluster{t: t, log: testLog(t)}
	c.srv = etcdserver.StartTB(t)
	c.admin = c.clientTo(c.srv.Endpoints())
	return c
}

func (c *cluster) clientTo(endpoints []string) *clientv3.Client {
	c.t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second,
		DialOptions: shard.DialOptions(), Logger: zap.NewNop()})
	if err != nil {
		c.t.Fatalf("etcd client: %v", err)
	}
	c.t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func (c *cluster) aggregatorOn(cli *clientv3.Client, id string, cfg Config, catalog func() []queue.Shard) *Aggregator {
	c.t.Helper()
	cfg.MemberID = id
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = testTTL
	}
	cfg.Logger = c.log
	a := NewAggregator(cli, cfg, catalog)
	if err := a.Start(context.Background()); err != nil {
		c.t.Fatalf("start aggregator %s: %v", id, err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Stop(ctx)
	})
	return a
}

func (c *cluster) aggregator(id string, cfg Config, catalog func() []queue.Shard) *Aggregator {
	return c.aggregatorOn(c.clientTo(c.srv.Endpoints()), id, cfg, catalog)
}

func (c *cluster) aggregators(n int, cfg Config) []*Aggregator {
	as := make([]*Aggregator, n)
	for i := range as {
		as[i] = c.aggregator(fmt.Sprintf("k%d", i), cfg, nil)
	}
	return as
}

func leaders(as []*Aggregator) (ids, global []string) {
	for _, a := range as {
		if a.IsLeader() {
			ids = append(ids, a.MemberID())
		}
		if _, ok := a.Global(); ok {
			global = append(global, a.MemberID())
		}
	}
	return ids, global
}

// oneLeader waits until exactly one aggregator is leader and reports the
// global gauges, and returns it.
func oneLeader(t *testing.T, as []*Aggregator, timeout time.Duration) *Aggregator {
	t.Helper()
	var leader *Aggregator
	poll.For(t, timeout, "exactly one leader", func() (bool, string) {
		ids, global := leaders(as)
		if len(ids) != 1 || len(global) != 1 || ids[0] != global[0] {
			return false, fmt.Sprintf("leaders %v, reporting global %v", ids, global)
		}
		for _, a := range as {
			if a.MemberID() == ids[0] {
				leader = a
			}
		}
		return true, ""
	})
	return leader
}

func without(as []*Aggregator, x *Aggregator) []*Aggregator {
	return slices.DeleteFunc(slices.Clone(as), func(a *Aggregator) bool { return a == x })
}

func TestLeaderWithoutCandidates(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if id, err := Leader(ctx, c.admin, shard.NewKeys("")); err != ErrNoLeader {
		t.Fatalf("Leader with no candidates = %q, %v; want ErrNoLeader", id, err)
	}
	a := NewAggregator(c.admin, Config{}, nil)
	if a.IsLeader() {
		t.Fatalf("an aggregator that was never started is leader")
	}
	if _, ok := a.Global(); ok {
		t.Fatalf("an aggregator that was never started reports global gauges")
	}
}

// The aggregator keeps the lifecycle rules (internal/service); a stopped
// aggregator leaves no candidate key.
func TestAggregatorStartStop(t *testing.T) {
	c := newCluster(t)
	n := 0
	servicetest.Stress(t, 10, func(t *testing.T) service.Service {
		n++
		return NewAggregator(c.admin, Config{MemberID: fmt.Sprintf("s%d", n), SessionTTL: testTTL, Logger: c.log}, nil)
	})
	poll.For(t, 2*testTTL+5*time.Second, "no candidate left", func() (bool, string) {
		resp, err := c.admin.Get(context.Background(), shard.NewKeys("").Election()+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return false, err.Error()
		}
		return resp.Count == 0, fmt.Sprintf("%d candidates", resp.Count)
	})
}
