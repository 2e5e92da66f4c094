package queue

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Every script at the largest batch or count the config accepts: MaxBatch
// (the upper bound of tasks.batch) for the housekeeping passes, MaxPull for
// Pull, the largest payload for Enqueue, the seed script's own maximum. A
// runtime error inside a script is not rolled back by Redis, so each test
// checks that nothing is lost: every set's count, the bodies (through the
// audit) and the counters balance.

// seedLocked writes n locked messages <prefix>0..<prefix>n-1, due at dueMs.
func (e *env) seedLocked(s Shard, prefix string, n int, dueMs int64) {
	e.t.Helper()
	if err := e.in.SeedLocked(e.ctx, s, prefix, 0, n, dueMs, 0, []byte("x")); err != nil {
		e.t.Fatal(err)
	}
}

// seedReady writes n ready messages, without any script but seed: they are
// seeded locked and the locked set is merged into ready by hand. s's locked
// set must be empty.
func (e *env) seedReady(s Shard, prefix string, n int) {
	e.t.Helper()
	e.seedLocked(s, prefix, n, e.redisNowMs())
	k := e.keys(s)
	if err := e.rdb.ZUnionStore(e.ctx, k.Ready, &redis.ZStore{Keys: []string{k.Ready, k.Locked}}).Err(); err != nil {
		e.t.Fatal(err)
	}
	if err := e.rdb.Del(e.ctx, k.Locked).Err(); err != nil {
		e.t.Fatal(err)
	}
}

// expireByHand gives the ids an expiry in the past: in their metadata, and in
// the TTL index unless they are in flight.
func (e *env) expireByHand(s Shard, ids []string, index bool) {
	e.t.Helper()
	k := e.keys(s)
	_, err := e.rdb.Pipelined(e.ctx, func(p redis.Pipeliner) error {
		for _, id := range ids {
			p.HSet(e.ctx, k.Meta, id, "1|2")
			if index {
				p.ZAdd(e.ctx, k.TTL, redis.Z{Score: 2, Member: id})
			}
		}
		return nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// shardCounts reads the sizes of s's sets and bodies, for failure messages.
func (e *env) shardCounts(s Shard) string {
	k := e.keys(s)
	var out string
	for _, kv := range []struct{ name, key string }{{"ready", k.Ready}, {"inflight", k.Inflight},
		{"locked", k.Locked}, {"dead", k.Dead}} {
		n, _ := e.rdb.ZCard(e.ctx, kv.key).Result()
		out += fmt.Sprintf("%s %d, ", kv.name, n)
	}
	b, _ := e.rdb.HLen(e.ctx, k.Body).Result()
	return out + fmt.Sprintf("bodies %d", b)
}

// wantCounts audits q (no problems, counters balance) and checks its totals.
func (e *env) wantCounts(q string, ready, inflight, locked, dead int64) Audit {
	e.t.Helper()
	a := assertConsistent(e.t, e, q)
	if a.Ready != ready || a.Inflight != inflight || a.Locked != locked || a.Dead != dead {
		e.t.Fatalf("%s: ready %d inflight %d locked %d dead %d; want %d %d %d %d", q,
			a.Ready, a.Inflight, a.Locked, a.Dead, ready, inflight, locked, dead)
	}
	return a
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprint(prefix, i)
	}
	return out
}

// The top defect of issue 9: unlock removed the due ids and then failed in
// an unpack of 2×batch values, so 4,000 due locks at a large batch ended in
// no set at all. At MaxBatch due locks it failed on every pass.
func TestUnlockAtMaxBatchLosesNothing(t *testing.T) {
	for _, n := range []int{4000, MaxBatch} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			e := newEnv(t)
			e.create("big", Config{})
			s := Shard{"big", 0}
			e.seedLocked(s, "m", n, e.redisNowMs()-1000)
			r, err := unlockPass(e.n, e.ctx, s, 1, MaxBatch)
			if err != nil {
				t.Fatalf("unlock of %d due locks at batch %d: %v; now %s", n, MaxBatch, err, e.shardCounts(s))
			}
			if r.Moved != n || len(r.Lags) != n || r.NextMs != -1 {
				t.Fatalf("unlock moved %d with %d lags, next %d; want %d", r.Moved, len(r.Lags), r.NextMs, n)
			}
			a := e.wantCounts("big", int64(n), 0, 0, 0)
			if a.Counters.Unlocked != int64(n) {
				t.Fatalf("unlocked counter %d", a.Counters.Unlocked)
			}
		})
	}
}

