package election

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/internal/poll"
)

func TestExactlyOneLeader(t *testing.T) {
	c := newCluster(t)
	as := c.aggregators(3, Config{})
	leader := oneLeader(t, as, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, a := range as {
		id, err := a.Leader(ctx)
		if err != nil || id != leader.MemberID() {
			t.Fatalf("Leader() on %s = %q, %v; want %q", a.MemberID(), id, err, leader.MemberID())
		}
	}
	// Leadership stays put and single while nothing happens: check it over
	// several lease renewals.
	renewalsBy := time.Now().Add(testTTL)
	for time.Now().Before(renewalsBy) {
		if ids, global := leaders(as); len(ids) != 1 || ids[0] != leader.MemberID() || len(global) != 1 {
			t.Fatalf("steady state: leaders %v, reporting global %v; want only %s", ids, global, leader.MemberID())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestResignHandsOverAtOnce(t *testing.T) {
	c := newCluster(t)
	as := c.aggregators(3, Config{})
	for round := 0; round < 2; round++ {
		leader := oneLeader(t, as, 20*time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		if err := leader.Stop(ctx); err != nil {
			t.Fatalf("stop leader: %v", err)
		}
		cancel()
		stopped := time.Since(start)
		if leader.IsLeader() {
			t.Fatalf("stopped leader still claims leadership")
		}
		if _, ok := leader.Global(); ok {
			t.Fatalf("stopped leader still reports global gauges")
		}
		as = without(as, leader)
		// A successor after a resign must not wait for the old lease to
		// expire; the deadline is that TTL, the handover takes far less.
		next := oneLeader(t, as, testTTL)
		t.Logf("round %d: resign of %s took %s; %s leader %s after Stop began", round,
			leader.MemberID(), stopped.Round(time.Millisecond), next.MemberID(), time.Since(start).Round(time.Millisecond))
	}
}

// TestPhantomLeaderGuard takes the leader's lease away behind its back in
// three ways and checks that it stops claiming leadership before anyone
// else starts, and that a successor follows within the lease TTL plus a
// second (the polling deadlines are generous; the measured times are logged).
func TestPhantomLeaderGuard(t *testing.T) {
	t.Run("revoke", func(t *testing.T) {
		c := newCluster(t)
		as := c.aggregators(3, Config{})
		leader := oneLeader(t, as, 20*time.Second)
		lease := leader.term.Load().lease.ID()
		start := time.Now()
		if _, err := c.admin.Revoke(context.Background(), lease); err != nil {
			t.Fatalf("revoke leader's lease: %v", err)
		}
		dropped := poll.For(t, testTTL, "old leader drops leadership", func() (bool, string) {
			return !leader.IsLeader(), "still leader"
		})
		next := oneLeader(t, without(as, leader), testTTL+time.Second)
		t.Logf("lease revoked: old leader dropped after %s, %s leader after %s", dropped.Round(time.Microsecond),
			next.MemberID(), time.Since(start).Round(time.Millisecond))
		// The old leader campaigns again under a new lease, as a follower.
		poll.For(t, 10*time.Second, "old leader campaigns again", func() (bool, string) {
			resp, err := c.admin.Get(context.Background(), "/keeper/election/", clientv3.WithPrefix())
			if err != nil {
				return false, err.Error()
			}
			return len(resp.Kvs) == 3, fmt.Sprintf("%d candidates", len(resp.Kvs))
		})
		if leader.IsLeader() {
			t.Fatalf("old leader leads again although %s holds the older key", next.MemberID())
		}
	})

	t.Run("client closed", func(t *testing.T) {
		c := newCluster(t)
		as := c.aggregators(3, Config{})
		leader := oneLeader(t, as, 20*time.Second)
		start := time.Now()
		_ = leader.cli.Close()
		dropped := poll.For(t, testTTL, "old leader drops leadership", func() (bool, string) {
			return !leader.IsLeader(), "still leader"
		})
		// The lease was renewed at most TTL/3 before the close, and etcd
		// expires it TTL after; the rest is etcd's expiry check (every
		// 500ms) and the successor's confirmation.
		next := oneLeader(t, without(as, leader), 3*testTTL)
		t.Logf("client closed: old leader dropped after %s, %s leader after %s (TTL %s)", dropped.Round(time.Microsecond),
			next.MemberID(), time.Since(start).Round(time.Millisecond), testTTL)
	})

	t.Run("partition", func(t *testing.T) {
		c := newCluster(t)
		proxy := startProxy(t, c.srv.Endpoints()[0])
		leaderCli := c.clientTo([]string{"http://" + proxy.Listen})
		first := c.aggregatorOn(leaderCli, "k0", Config{}, nil)
		oneLeader(t, []*Aggregator{first}, 20*time.Second)
		as := []*Aggregator{first, c.aggregator("k1", Config{}, nil), c.aggregator("k2", Config{}, nil)}
		oneLeader(t, as, 20*time.Second)
		if !first.IsLeader() {
			t.Fatalf("k0 campaigned first but is not leader")
		}
		// Blackhole both directions: the client sees no error, only
		// silence, so only the local lease deadline can tell it in time.
		start := time.Now()
		for _, dir := range []string{"upstream", "downstream"} {
			body := fmt.Sprintf(`{"name":"blackhole_%s","type":"timeout","stream":%q,"attributes":{"timeout":0}}`, dir, dir)
			if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(body)); err != nil {
				t.Fatalf("add toxic: %v", err)
			}
		}
		var dropped, took time.Duration
		var next string
		poll.For(t, 4*testTTL, "a successor behind the partition", func() (bool, string) {
			oldLeads := first.IsLeader()
			if !oldLeads && dropped == 0 {
				dropped = time.Since(start)
			}
			ids, global := leaders(as[1:])
			if len(ids) == 0 {
				return false, "no successor yet"
			}
			if oldLeads {
				t.Fatalf("two leaders: partitioned k0 still claims leadership while %v leads", ids)
			}
			if len(ids) != 1 || len(global) > 1 {
				t.Fatalf("leaders %v, reporting global %v", ids, global)
			}
			took, next = time.Since(start), ids[0]
			return true, ""
		})
		t.Logf("partitioned: old leader dropped after %s, %s leader after %s (TTL %s)",
			dropped.Round(time.Millisecond), next, took.Round(time.Millisecond), testTTL)
	})
}

func startProxy(t *testing.T, upstream string) *toxiproxy.Proxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.New(io.Discard))
	p := toxiproxy.NewProxy(srv, "etcd", "127.0.0.1:0", strings.TrimPrefix(upstream, "http://"))
	if err := p.Start(); err != nil {
		t.Fatalf("start proxy: %v", err)
	}
	t.Cleanup(p.Stop)
	return p
}

func TestEtcdRestart(t *testing.T) {
	c := newCluster(t)
	as := c.aggregators(3, Config{})
	before := oneLeader(t, as, 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	if err := c.srv.Restart(ctx); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	restarted := time.Since(start)
	after := oneLeader(t, as, 30*time.Second)
	id, err := after.Leader(ctx)
	if err != nil || id != after.MemberID() {
		t.Fatalf("etcd names leader %q (%v), but %s claims it", id, err, after.MemberID())
	}
	t.Logf("etcd restart: leader %s before, %s after; etcd down and up again in %s, one leader again %s after that",
		before.MemberID(), after.MemberID(), restarted.Round(time.Millisecond), (time.Since(start) - restarted).Round(time.Millisecond))
	for i := 0; i < 50; i++ {
		if ids, global := leaders(as); len(ids) > 1 || len(global) > 1 {
			t.Fatalf("after restart: leaders %v, reporting global %v", ids, global)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGlobalStopsWithLeadership checks that the cached snapshot is never
// served once leadership is gone, even though the cache still holds it.
func TestGlobalStopsWithLeadership(t *testing.T) {
	c := newCluster(t)
	as := c.aggregators(2, Config{})
	leader := oneLeader(t, as, 20*time.Second)
	tm := leader.term.Load()
	if _, ok := leader.Global(); !ok || tm.snap.Load() == nil {
		t.Fatalf("leader serves no snapshot")
	}
	if _, err := c.admin.Revoke(context.Background(), tm.lease.ID()); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	poll.For(t, testTTL, "old leader stops serving", func() (bool, string) {
		_, ok := leader.Global()
		return !ok, "still serves"
	})
	if tm.snap.Load() == nil {
		t.Fatalf("test premise: the old term's snapshot should still be cached")
	}
}
