package tasks

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// A claim that no replica acknowledged (queue.ErrClaimNotReplicated) is
// made again soon, not left to the sweep a minute later: until it is
// acknowledged, a failover to the replica could lose the fence. The probe
// used to be dropped.
func TestUnreplicatedClaimIsMadeAgain(t *testing.T) {
	// No wait for more replicas before a full sync.
	primary := redisserver.StartConfigTB(t, redisserver.Config{ExtraArgs: []string{"--repl-diskless-sync-delay", "0"}})
	_, port, _ := strings.Cut(primary.Addr, ":")
	replica := redisserver.StartConfigTB(t, redisserver.Config{ExtraArgs: []string{"--replicaof", "127.0.0.1", port}})
	stopped := false
	t.Cleanup(func() {
		if stopped {
			_ = syscall.Kill(replica.Pid(), syscall.SIGCONT)
		}
	})
	prdb := redis.NewClient(&redis.Options{Addr: primary.Addr})
	rrdb := redis.NewClient(&redis.Options{Addr: replica.Addr})
	t.Cleanup(func() { _ = prdb.Close(); _ = rrdb.Close() })
	ctx := t.Context()
	poll.For(t, 20*time.Second, "the replica in sync", func() (bool, string) {
		info, err := prdb.Info(ctx, "replication").Result()
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online"), info
	})
	c := queue.NewClient(prdb, queue.ClientOptions{})
	if err := c.Registry().Create(ctx, "rep", queue.Config{}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(replica.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped = true

	rec := &recorder{passes: map[string]int{}}
	k := New(queue.NewNative(prdb, "").WithClaimWait(200*time.Millisecond), Config{Recorder: rec})
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	stopAtCleanup(t, k)
	s := queue.Shard{Queue: "rep"}
	own(k, s, queue.Config{}.WithDefaults(), 7)
	claimed := func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.shards[s].claimed
	}
	waitFor(t, 20*time.Second, "a claim refused for want of a replica", func() bool {
		for _, kind := range rec.errorKinds() {
			if kind == "unreplicated" {
				return true
			}
		}
		return false
	})
	if claimed() {
		t.Fatal("claimed while the replica is stopped")
	}
	if err := syscall.Kill(replica.Pid(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	// Well before the sweep (SweepInterval, a minute) comes round.
	waitFor(t, 20*time.Second, "the claim made again and acknowledged", claimed)
	if f, err := queue.NewInspector(rrdb, "").Fences(ctx, []queue.Shard{s}); err != nil || f[0] != 7 {
		t.Fatalf("the replica's fence is %v (%v), want 7", f, err)
	}
}