// Requeue at 4,000 expired leases all going back to ready (8,000 ZADD
// values), and at MaxBatch with a third dead-lettered and a third expired.
func TestRequeueAtMaxBatchLosesNothing(t *testing.T) {
	for _, n := range []int{4000, MaxBatch} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			e := newEnv(t)
			mix := n == MaxBatch
			cfg := Config{}
			if mix {
				cfg.MaxDeliveries = 3
			}
			e.create("rq", cfg)
			s := Shard{"rq", 0}
			e.seedReady(s, "m", n)
			var last time.Time
			for got := 0; got < n; {
				ds := e.pull("rq", MaxPull, time.Millisecond)
				if len(ds) == 0 {
					t.Fatalf("pulled only %d of %d", got, n)
				}
				got += len(ds)
				last = ds[0].LeaseDeadline
			}
			var wantReady, wantDead, wantExpired int64 = int64(n), 0, 0
			if mix {
				var dead, gone []string
				for i, id := range ids("m", n) {
					switch i % 3 {
					case 1:
						dead = append(dead, id)
					case 2:
						gone = append(gone, id)
					}
				}
				k := e.keys(s)
				for _, id := range dead {
					e.rdb.HSet(e.ctx, k.Dlv, id, 3)
				}
				e.expireByHand(s, gone, false)
				wantDead, wantExpired = int64(len(dead)), int64(len(gone))
				wantReady = int64(n) - wantDead - wantExpired
			}
			waitUntil(t, 5*time.Second, "leases over", func() bool { return e.redisNowMs() > last.UnixMilli() })
			r, err := requeuePass(e.n, e.ctx, s, cfg.WithDefaults(), 1, MaxBatch)
			if err != nil {
				t.Fatalf("requeue of %d leases at batch %d: %v; now %s", n, MaxBatch, err, e.shardCounts(s))
			}
			if r.Moved != n || int64(r.Requeued) != wantReady || int64(r.DeadLettered) != wantDead || int64(r.Expired) != wantExpired {
				t.Fatalf("requeue %+v; want %d ready, %d dead, %d expired", r, wantReady, wantDead, wantExpired)
			}
			a := e.wantCounts("rq", wantReady, 0, 0, wantDead)
			if a.Counters.Expired != wantExpired || a.Counters.Requeued != wantReady {
				t.Fatalf("counters %v", a.Counters)
			}
		})
	}
}

// Expire at MaxBatch messages due, half ready and half locked.
func TestExpireAtMaxBatchLosesNothing(t *testing.T) {
	e := newEnv(t)
	e.create("ex", Config{})
	s := Shard{"ex", 0}
	half := MaxBatch / 2
	e.seedReady(s, "r", half)
	e.seedLocked(s, "l", half, e.redisNowMs()+int64(time.Hour/time.Millisecond))
	e.expireByHand(s, append(ids("r", half), ids("l", half)...), true)
	r, err := expirePass(e.n, e.ctx, s, 1, MaxBatch)
	if err != nil {
		t.Fatalf("expire of %d at batch %d: %v; now %s", MaxBatch, MaxBatch, err, e.shardCounts(s))
	}
	if r.Moved != MaxBatch || r.NextMs != -1 {
		t.Fatalf("expire %+v", r)
	}
	if a := e.wantCounts("ex", 0, 0, 0, 0); a.Counters.Expired != MaxBatch {
		t.Fatalf("expired counter %d", a.Counters.Expired)
	}
	if n, _ := e.rdb.ZCard(e.ctx, e.keys(s).TTL).Result(); n != 0 {
		t.Fatalf("%d left in the TTL index", n)
	}
}

