package queue

import (
	"context"
	"errors"
	"fmt"
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
// fence, the fence's owner and the tombstone. A queue created again under
// the same name keeps the fences, so an older owner's lower token stays
// refused; the shards beyond its partitions stay tombstoned.
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
					"unlock":  func() error { _, err := keeper.Unlock(ctx, s, token, 100); return err },
					"requeue": func() error { _, err := keeper.Requeue(ctx, s, Config{}, token, 100); return err },
					"expire":  func() error { _, err := keeper.Expire(ctx, s, token, 100); return err },
					"trim":    func() error { _, err := keeper.Trim(ctx, s, Config{MaxSize: 50}, token, 100); return err },
					"measure": func() error { _, err := keeper.Measure(ctx, s, token); return err },
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
		if !strings.HasSuffix(key, ":fence") && !strings.HasSuffix(key, ":owner") && !strings.HasSuffix(key, ":deleted") {
			t.Errorf("key %s exists after the delete", key)
		}
	}
	if _, err := e.c.Registry().Get(e.ctx, "race"); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("config after delete: %v", err)
	}

	// Created again with fewer partitions: the fences are kept.
	e.create("race", Config{Partitions: 2})
	fences, err := e.n.Fences(e.ctx, shards)
	if err != nil {
		t.Fatal(err)
	}
	for p, f := range fences {
		if f != token {
			t.Errorf("fence of %s is %d after delete and create, want %d", shards[p], f, token)
		}
	}
	older := e.n.WithOwner("older-keeper/2")
	if _, err := older.Unlock(e.ctx, shards[0], token-1, 100); !errors.As(err, new(*FencedError)) {
		t.Fatalf("an older owner's lower token after the queue was created again: %v", err)
	}
	if _, err := e.n.WithOwner("new-keeper/3").Unlock(e.ctx, shards[0], token+1, 100); err != nil {
		t.Fatalf("a new owner's higher token: %v", err)
	}
	// The partitions the new queue does not have stay refused.
	if _, err := keeper.Measure(e.ctx, shards[3], token); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("a pass on a partition the new queue does not have: %v", err)
	}
	// The client whose cached config was dropped reads the new one.
	if r, err := cached.Enqueue(e.ctx, "race", Message{}); err != nil || r.Shard.Partition >= 2 {
		t.Fatalf("enqueue to the queue created again: %+v, %v", r, err)
	}
}
