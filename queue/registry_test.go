package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Deleting a queue while a keeper's passes run on it and a client holding
// its config in cache enqueues, pulls and acks. Once Delete has returned,
// nothing is written there again: every pass and every client call started
// after it is refused with ErrUnknownQueue, and each shard holds only its
// fence, the fence's owner, its config generation, the token counter and
// the tombstone. A queue created again under the same name keeps the
// fences, so an older owner's lower token stays refused; the shards beyond
// its partitions stay tombstoned.
func TestDeleteRacesPassesAndCachedClients(t *testing.T) {
	e := newEnv(t)
	const parts, token = 4, 7
	e.create("race", Config{Partitions: parts, MaxSize: 50, TTL: Duration(time.Hour)})
	cached := NewClient(e.rdb, ClientOptions{Prefix: e.prefix, ConfigTTL: time.Hour})
	keeper := e.n.WithOwner("old-keeper/1")
	shards := make([]Shard, parts)
	for p := range shards {
		shards[p] = Shard{"race", p}
	}

	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	var (
		deleted                 atomic.Bool
		passOK, passRefused     atomic.Int64
		clientOK, clientRefused atomic.Int64
		passAfter, clientAfter  atomic.Int64 // calls made after Delete returned
		mu                      sync.Mutex
		violations              []string
		wg                      sync.WaitGroup
	)
	bad := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(violations) < 20 {
			violations = append(violations, fmt.Sprintf(format, args...))
		}
	}
	// check classifies one call: after says whether Delete had returned
	// before the call was made.
	check := func(what string, after bool, err error, ok, refused, afterCalls *atomic.Int64) {
		if after {
			afterCalls.Add(1)
		}
		switch {
		case err == nil && after:
			bad("%s accepted after the delete", what)
		case err == nil:
			ok.Add(1)
		case errors.Is(err, ErrUnknownQueue):
			// Before Delete returned too: it has begun.
			refused.Add(1)
		case ctx.Err() != nil:
		default:
			bad("%s: %v", what, err)
		}
	}
	wg.Add(2)
	go func() { // the keeper
		defer wg.Done()
		for ctx.Err() == nil {
			for _, s := range shards {
				calls := map[string]func() error{
					"unlock":  func() error { _, err := unlockPass(keeper, ctx, s, token, 100); return err },
					"requeue": func() error { _, err := requeuePass(keeper, ctx, s, Config{}, token, 100); return err },
					"expire":  func() error { _, err := expirePass(keeper, ctx, s, token, 100); return err },
					"trim":    func() error { _, err := trimPass(keeper, ctx, s, Config{MaxSize: 50}, token, 100); return err },
					"measure": func() error { _, err := measurePass(keeper, ctx, s, token); return err },
					"claim": func() error {
						r, err := keeper.Probe(ctx, []ProbeRequest{{Shard: s, Claim: true, Token: token, MaxSize: 50}})
						if err != nil {
							return err
						}
						return r[0].Err
					},
				}
				for name, call := range calls {
					after := deleted.Load()
					check(name+" on "+s.String(), after, call(), &passOK, &passRefused, &passAfter)
				}
			}
		}
	}()
	go func() { // the client, with the config cached for an hour
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			after := deleted.Load()
			_, err := cached.Enqueue(ctx, "race", Message{Delay: time.Duration(i%2) * time.Millisecond})
			check("enqueue", after, err, &clientOK, &clientRefused, &clientAfter)
			after = deleted.Load()
			ds, err := cached.Pull(ctx, "race", 3, time.Minute)
			check("pull", after, err, &clientOK, &clientRefused, &clientAfter)
			for _, d := range ds {
				after = deleted.Load()
				check("ack", after, cached.Ack(ctx, d), &clientOK, &clientRefused, &clientAfter)
			}
			if errors.Is(err, ErrUnknownQueue) {
				// Reloaded: the queue is gone from the registry too.
				if _, err := cached.Enqueue(ctx, "race", Message{}); !errors.Is(err, ErrUnknownQueue) && ctx.Err() == nil {
					bad("enqueue after the cached config was dropped: %v", err)
				}
			}
		}
	}()
	waitUntil(t, 20*time.Second, "passes and client calls before the delete", func() bool {
		return passOK.Load() > 200 && clientOK.Load() > 200
	})
	if err := e.c.Registry().Delete(e.ctx, "race"); err != nil {
		t.Fatal(err)
	}
	deleted.Store(true)
	waitUntil(t, 20*time.Second, "passes and client calls after the delete", func() bool {
		return passAfter.Load() > 200 && clientAfter.Load() > 200
	})
	cancel()
	wg.Wait()
	for _, v := range violations {
		t.Error(v)
	}
	t.Logf("before the delete: %d passes, %d client calls; refused: %d passes, %d client calls",
		passOK.Load(), clientOK.Load(), passRefused.Load(), clientRefused.Load())
	for _, key := range e.allKeys(e.prefix + ":{race#*") {
		if !slices.ContainsFunc(keysFor(e.prefix, Shard{"race", 0}).control(), func(c string) bool {
			return strings.HasSuffix(key, c[strings.LastIndexByte(c, ':'):])
		}) {
			t.Errorf("key %s exists after the delete", key)
		}
	}
	if _, err := e.c.Registry().Get(e.ctx, "race"); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("config after delete: %v", err)
	}

	// Created again with fewer partitions: the fences are kept.
	e.create("race", Config{Partitions: 2})
	fences, err := e.in.Fences(e.ctx, shards)
	if err != nil {
		t.Fatal(err)
	}
	for p, f := range fences {
		if f != token {
			t.Errorf("fence of %s is %d after delete and create, want %d", shards[p], f, token)
		}
	}
	older := e.n.WithOwner("older-keeper/2")
	if _, err := unlockPass(older, e.ctx, shards[0], token-1, 100); !errors.As(err, new(*FencedError)) {
		t.Fatalf("an older owner's lower token after the queue was created again: %v", err)
	}
	if _, err := unlockPass(e.n.WithOwner("new-keeper/3"), e.ctx, shards[0], token+1, 100); err != nil {
		t.Fatalf("a new owner's higher token: %v", err)
	}
	// The partitions the new queue does not have stay refused.
	if _, err := measurePass(keeper, e.ctx, shards[3], token); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("a pass on a partition the new queue does not have: %v", err)
	}
	// The client whose cached config was dropped reads the new one.
	if r, err := cached.Enqueue(e.ctx, "race", Message{}); err != nil || r.Shard.Partition >= 2 {
		t.Fatalf("enqueue to the queue created again: %+v, %v", r, err)
	}
}