// Trim at MaxBatch messages over the cap.
func TestTrimAtMaxBatchLosesNothing(t *testing.T) {
	e := newEnv(t)
	cfg := Config{MaxSize: 10}
	e.create("tr", cfg)
	s := Shard{"tr", 0}
	e.seedReady(s, "m", MaxBatch+10)
	r, err := trimPass(e.n, e.ctx, s, cfg, 1, MaxBatch)
	if err != nil {
		t.Fatalf("trim of %d at batch %d: %v; now %s", MaxBatch, MaxBatch, err, e.shardCounts(s))
	}
	if r.Moved != MaxBatch || r.Excess != 0 {
		t.Fatalf("trim %+v", r)
	}
	if a := e.wantCounts("tr", 10, 0, 0, 0); a.Counters.Trimmed != MaxBatch {
		t.Fatalf("trimmed counter %d", a.Counters.Trimmed)
	}
}

// The client scripts and the read-only ones at their largest: Pull of MaxPull
// with half of them expired, then MaxPull acks, nacks and extends, measure,
// probe (with a claim) and inspect on a shard holding MaxBatch messages in
// every set.
func TestClientScriptsAtTheirLimitsLoseNothing(t *testing.T) {
	e := newEnv(t)
	cfg := Config{MaxDeliveries: 1}
	e.create("cl", cfg)
	s := Shard{"cl", 0}
	e.seedReady(s, "r", 2*MaxPull+MaxBatch)
	e.seedLocked(s, "l", MaxBatch, e.redisNowMs()+int64(time.Hour/time.Millisecond))
	// The first MaxPull ready ids (by score, then id) are pulled first;
	// expire every other one of them: the first pull drops those and
	// delivers the rest, the second delivers MaxPull.
	first, err := e.rdb.ZRange(e.ctx, e.keys(s).Ready, 0, MaxPull-1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var gone []string
	for i, id := range first {
		if i%2 == 1 {
			gone = append(gone, id)
		}
	}
	e.expireByHand(s, gone, true)
	ds, err := e.c.Pull(e.ctx, "cl", MaxPull, time.Hour)
	if err != nil || len(ds) != MaxPull-len(gone) {
		t.Fatalf("pull of %d with %d expired: %d, %v; now %s", MaxPull, len(gone), len(ds), err, e.shardCounts(s))
	}
	if ds, err = e.c.Pull(e.ctx, "cl", MaxPull, time.Hour); err != nil || len(ds) != MaxPull {
		t.Fatalf("second pull of %d: %d, %v; now %s", MaxPull, len(ds), err, e.shardCounts(s))
	}
	inflight := int64(2*MaxPull - len(gone))
	ready := int64(2*MaxPull+MaxBatch) - inflight - int64(len(gone))
	a := e.wantCounts("cl", ready, inflight, MaxBatch, 0)
	if a.Counters.Expired != int64(len(gone)) {
		t.Fatalf("expired at pull %d, want %d", a.Counters.Expired, len(gone))
	}
	for i, d := range ds {
		switch i % 4 {
		case 0:
			err = e.c.Ack(e.ctx, d)
		case 1:
			var st State
			st, err = e.c.Nack(e.ctx, d, NackOptions{LockFor: time.Hour}) // max deliveries 1: dead
			if err == nil && st != StateDead {
				err = fmt.Errorf("nack at max deliveries went to %s", st)
			}
		default:
			_, err = e.c.Extend(e.ctx, d, 2*time.Hour)
		}
		if err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	inflight -= MaxPull / 2
	e.wantCounts("cl", ready, inflight, MaxBatch, MaxPull/4)
	m, err := measurePass(e.n, e.ctx, s, 1)
	if err != nil || m.Ready != ready || m.Inflight != inflight || m.Locked != MaxBatch || m.Dead != MaxPull/4 {
		t.Fatalf("measure %+v, %v", m, err)
	}
	pr, err := e.n.Probe(e.ctx, []ProbeRequest{{Shard: s, MaxSize: 1, Claim: true, Token: 2}})
	if err != nil || pr[0].Err != nil || pr[0].Excess != ready+inflight+MaxBatch-1 || pr[0].LockedHead < 0 || pr[0].InflightHead < 0 {
		t.Fatalf("probe %+v, %v", pr, err)
	}
	info, err := e.c.Inspect(e.ctx, "cl", ds[2].ID)
	if err != nil || info.State != StateInflight {
		t.Fatalf("inspect %+v, %v", info, err)
	}
}

// Enqueue at the largest payload a queue may allow; one byte more is
// refused and changes nothing.
func TestEnqueueAtMaxPayload(t *testing.T) {
	e := newEnv(t)
	e.create("fat", Config{MaxPayloadBytes: MaxPayloadLimit})
	body := bytes.Repeat([]byte{'p'}, MaxPayloadLimit)
	e.enqueue("fat", Message{ID: "big", Payload: body})
	before := e.snapshot()
	if _, err := e.c.Enqueue(e.ctx, "fat", Message{ID: "bigger", Payload: append(body, 'q')}); !errors.Is(err, ErrTooBig) {
		t.Fatalf("enqueue over the limit = %v, want ErrTooBig", err)
	}
	e.sameAs(before)
	ds := e.pull("fat", 1, time.Minute)
	if len(ds) != 1 || !bytes.Equal(ds[0].Payload, body) {
		t.Fatalf("pulled %d messages", len(ds))
	}
	if err := e.c.Ack(e.ctx, ds[0]); err != nil {
		t.Fatal(err)
	}
	e.wantCounts("fat", 0, 0, 0, 0)
}

// The seed script at its own maximum count per call.
func TestSeedAtMaxCount(t *testing.T) {
	e := newEnv(t)
	e.create("seed", Config{})
	s := Shard{"seed", 0}
	k := e.keys(s)
	err := seedScript.on(k, "m", 0, maxSeed, e.redisNowMs(), 0, "x").run(e.ctx, e.rdb).Err()
	if err != nil {
		t.Fatal(err)
	}
	e.wantCounts("seed", 0, 0, maxSeed, 0)
	before := e.snapshot()
	err = seedScript.on(k, "n", 0, maxSeed+1, e.redisNowMs(), 0, "x").run(e.ctx, e.rdb).Err()
	if err == nil {
		t.Fatal("seed over its maximum accepted")
	}
	e.sameAs(before)
}

// A value no script writes (a hand edit) must not fail a script half-way:
// a priority that is not a number falls back to the move's time, and a
// counter that is not an integer refuses the script before its first write.
func TestHandEditedValuesNeverHalfApplyAMove(t *testing.T) {
	e := newEnv(t)
	e.create("junk", Config{})
	s := Shard{"junk", 0}
	k := e.keys(s)
	e.seedLocked(s, "m", 4, e.redisNowMs()-1000)
	for id, p := range map[string]string{"m0": "nan", "m1": " 5", "m2": "abc", "m3": "1e3"} {
		e.rdb.HSet(e.ctx, k.Prio, id, p)
	}
	r, err := unlockPass(e.n, e.ctx, s, 1, 10)
	if err != nil || r.Moved != 4 {
		t.Fatalf("unlock over junk priorities = %+v, %v; now %s", r, err, e.shardCounts(s))
	}
	e.wantCounts("junk", 4, 0, 0, 0)
	if sc, _ := e.rdb.ZScore(e.ctx, k.Ready, "m3").Result(); sc != 1000 {
		t.Fatalf("priority 1e3 restored as %v", sc)
	}

	e.rdb.HSet(e.ctx, k.Stats, "pulled", "lots")
	before := e.snapshot()
	if _, err := e.c.Pull(e.ctx, "junk", 4, time.Minute); !errors.Is(err, ErrWrongType) {
		t.Fatalf("pull with a junk counter = %v, want ErrWrongType", err)
	}
	e.sameAs(before)
	e.rdb.HSet(e.ctx, k.Stats, "pulled", "0")
	e.rdb.Set(e.ctx, k.Seq, "x", 0)
	before = e.snapshot()
	if _, err := e.c.Pull(e.ctx, "junk", 4, time.Minute); !errors.Is(err, ErrWrongType) {
		t.Fatalf("pull with a junk token counter = %v, want ErrWrongType", err)
	}
	e.sameAs(before)
	e.rdb.Del(e.ctx, k.Seq)
	ds := e.pull("junk", 4, time.Minute)
	if len(ds) != 4 {
		t.Fatalf("pulled %d", len(ds))
	}
	e.rdb.HSet(e.ctx, k.Stats, "acked", "x", "nacked", "x", "trimmed", "x", "expired", "x", "requeued", "x")
	// One lease lapsed, so that requeue has a move to refuse: a pass with
	// nothing to move writes no counter and does not read them.
	e.rdb.ZAdd(e.ctx, k.Inflight, redis.Z{Score: float64(e.redisNowMs() - 1000), Member: ds[2].ID})
	before = e.snapshot()
	for name, call := range map[string]func() error{
		"ack":     func() error { return e.c.Ack(e.ctx, ds[0]) },
		"nack":    func() error { _, err := e.c.Nack(e.ctx, ds[1], NackOptions{}); return err },
		"requeue": func() error { _, err := requeuePass(e.n, e.ctx, s, Config{}, 1, 10); return err },
		"expire":  func() error { _, err := expirePass(e.n, e.ctx, s, 1, 10); return err },
		"trim":    func() error { _, err := trimPass(e.n, e.ctx, s, Config{MaxSize: 1}, 1, 10); return err },
	} {
		if err := call(); !errors.Is(err, ErrWrongType) {
			t.Errorf("%s with a junk counter = %v, want ErrWrongType", name, err)
		}
	}
	e.sameAs(before)
}

// The unlock script counts every lag in the shard's histogram with the move,
// and measure reads it back: buckets upper-inclusive, lags above every
// bound in the last, the sum exact in µs with each lag counted up to
// LagSumCapUs. The largest batch moves MaxBatch locks 40 days late, whose
// sum without the cap would lose precision in the script's numbers; a
// hand-edited histogram field refuses the pass and changes nothing.
func TestUnlockLagHistogram(t *testing.T) {
	e := newEnv(t)
	e.create("lag", Config{})
	s := Shard{"lag", 0}
	now := e.redisNowMs()
	// Lags well inside their buckets, whatever the time the pass takes.
	lateMs := map[string]int64{"a": 3, "b": 35, "c": 1500, "d": 7000, "e": 40 * 24 * 3600 * 1000}
	for id, late := range lateMs {
		e.seedLocked(s, id, 1, now-late)
	}
	r, err := unlockPass(e.n, e.ctx, s, 1, 100)
	if err != nil || r.Moved != len(lateMs) {
		t.Fatalf("unlock: moved %d, %v", r.Moved, err)
	}
	m, err := measurePass(e.n, e.ctx, s, 1)
	if err != nil {
		t.Fatal(err)
	}
	// The histogram is the pass's own lags, bucketed; each lag is at least
	// its message's lateness (the pass ran some ms after the seeding).
	var want [len(LagBoundsUs) + 1]int64
	for _, l := range r.Lags {
		for i := range want {
			if lagField(i) == lagFieldOf(l.Microseconds()) {
				want[i]++
			}
		}
	}
	if m.Lag.Counts != want || m.Lag.Count() != 5 || want[len(LagBoundsUs)] != 2 {
		t.Fatalf("buckets %v, want %v (two above every bound: 7 s and 40 days)", m.Lag.Counts, want)
	}
	var lagSum, minSum int64
	for _, l := range r.Lags {
		lagSum += min(l.Microseconds(), LagSumCapUs)
	}
	for _, late := range lateMs {
		minSum += min(late*1000, LagSumCapUs)
	}
	if m.Lag.SumUs != lagSum || lagSum < minSum || lagSum > minSum+5*int64(time.Second/time.Microsecond) {
		t.Fatalf("sum %d µs, the pass's lags sum to %d, the seeded lateness to %d", m.Lag.SumUs, lagSum, minSum)
	}
	if m.Counters.Unlocked != 5 {
		t.Fatalf("unlocked %d, want 5 (the histogram fields are not counters)", m.Counters.Unlocked)
	}

	// MaxBatch locks 40 days late at once: each adds LagSumCapUs.
	e.seedLocked(s, "big", MaxBatch, now-40*24*3600*1000)
	if r, err := unlockPass(e.n, e.ctx, s, 1, MaxBatch); err != nil || r.Moved != MaxBatch {
		t.Fatalf("unlock of %d: moved %d, %v", MaxBatch, r.Moved, err)
	}
	m2, err := measurePass(e.n, e.ctx, s, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := m2.Lag.SumUs - m.Lag.SumUs; got != MaxBatch*LagSumCapUs {
		t.Fatalf("sum rose by %d, want %d", got, int64(MaxBatch)*LagSumCapUs)
	}
	if got := m2.Lag.Counts[len(LagBoundsUs)] - m.Lag.Counts[len(LagBoundsUs)]; got != MaxBatch {
		t.Fatalf("above-every-bound bucket rose by %d, want %d", got, MaxBatch)
	}

	// A hand-edited bucket: the pass is refused before its first write.
	e.seedLocked(s, "late", 1, now-10_000)
	if err := e.rdb.HSet(e.ctx, e.keys(s).Stats, lagInfField, "many").Err(); err != nil {
		t.Fatal(err)
	}
	before := e.snapshot()
	if _, err := unlockPass(e.n, e.ctx, s, 1, 100); !errors.Is(err, ErrWrongType) {
		t.Fatalf("unlock with a non-integer histogram field: %v, want ErrWrongType", err)
	}
	if after := e.snapshot(); !maps.Equal(before, after) {
		t.Fatal("a refused unlock changed keys")
	}
}

// Unlock raises its counters with one HSET of sums computed in Lua, whose
// numbers are doubles: a counter at or past 2^53, up to the 18 digits
// check_counters accepts, must still rise exactly (HINCRBY does that).
func TestUnlockCountersExactPast2To53(t *testing.T) {
	e := newEnv(t)
	e.create("big", Config{})
	s := Shard{"big", 0}
	stats := e.keys(s).Stats
	for _, c := range []struct{ unlocked, lagSum string }{
		{"9007199254740990", "9007199254740991"},     // 2^53 - 2 and - 1: the sums reach 2^53 and beyond
		{"999999999999999990", "999999999999999999"}, // the largest check_counters accepts
		{"-99999999999999999", "0"},                  // and the most negative (18 characters)
		{"41", "7"},
	} {
		if err := e.rdb.HSet(e.ctx, stats, "unlocked", c.unlocked, lagSumField, c.lagSum).Err(); err != nil {
			t.Fatal(err)
		}
		now := e.redisNowMs()
		e.seedLocked(s, "m"+c.unlocked, 2, now-1)
		r, err := unlockPass(e.n, e.ctx, s, 1, 100)
		if err != nil || r.Moved != 2 {
			t.Fatalf("unlock: moved %d, %v", r.Moved, err)
		}
		var lagSum int64
		for _, l := range r.Lags {
			lagSum += l.Microseconds()
		}
		got, err := e.rdb.HMGet(e.ctx, stats, "unlocked", lagSumField).Result()
		if err != nil {
			t.Fatal(err)
		}
		if want := addDecimal(t, c.unlocked, 2); got[0] != want {
			t.Errorf("unlocked %s + 2 = %v, want %s", c.unlocked, got[0], want)
		}
		if want := addDecimal(t, c.lagSum, lagSum); got[1] != want {
			t.Errorf("lag sum %s + %d = %v, want %s", c.lagSum, lagSum, got[1], want)
		}
	}
}

func addDecimal(t *testing.T, v string, d int64) string {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.FormatInt(n+d, 10)
}
