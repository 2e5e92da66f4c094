package election

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/service/servicetest"
	"github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/shard"
)

// shardList is a fixed otel.ShardSource.
type shardList []otel.ShardSnapshot

func (l shardList) EachShard(f func(otel.ShardSnapshot)) {
	for _, s := range l {
		f(s)
	}
}

// countingSource returns the summary it holds and counts its calls, so a
// test can wait for intervals to pass without sleeping.
type countingSource struct {
	mu    sync.Mutex
	sum   Summary
	calls atomic.Int64
}

func (s *countingSource) set(sum Summary) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sum = sum
}

func (s *countingSource) get() Summary {
	s.calls.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sum
}

func (c *cluster) publisher(member string, interval time.Duration, src func() Summary) *Publisher {
	c.t.Helper()
	p := NewPublisher(c.clientTo(c.srv.Endpoints()), PublisherConfig{MemberID: member, Interval: interval,
		SessionTTL: testTTL, Logger: c.log}, src)
	if err := p.Start(context.Background()); err != nil {
		c.t.Fatalf("start publisher: %v", err)
	}
	c.t.Cleanup(func() { _ = p.Stop(context.Background()) })
	return p
}

// stored reads the summary key; kv is nil when it is absent.
func (c *cluster) stored(key string) (*mvccpb.KeyValue, Summary) {
	c.t.Helper()
	resp, err := c.admin.Get(context.Background(), key)
	if err != nil {
		c.t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, Summary{}
	}
	var s Summary
	if err := json.Unmarshal(resp.Kvs[0].Value, &s); err != nil {
		c.t.Fatalf("decode %s: %v", key, err)
	}
	return resp.Kvs[0], s
}

func TestSummarize(t *testing.T) {
	s := Summarize("k1", shardList{
		{Queue: "a", Shard: "a#0", Ready: 1, Inflight: 2, Locked: 3, Dead: 4},
		{Queue: "a", Shard: "a#1", Ready: 10, Inflight: 20, Locked: 30, Dead: 40},
		{Queue: "b", Shard: "b#0", Ready: 5},
	})
	want := Summary{Member: "k1", OwnedShards: 3, Queues: map[string]QueueSummary{
		"a": {Shards: 2, Ready: 11, Inflight: 22, Locked: 33, Dead: 44, Cover: shardFingerprint("a#0") + shardFingerprint("a#1")},
		"b": {Shards: 1, Ready: 5, Cover: shardFingerprint("b#0")},
	}}
	got, _ := json.Marshal(s)
	exp, _ := json.Marshal(want)
	if string(got) != string(exp) {
		t.Fatalf("Summarize = %s, want %s", got, exp)
	}
	if e := Summarize("k1", nil); e.Member != "k1" || e.OwnedShards != 0 || len(e.Queues) != 0 {
		t.Fatalf("Summarize(nil) = %+v", e)
	}
}

func TestPublisherWritesOnlyChanges(t *testing.T) {
	c := newCluster(t)
	// Many shards over a few queues: the value, and the writes, depend on
	// the queues only.
	var shards shardList
	for q := 0; q < 50; q++ {
		for p := 0; p < 200; p++ {
			shards = append(shards, otel.ShardSnapshot{Queue: fmt.Sprintf("queue-%d", q),
				Shard: fmt.Sprintf("queue-%d#%d", q, p), Ready: int64(p), Locked: 1})
		}
	}
	src := &countingSource{sum: Summarize("ignored", shards)}
	p := c.publisher("k1", 20*time.Millisecond, src.get)

	var first *mvccpb.KeyValue
	poll.For(t, 10*time.Second, "summary published", func() (bool, string) {
		kv, s := c.stored(p.Key())
		if kv == nil {
			return false, "no key"
		}
		if s.Member != "k1" || s.OwnedShards != len(shards) || len(s.Queues) != 50 || s.Queues["queue-7"].Ready != 199*200/2 {
			return false, fmt.Sprintf("summary %+v", s)
		}
		first = kv
		return true, ""
	})
	if first.Lease == 0 {
		t.Fatalf("summary is not bound to a lease")
	}
	t.Logf("summary of %d shards in %d queues: %d bytes", len(shards), 50, len(first.Value))

	// Unchanged content is not written again, however many intervals pass.
	calls := src.calls.Load()
	poll.For(t, 10*time.Second, "20 more intervals", func() (bool, string) {
		return src.calls.Load() >= calls+20, "source not called yet"
	})
	if kv, _ := c.stored(p.Key()); kv.Version != first.Version || kv.ModRevision != first.ModRevision {
		t.Fatalf("unchanged summary written again: version %d -> %d", first.Version, kv.Version)
	}

	shards[0].Ready += 1000
	src.set(Summarize("ignored", shards))
	poll.For(t, 10*time.Second, "changed summary published", func() (bool, string) {
		kv, s := c.stored(p.Key())
		if kv == nil || s.Queues["queue-0"].Ready != 199*200/2+1000 {
			return false, fmt.Sprintf("queue-0 %+v", s.Queues["queue-0"])
		}
		if kv.Version != first.Version+1 {
			t.Fatalf("one change written %d times", kv.Version-first.Version)
		}
		return true, ""
	})
}