// A queue at the most partitions a config accepts goes through create,
// growth, audit and delete: each sets or drops every shard in one pipeline.
func TestMaxPartitionsLifecycle(t *testing.T) {
	e := newEnv(t)
	e.create("wide", Config{Partitions: MaxPartitions / 2})
	for i := 0; i < 100; i++ {
		e.enqueue("wide", Message{})
	}
	if err := e.c.Registry().Update(e.ctx, "wide", Config{Partitions: MaxPartitions}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100; i++ {
		e.enqueue("wide", Message{})
	}
	e.wantCounts("wide", 200, 0, 0, 0)
	if err := e.c.Registry().Delete(e.ctx, "wide"); err != nil {
		t.Fatal(err)
	}
	if n := len(e.allKeys(e.prefix + ":{wide#*}:deleted")); n != MaxPartitions {
		t.Fatalf("%d tombstones, want %d", n, MaxPartitions)
	}
	if n := len(e.allKeys(e.prefix + ":{wide#*}:ready")); n != 0 {
		t.Fatalf("%d ready sets left", n)
	}
}

// A client refused by one shard's tombstone, while the delete has not yet
// reached the queue's other shards nor the registry, refuses the whole
// queue: reading the config again finds it still listed, and the message
// must not go to a shard the delete is about to drop. Once the queue is
// created again (a newer config generation), the client serves it.
func TestClientRefusesAQueueBeingDeleted(t *testing.T) {
	e := newEnv(t)
	e.create("mid", Config{Partitions: 2})
	// The delete has tombstoned partition 0 only.
	if err := dropScript.on(e.keys(Shard{"mid", 0})).run(e.ctx, e.rdb).Err(); err != nil {
		t.Fatal(err)
	}
	c := NewClient(e.rdb, ClientOptions{Prefix: e.prefix, ConfigTTL: time.Hour})
	id := "a"
	for i := 0; PartitionOf(id, 2) != 1; i++ {
		id = fmt.Sprint("a", i)
	}
	// A new client's first pull starts at partition 0.
	if _, err := c.Pull(e.ctx, "mid", 1, time.Minute); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("pull from a tombstoned shard: %v", err)
	}
	if _, err := c.Enqueue(e.ctx, "mid", Message{ID: id}); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("enqueue to partition 1 of a queue being deleted: %v", err)
	}
	if n, err := e.rdb.HLen(e.ctx, e.keys(Shard{"mid", 1}).Meta).Result(); err != nil || n != 0 {
		t.Fatalf("partition 1 holds %d messages (%v)", n, err)
	}
	if err := e.c.Registry().Delete(e.ctx, "mid"); err != nil {
		t.Fatal(err)
	}
	e.create("mid", Config{Partitions: 2})
	if _, err := c.Enqueue(e.ctx, "mid", Message{ID: id}); err != nil {
		t.Fatalf("enqueue once the queue was created again: %v", err)
	}
}
