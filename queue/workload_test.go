package queue

import (
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"
)

// TestRandomWorkloadKeepsInvariants drives a queue with a random mix of
// producer, consumer and housekeeping calls, with leases, locks and TTLs
// short enough to expire during the run, then audits it: no message lost
// (every enqueued id is acked, expired, trimmed or present, and the counters
// balance) and none in two sets.
func TestRandomWorkloadKeepsInvariants(t *testing.T) {
	for _, seed := range []int64{1, 2, 3} {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runWorkload(t, seed) })
	}
}

func runWorkload(t *testing.T, seed int64) {
	e := newEnv(t)
	rng := rand.New(rand.NewSource(seed))
	cfg := Config{Partitions: 3, MaxDeliveries: 3, MaxSize: 20, MaxInFlight: 12, TTL: Duration(150 * time.Millisecond)}
	e.create("work", cfg)
	cfg = cfg.WithDefaults()
	acks := 0
	var held []Delivery
	ms := func(max int) time.Duration { return time.Duration(rng.Intn(max)+1) * time.Millisecond }
	for op := 0; op < 4000; op++ {
		switch r := rng.Intn(100); {
		case r < 30:
			m := Message{ID: fmt.Sprintf("m%d", rng.Intn(600))}
			if rng.Intn(4) == 0 {
				m.Delay = ms(20)
			}
			if rng.Intn(3) == 0 {
				m.TTL = ms(60)
			}
			if rng.Intn(3) == 0 {
				m.Priority = ptr(int64(rng.Intn(1000)))
			}
			_, err := e.c.Inspect(e.ctx, "work", m.ID)
			present := err == nil
			if err != nil && !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
			if res := e.enqueue("work", m); res.Duplicate != present {
				t.Fatalf("enqueue of %s: duplicate=%v but present=%v", m.ID, res.Duplicate, present)
			}
		case r < 50:
			ds, err := e.c.Pull(e.ctx, "work", rng.Intn(5)+1, ms(15))
			if err != nil && !errors.Is(err, ErrCapped) {
				t.Fatal(err)
			}
			held = append(held, ds...)
		case r < 65 && len(held) > 0:
			i := rng.Intn(len(held))
			err := e.c.Ack(e.ctx, held[i])
			if err == nil {
				acks++
			} else if !errors.Is(err, ErrStale) {
				t.Fatal(err)
			}
			held = append(held[:i], held[i+1:]...)
		case r < 75 && len(held) > 0:
			i := rng.Intn(len(held))
			_, err := e.c.Nack(e.ctx, held[i], NackOptions{LockFor: ms(20) * time.Duration(rng.Intn(2))})
			if err != nil && !errors.Is(err, ErrStale) {
				t.Fatal(err)
			}
			held = append(held[:i], held[i+1:]...)
		case r < 80 && len(held) > 0:
			if _, err := e.c.Extend(e.ctx, held[rng.Intn(len(held))], ms(15)); err != nil && !errors.Is(err, ErrStale) {
				t.Fatal(err)
			}
		default:
			s := Shard{"work", rng.Intn(cfg.Partitions)}
			batch := rng.Intn(8) + 1
			var err error
			switch rng.Intn(5) {
			case 0:
				_, err = unlockPass(e.n, e.ctx, s, 1, batch)
			case 1:
				_, err = requeuePass(e.n, e.ctx, s, cfg, 1, batch)
			case 2:
				_, err = expirePass(e.n, e.ctx, s, 1, batch)
			case 3:
				_, err = trimPass(e.n, e.ctx, s, cfg, 1, batch)
			case 4:
				_, err = measurePass(e.n, e.ctx, s, 1)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if op%500 == 0 {
			assertConsistent(t, e, "work")
		}
	}
	a := assertConsistent(t, e, "work")
	total := a.Counters.Enqueued
	if a.Counters.Acked != int64(acks) {
		t.Fatalf("acked counter %d, but the test saw %d acks succeed", a.Counters.Acked, acks)
	}
	c := a.Counters
	for f, n := range map[string]int64{"expired": c.Expired, "trimmed": c.Trimmed, "requeued": c.Requeued,
		"unlocked": c.Unlocked, "dead_lettered": c.DeadLettered} {
		if n == 0 {
			t.Errorf("the workload never exercised %s", f)
		}
	}
	t.Logf("seed %d: enqueued %d, acked %d, expired %d, trimmed %d, dead %d, present %d",
		seed, total, a.Counters.Acked, a.Counters.Expired, a.Counters.Trimmed, a.Dead, a.Present())
}

func assertConsistent(t *testing.T, e *env, q string) Audit {
	t.Helper()
	a, err := e.c.Audit(e.ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		t.Fatalf("audit of %s: %d problems, first: %v", q, len(a.Problems), a.Problems[:min(5, len(a.Problems))])
	}
	return a
}

// The audit must catch what it claims to: a message in two sets, a body
// without a set, and counters that do not balance.
func TestAuditFindsCorruption(t *testing.T) {
	e := newEnv(t)
	e.create("bad", Config{})
	e.enqueue("bad", Message{ID: "a"})
	e.enqueue("bad", Message{ID: "b"})
	assertConsistent(t, e, "bad")
	k := e.keys(Shard{"bad", 0})
	e.rdb.ZAdd(e.ctx, k.Dead, redisZ(1, "a"))
	e.rdb.ZRem(e.ctx, k.Ready, "b")
	e.rdb.HIncrBy(e.ctx, k.Stats, "enqueued", 5)
	a, err := e.c.Audit(e.ctx, "bad")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"a is in ready and dead", "b has a body but is in no set", "counters do not balance"}
	for _, w := range want {
		found := false
		for _, p := range a.Problems {
			found = found || strings.Contains(p, w)
		}
		if !found {
			t.Errorf("audit missed %q; problems: %v", w, a.Problems)
		}
	}
}