func TestPublisherRepublishesAfterLeaseLoss(t *testing.T) {
	c := newCluster(t)
	src := &countingSource{sum: Summary{Queues: map[string]QueueSummary{"a": {Shards: 1, Ready: 3}}}}
	// A long interval: the new lease must be used at once, not at the next
	// tick.
	p := c.publisher("k1", time.Hour, src.get)
	var lease int64
	poll.For(t, 10*time.Second, "summary published", func() (bool, string) {
		kv, _ := c.stored(p.Key())
		if kv == nil {
			return false, "no key"
		}
		lease = kv.Lease
		return true, ""
	})
	if _, err := c.admin.Revoke(context.Background(), clientv3.LeaseID(lease)); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	poll.For(t, 3*testTTL, "summary published under a new lease", func() (bool, string) {
		kv, s := c.stored(p.Key())
		if kv == nil {
			return false, "no key"
		}
		if kv.Lease == lease || s.Queues["a"].Ready != 3 {
			return false, fmt.Sprintf("lease %x, summary %+v", kv.Lease, s)
		}
		return true, ""
	})
}

func TestPublisherStopDeletesKey(t *testing.T) {
	c := newCluster(t)
	p := c.publisher("k1", 50*time.Millisecond, func() Summary { return Summary{} })
	poll.For(t, 10*time.Second, "summary published", func() (bool, string) {
		kv, _ := c.stored(p.Key())
		return kv != nil, "no key"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if kv, _ := c.stored(p.Key()); kv != nil {
		t.Fatalf("summary still stored after Stop")
	}
	if err := p.Stop(ctx); err != nil {
		t.Fatalf("second stop: %v", err)
	}
}

func TestPublisherRefusesBadConfig(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"", "a/b"} {
		p := NewPublisher(c.admin, PublisherConfig{MemberID: id}, func() Summary { return Summary{} })
		if err := p.Start(context.Background()); err == nil {
			_ = p.Stop(context.Background())
			t.Fatalf("publisher with member id %q started", id)
		}
	}
	if err := NewPublisher(c.admin, PublisherConfig{MemberID: "k"}, nil).Start(context.Background()); err == nil {
		t.Fatalf("publisher without a source started")
	}
}

// The publisher keeps the lifecycle rules (internal/service); a stopped
// publisher leaves no summary.
func TestPublisherStartStop(t *testing.T) {
	c := newCluster(t)
	n := 0
	servicetest.Stress(t, 10, func(t *testing.T) service.Service {
		n++
		return NewPublisher(c.admin, PublisherConfig{MemberID: fmt.Sprintf("s%d", n), Interval: 10 * time.Millisecond,
			SessionTTL: testTTL, Logger: c.log}, func() Summary { return Summary{OwnedShards: 1} })
	})
	poll.For(t, 2*testTTL+5*time.Second, "no summary left", func() (bool, string) {
		resp, err := c.admin.Get(context.Background(), shard.NewKeys("").Summaries(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return false, err.Error()
		}
		return resp.Count == 0, fmt.Sprintf("%d summaries", resp.Count)
	})
}
