package shard

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/service/servicetest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestGrowShrink(t *testing.T) {
	h := newHarness(t, 2000)
	var live []*keeper
	live = append(live, h.start("keeper-0"))
	d := poll.For(t, 20*time.Second, "1 member", h.settled(live))
	t.Logf("1 member settled in %s", d)
	h.w.check()

	for i := 1; i < 5; i++ {
		live = append(live, h.start(fmt.Sprintf("keeper-%d", i)))
	}
	d = poll.For(t, 30*time.Second, "5 members", h.settled(live))
	t.Logf("1 -> 5 members settled in %s", d)
	h.w.check()

	for _, k := range live[2:] {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := k.c.Stop(ctx); err != nil {
			t.Fatalf("stop %s: %v", k.id, err)
		}
		cancel()
		if owned := k.c.OwnedShards(); len(owned) != 0 {
			t.Fatalf("%s still reports %d owned shards after Stop", k.id, len(owned))
		}
	}
	live = live[:2]
	d = poll.For(t, 30*time.Second, "2 members", h.settled(live))
	t.Logf("5 -> 2 members settled in %s", d)
	h.w.check()

	// Etcd holds one key per unit that holds shards and one per member
	// (plus the ring config): never more than the partition count.
	resp, err := h.raw.Get(context.Background(), "/t/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(usedUnits(h.catalog, testPartitions) + 2 + 1); resp.Count != want {
		t.Fatalf("%d keys under the prefix, want %d", resp.Count, want)
	}
}
func TestGracefulHandoff(t *testing.T) {
	h := newHarness(t, 2000)
	live := []*keeper{h.start("a"), h.start("b"), h.start("c")}
	poll.For(t, 30*time.Second, "3 members", h.settled(live))
	gone := live[2]
	before, _ := gone.rec.snapshot()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := gone.c.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	stopTook := time.Since(start)
	poll.For(t, 20*time.Second, "handoff", h.settled(live[:2]))
	t.Logf("graceful handoff of %d shards: Stop took %s, successors owned everything %s after Stop began",
		len(before), stopTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	h.w.check()
}
func TestCrashTakeover(t *testing.T) {
	for _, how := range []string{"close-client", "revoke-lease"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t, 2000)
			live := []*keeper{h.start("a"), h.start("b"), h.start("c")}
			poll.For(t, 30*time.Second, "3 members", h.settled(live))
			crashed := live[2]
			owned, _ := crashed.rec.snapshot()
			crashed.rec.kill()
			start := time.Now()
			switch how {
			case "close-client":
				_ = crashed.cli.Close()
			case "revoke-lease":
				lease := crashed.lease()
				// Stop the crashed keeper from coming back; its process is gone.
				_ = crashed.cli.Close()
				if _, err := h.raw.Revoke(context.Background(), lease); err != nil {
					t.Fatalf("revoke: %v", err)
				}
			}
			poll.For(t, 20*time.Second, "takeover", h.settled(live[:2]))
			d := time.Since(start)
			ttl := h.cfg.SessionTTL
			if ttl == 0 {
				ttl = SessionTTLDefault
			}
			t.Logf("crash (%s) of a keeper with %d shards: taken over in %s (session TTL %s, budget TTL+1s = %s)",
				how, len(owned), d.Round(time.Millisecond), ttl, ttl+time.Second)
			h.w.check()
		})
	}
}

// A quick etcd restart (data kept) must not cost the sessions, and the
// deployment stays settled with one owner per shard.
func TestEtcdRestart(t *testing.T) {
	h := newHarness(t, 2000)
	live := []*keeper{h.start("a"), h.start("b"), h.start("c")}
	poll.For(t, 30*time.Second, "3 members", h.settled(live))
	if err := h.srv.Restart(context.Background()); err != nil {
		t.Fatalf("restart: %v", err)
	}
	// A member joining right after the restart exercises watches and
	// acquisitions on the restarted server.
	live = append(live, h.start("d"))
	d := poll.For(t, 30*time.Second, "settled after restart", h.settled(live))
	t.Logf("settled %s after etcd restart and a join", d)
	h.w.check()
}
func TestConfigChecks(t *testing.T) {
	h := newHarness(t, 10)
	h.start("a")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	other := NewCoordinator(h.client(), Config{Prefix: "/t/", MemberID: "b", Ring: RingConfig{Units: testPartitions * 2}, Logger: h.log}, newRecorder(h.w, "b"))
	if err := other.Start(ctx); err == nil || !strings.Contains(err.Error(), "ring config") {
		t.Fatalf("start with another ring config: %v", err)
	}
	bad := NewCoordinator(h.client(), Config{Prefix: "/t/", MemberID: "a/b"}, newRecorder(h.w, "a/b"))
	if err := bad.Start(ctx); err == nil {
		t.Fatalf("start with member id a/b succeeded")
	}
	// A second keeper with the same id waits for the first to go.
	dupCtx, dupCancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer dupCancel()
	dup := NewCoordinator(h.client(), Config{Prefix: "/t/", MemberID: "a", Ring: RingConfig{Units: testPartitions}, Logger: h.log}, newRecorder(h.w, "a"))
	if err := dup.Start(dupCtx); err == nil {
		_ = dup.Stop(context.Background())
		t.Fatalf("a duplicate member id registered while the first is alive")
	}
}

// The coordinator keeps the lifecycle rules (internal/service): Stop
// before Start, twice, with an expired context, and Start and Stop at once,
// on a live etcd. Every Stop of a started coordinator hands over: nothing it
// registered is left in etcd.
func TestCoordinatorStartStop(t *testing.T) {
	h := newHarness(t, 20)
	n := 0
	servicetest.Stress(t, 10, func(t *testing.T) service.Service {
		n++
		cfg := h.cfg
		cfg.MemberID = fmt.Sprintf("stress-%d", n)
		cfg.Logger = h.log
		c := NewCoordinator(h.raw, cfg, newRecorder(h.w, cfg.MemberID))
		c.SetShards(h.catalog)
		return c
	})
	poll.For(t, 2*SessionTTLDefault+5*time.Second, "no member or ownership key left", func() (bool, string) {
		r, err := h.raw.Get(context.Background(), "/t/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return false, err.Error()
		}
		var left []string
		for _, kv := range r.Kvs {
			if k := string(kv.Key); k != "/t/ring" {
				left = append(left, k)
			}
		}
		return len(left) == 0, strings.Join(left, " ")
	})
}
