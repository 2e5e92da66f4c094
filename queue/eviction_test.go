package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

// The eviction policy is read from INFO memory, so the check works where
// CONFIG is disabled; every policy but noeviction is refused by name.
func TestCheckEviction(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		args []string
		want string // "" for accepted
	}{
		{nil, ""},
		{[]string{"--maxmemory-policy", "allkeys-lru"}, "allkeys-lru"},
		{[]string{"--maxmemory-policy", "volatile-ttl", "--rename-command", "CONFIG", ""}, "volatile-ttl"},
	} {
		srv := redisserver.StartConfigTB(t, redisserver.Config{ExtraArgs: tc.args})
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
		err := CheckEviction(ctx, rdb)
		_ = rdb.Close()
		if tc.want == "" && err != nil {
			t.Errorf("%v: %v", tc.args, err)
		}
		if tc.want != "" && (!errors.Is(err, ErrEvictionPolicy) || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v: %v; want ErrEvictionPolicy naming %s", tc.args, err, tc.want)
		}
		t.Logf("%v: %v", tc.args, err)
	}
}

// With a replica attached, a claim returns only once the replica has the
// fence; a claim the replica does not acknowledge in time (it is stopped)
// is reported as ErrClaimNotReplicated, and succeeds again once the
// replica is back.
func TestClaimWaitsForAReplica(t *testing.T) {
	ctx := context.Background()
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
	poll.For(t, 20*time.Second, "the replica in sync", func() (bool, string) {
		info, err := prdb.Info(ctx, "replication").Result()
		if err != nil {
			return false, err.Error()
		}
		return connectedReplicas(info) == 1 && strings.Contains(info, "state=online"), info
	})
	c := NewClient(prdb, ClientOptions{})
	if err := c.Registry().Create(ctx, "rep", Config{}); err != nil {
		t.Fatal(err)
	}
	// A generous wait while the replica runs (its first acknowledgement
	// after the sync can take a while on a loaded machine), a short one
	// while it is stopped.
	n := NewNative(prdb, "").WithOwner("k/1").WithClaimWait(10 * time.Second)
	short := n.WithClaimWait(300 * time.Millisecond)
	s := Shard{"rep", 0}
	claim := func(token int64) error {
		r, err := n.Probe(ctx, []ProbeRequest{{Shard: s, Claim: true, Token: token}})
		if err != nil {
			return err
		}
		return r[0].Err
	}
	fenceKey := keysFor(DefaultPrefix, s).Fence
	for token := int64(5); token <= 7; token++ {
		if err := claim(token); err != nil {
			t.Fatal(err)
		}
		// WAIT returned: the replica has the fence already.
		if f, err := rrdb.Get(ctx, fenceKey).Result(); err != nil || f != strconv.FormatInt(token, 10) {
			t.Fatalf("replica's fence right after claim %d: %q, %v", token, f, err)
		}
	}

	if err := syscall.Kill(replica.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped = true
	start := time.Now()
	r, err := short.Probe(ctx, []ProbeRequest{{Shard: s, Claim: true, Token: 8}})
	if err == nil {
		err = r[0].Err
	}
	if !errors.Is(err, ErrClaimNotReplicated) {
		t.Fatalf("claim with the replica stopped = %v, want ErrClaimNotReplicated", err)
	}
	t.Logf("claim with the replica stopped: %v after %s", err, time.Since(start).Round(time.Millisecond))
	if err := syscall.Kill(replica.Pid(), syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	poll.For(t, 20*time.Second, "the claim acknowledged once the replica is back", func() (bool, string) {
		err := claim(8)
		return err == nil, fmt.Sprint(err)
	})
	if f, _ := rrdb.Get(ctx, fenceKey).Result(); f != "8" {
		t.Fatalf("replica's fence %q after the repeated claim", f)
	}
	// Reads of the shard, with no claim, never wait.
	if err := syscall.Kill(replica.Pid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped = true
	r, err = short.Probe(ctx, []ProbeRequest{{Shard: s, Token: 8}})
	if err != nil || r[0].Err != nil {
		t.Fatalf("read-only probe with the replica stopped: %v, %v", err, r[0].Err)
	}
}

// A Redis at its maxmemory (noeviction) refuses commands that may grow
// memory until something has been written. Unlock frees as much as it adds,
// and must keep returning locked messages then: its first write may not be
// one that is refused. And a wrong-typed ready must still refuse the pass
// whole: removing from locked first would lose the messages. Each pass runs
// under a token the fence already holds, as every pass after a claim does.
func TestUnlockAtMaxMemory(t *testing.T) {
	srv := redisserver.StartConfigTB(t, redisserver.Config{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	prefix := fmt.Sprintf("t%d", prefixSeq.Add(1))
	e := &env{t: t, ctx: context.Background(), rdb: rdb, prefix: prefix,
		c: NewClient(rdb, ClientOptions{Prefix: prefix, ConfigTTL: time.Millisecond}),
		n: NewNative(rdb, prefix), in: NewInspector(rdb, prefix)}
	ok, wrong := Shard{"oom", 0}, Shard{"oomwt", 0}
	for _, s := range []Shard{ok, wrong} {
		e.create(s.Queue, Config{})
		if _, err := unlockPass(e.n, e.ctx, s, 1, 10); err != nil {
			t.Fatal(err) // raises the fence to 1 while memory allows
		}
		for _, id := range []string{"a", "b", "c"} {
			e.enqueue(s.Queue, Message{ID: id, Delay: time.Millisecond, TTL: time.Hour})
		}
	}
	if err := rdb.RPush(e.ctx, e.keys(wrong).Ready, "not a zset").Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ConfigSet(e.ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.ConfigSet(context.Background(), "maxmemory", "0").Err() })
	if _, err := e.c.Enqueue(e.ctx, "oom", Message{ID: "d"}); err == nil || !strings.Contains(err.Error(), "OOM") {
		t.Fatalf("enqueue at maxmemory = %v; want Redis's OOM refusal", err)
	}
	moved := 0
	poll.For(t, 5*time.Second, "the locked messages are back in ready", poll.Holds(func() bool {
		r, err := unlockPass(e.n, e.ctx, ok, 1, 10)
		if err != nil {
			t.Fatalf("unlock at maxmemory: %v", err)
		}
		moved += r.Moved
		return moved == 3
	}))
	if n, _ := rdb.ZCard(e.ctx, e.keys(ok).Ready).Result(); n != 3 {
		t.Fatalf("ready holds %d, want 3", n)
	}
	if n, _ := rdb.ZCard(e.ctx, e.keys(wrong).Locked).Result(); n != 3 {
		t.Fatalf("locked of %s holds %d before its pass, want 3", wrong, n)
	}
	before := e.snapshot()
	if r, err := unlockPass(e.n, e.ctx, wrong, 1, 10); !errors.Is(err, ErrWrongType) {
		t.Fatalf("unlock at maxmemory with ready a list = %+v, %v; want ErrWrongType", r, err)
	}
	e.sameAs(before)
}
