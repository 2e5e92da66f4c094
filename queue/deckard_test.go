package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue/deckardtest"
	"github.com/redis/go-redis/v9"
)

// denv is a test's Deckard deployment: a Deckard pod (the driver, with its
// own clock) and keeper's Deckard layout on the same keys.
type denv struct {
	*env
	dk  *Deckard
	pod *deckardtest.Server
}

func newDeckardEnv(t *testing.T, wake DeckardWakeConfig) *denv {
	t.Helper()
	e := newEnv(t)
	d, err := NewDeckard(e.rdb, e.prefix, wake)
	if err != nil {
		t.Fatal(err)
	}
	return &denv{env: e, dk: d, pod: deckardtest.New(e.rdb, e.prefix)}
}

// podClock sets the pod's clock to run off from the test's by d.
func (e *denv) podClock(d time.Duration) {
	e.pod.SetClock(func() time.Time { return time.Now().Add(d) })
}

func (e *denv) dkeys(q string) deckardKeys { return deckardKeysFor(e.dk.prefix, q) }

// zscores reads a sorted set.
func (e *denv) zscores(key string) map[string]float64 {
	e.t.Helper()
	zs, err := e.rdb.ZRangeWithScores(e.ctx, key, 0, -1).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]float64{}
	for _, z := range zs {
		out[z.Member.(string)] = z.Score
	}
	return out
}

// dsnapshot dumps every Deckard key and every keeper key of the test.
func (e *denv) dsnapshot() map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for _, pattern := range []string{e.dk.prefix + ":*", deckardOwnPrefix(e.dk.prefix) + ":*"} {
		for _, k := range e.allKeys(pattern) {
			v, err := e.rdb.Dump(e.ctx, k).Result()
			if err != nil {
				e.t.Fatal(err)
			}
			out[k] = v
		}
	}
	return out
}

func (e *denv) add(q string, msgs ...deckardtest.Message) {
	e.t.Helper()
	if _, err := e.pod.Add(e.ctx, q, msgs...); err != nil {
		e.t.Fatal(err)
	}
}

func (e *denv) pullAll(q string, n int, ack time.Duration) []string {
	e.t.Helper()
	ids, err := e.pod.Pull(e.ctx, q, n, deckardtest.Pull{AckDeadline: ack})
	if err != nil {
		e.t.Fatal(err)
	}
	return ids
}

func (e *denv) reply(q, id string, ack bool, r deckardtest.Reply) {
	e.t.Helper()
	f := e.pod.Nack
	if ack {
		f = e.pod.Ack
	}
	if ok, err := f(e.ctx, q, id, r); err != nil || !ok {
		e.t.Fatalf("reply to %s: %v, %v", id, ok, err)
	}
}

// replyAll replies to every id, eight at a time: ack (with r) when ack(i),
// else nack.
func (e *denv) replyAll(q string, ids []string, ack func(i int) bool, r func(i int) deckardtest.Reply) {
	e.t.Helper()
	var (
		next atomic.Int64
		wg   sync.WaitGroup
		fail atomic.Value
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(ids); i = int(next.Add(1) - 1) {
				f := e.pod.Nack
				if ack(i) {
					f = e.pod.Ack
				}
				if ok, err := f(e.ctx, q, ids[i], r(i)); err != nil || !ok {
					fail.Store(fmt.Sprintf("reply to %s: %v, %v", ids[i], ok, err))
					return
				}
			}
		}()
	}
	wg.Wait()
	if f := fail.Load(); f != nil {
		e.t.Fatal(f)
	}
}

func dmsgs(n int, tag string) []deckardtest.Message {
	out := make([]deckardtest.Message, n)
	for i := range out {
		out[i] = deckardtest.Message{ID: fmt.Sprintf("%s%05d", tag, i), Score: float64(i + 1)}
	}
	return out
}

func TestDeckardPrefixAndNames(t *testing.T) {
	for in, want := range map[string]string{"": "deckard_v1", " ": "deckard_v1", "::": "deckard_v1",
		":p:": "p", " :p: ": "p", "p": "p", "a:b": "a:b", ": p :": " p "} {
		if got, ref := DeckardPrefix(in), deckardtest.Prefix(in); got != want || ref != want {
			t.Errorf("DeckardPrefix(%q) = %q (driver %q), want %q", in, got, ref, want)
		}
	}
	if _, err := NewDeckard(nil, "a{b", DeckardWakeConfig{}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("a prefix with a brace: %v", err)
	}
	for _, bad := range []string{"", "a{b", "a}b", "a\nb", "\xff", strings.Repeat("x", MaxDeckardNameLen+1)} {
		if err := ValidateDeckardName(bad); !errors.Is(err, ErrBadName) {
			t.Errorf("ValidateDeckardName(%q) = %v", bad, err)
		}
	}
	for _, good := range []string{"q", "a::b", "a:b", "with space", "x#1", "ünïcode", strings.Repeat("x", MaxDeckardNameLen)} {
		if err := ValidateDeckardName(good); err != nil {
			t.Errorf("ValidateDeckardName(%q) = %v", good, err)
		}
		s, err := ParseDeckardShard(Shard{Queue: good}.String())
		if err != nil || s != (Shard{Queue: good}) {
			t.Errorf("ParseDeckardShard of %q = %+v, %v", good, s, err)
		}
	}
	if _, err := ParseDeckardShard("q#1"); err == nil {
		t.Error("a Deckard queue has only partition 0")
	}
	k := deckardKeysFor("p", "a:b")
	for _, key := range append(k.ownKeys(), k.Ready, k.Tmp, k.LockAck, k.LockNack, k.LockAckScore, k.LockNackScore) {
		if !strings.Contains(key, "{a:b}") || strings.Index(key, "{") != strings.Index(key, "{a:b}") {
			t.Errorf("key %s does not carry the hash tag {a:b} first", key)
		}
	}
}

// Deckard's prefix rules end to end: a pod and the layout configured with
// " :P: " both use P.
func TestDeckardTrimmedPrefixEndToEnd(t *testing.T) {
	e := newEnv(t)
	configured := " :" + e.prefix + ": "
	d, err := NewDeckard(e.rdb, configured, DeckardWakeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pod := deckardtest.New(e.rdb, configured)
	pod.SetClock(func() time.Time { return time.Now().Add(-time.Hour) })
	if _, err := pod.Add(e.ctx, "q", deckardtest.Message{ID: "m"}); err != nil {
		t.Fatal(err)
	}
	if _, err := pod.Pull(e.ctx, "q", 1, deckardtest.Pull{AckDeadline: time.Second}); err != nil {
		t.Fatal(err)
	}
	if d.Prefix() != e.prefix || pod.Prefix() != e.prefix {
		t.Fatalf("prefixes %q, %q; want %q", d.Prefix(), pod.Prefix(), e.prefix)
	}
	r, err := requeuePass(d, e.ctx, Shard{Queue: "q"}, Config{}, 1, 10)
	if err != nil || r.Moved != 1 {
		t.Fatalf("timeout under the trimmed prefix: %+v, %v", r, err)
	}
	if n, _ := e.rdb.ZCard(e.ctx, e.prefix+":queue:{q}").Result(); n != 1 {
		t.Fatalf("ready of %s:queue:{q} has %d", e.prefix, n)
	}
}

// Each rule of the unlock table: a saved score is restored; without one,
// lock_ack gives the pass's now (Redis TIME) and lock_nack 0; saved scores
// go with their ids; a re-add while locked changes nothing.
func TestDeckardUnlockRules(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	q, s := "u", Shard{Queue: "u"}
	e.add(q, deckardtest.Message{ID: "ack-saved"}, deckardtest.Message{ID: "ack-default"},
		deckardtest.Message{ID: "nack-saved"}, deckardtest.Message{ID: "nack-default"},
		deckardtest.Message{ID: "later"})
	e.pullAll(q, 5, time.Hour)
	// The pod's clock is an hour behind: its locks are due for Redis.
	e.podClock(-time.Hour)
	e.reply(q, "ack-saved", true, deckardtest.Reply{Lock: time.Minute, Score: 42.5})
	e.reply(q, "ack-default", true, deckardtest.Reply{Lock: time.Minute})
	e.reply(q, "nack-saved", false, deckardtest.Reply{Lock: time.Minute, Score: 7})
	e.reply(q, "nack-default", false, deckardtest.Reply{Lock: time.Minute})
	e.podClock(time.Hour)
	e.reply(q, "later", false, deckardtest.Reply{Lock: time.Minute, Score: 3})
	k := e.dkeys(q)
	if got := e.zscores(k.LockAckScore); len(got) != 1 || got["ack-saved"] != 42.5 {
		t.Fatalf("saved ack scores %v", got)
	}
	// A re-add of locked ids changes nothing.
	if added, _ := e.pod.Add(e.ctx, q, deckardtest.Message{ID: "ack-default", Score: 999},
		deckardtest.Message{ID: "nack-default", Score: 999}); len(added) != 0 {
		t.Fatalf("re-add of locked ids added %v", added)
	}
	r, err := unlockPass(e.dk, e.ctx, s, 1, 100)
	if err != nil {
		t.Fatal(err)
	}
	nowMs := float64(r.NowUs / 1000)
	if r.Moved != 4 || r.Full || len(r.Lags) != 4 {
		t.Fatalf("unlock %+v", r)
	}
	want := map[string]float64{"ack-saved": 42.5, "ack-default": nowMs, "nack-saved": 7, "nack-default": 0}
	if got := e.zscores(k.Ready); !sameScores(got, want) {
		t.Fatalf("ready %v, want %v", got, want)
	}
	for _, lag := range r.Lags {
		if lag < time.Hour-time.Minute-5*time.Second || lag > time.Hour {
			t.Fatalf("lag %s, want about 59 minutes", lag)
		}
	}
	if n, _ := e.rdb.Exists(e.ctx, k.LockAck, k.LockAckScore).Result(); n != 0 {
		t.Fatalf("lock_ack or its scores left: %d keys", n)
	}
	if got := e.zscores(k.LockNackScore); !sameScores(got, map[string]float64{"later": 3}) {
		t.Fatalf("lock_nack:score %v: only the id still locked keeps its score", got)
	}
	wantNext := e.zscores(k.LockNack)["later"]
	if r.NextMs != int64(wantNext) {
		t.Fatalf("next due %d, want the later lock %f", r.NextMs, wantNext)
	}
	// Counters by lock type.
	m, err := measurePass(e.dk, e.ctx, s, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := m.Counters
	if c.UnlockedAck != 2 || c.UnlockedNack != 2 || c.Unlocked != 4 || c.Requeued != 0 {
		t.Fatalf("counters %+v", c)
	}
}

// The timeout rule: an id whose ack deadline passed goes back to ready with
// score 0, oldest deadline first; a later one stays.
func TestDeckardTimeoutRules(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	q, s := "t", Shard{Queue: "t"}
	e.add(q, deckardtest.Message{ID: "a", Score: 1}, deckardtest.Message{ID: "b", Score: 2},
		deckardtest.Message{ID: "c", Score: 3})
	e.podClock(-time.Hour)
	e.pullAll(q, 1, 2*time.Second) // a: an hour ago + 2s
	e.pullAll(q, 1, time.Second)   // b: an hour ago + 1s, the oldest deadline
	e.podClock(0)
	e.pullAll(q, 1, time.Hour) // c: an hour from now
	r, err := requeuePass(e.dk, e.ctx, s, Config{}, 1, 1)
	if err != nil || r.Moved != 1 || !r.Full || r.Requeued != 1 {
		t.Fatalf("first timeout %+v, %v", r, err)
	}
	if got := e.zscores(e.dkeys(q).Ready); !sameScores(got, map[string]float64{"b": 0}) {
		t.Fatalf("oldest deadline first: ready %v", got)
	}
	r, err = requeuePass(e.dk, e.ctx, s, Config{}, 1, 100)
	if err != nil || r.Moved != 1 || r.Full {
		t.Fatalf("second timeout %+v, %v", r, err)
	}
	if got := e.zscores(e.dkeys(q).Ready); !sameScores(got, map[string]float64{"a": 0, "b": 0}) {
		t.Fatalf("ready %v", got)
	}
	if c := e.zscores(e.dkeys(q).Tmp)["c"]; r.NextMs != int64(c) {
		t.Fatalf("next due %d, want c's deadline %f", r.NextMs, c)
	}
	// A re-add of a timed-out id (now ready) or of one in flight changes
	// nothing.
	if added, _ := e.pod.Add(e.ctx, q, deckardtest.Message{ID: "a", Score: 50}, deckardtest.Message{ID: "c", Score: 50}); len(added) != 0 {
		t.Fatalf("re-add added %v", added)
	}
	if got := e.zscores(e.dkeys(q).Ready); got["a"] != 0 {
		t.Fatalf("a re-add changed a ready score: %v", got)
	}
	m, _ := measurePass(e.dk, e.ctx, s, 1)
	if m.Counters.Requeued != 2 || m.Inflight != 1 || m.Ready != 2 {
		t.Fatalf("measure %+v", m)
	}
}

// Negative scores (a pod whose clock reads before the epoch) are due, not
// stranded: probes report them as due (0), passes move them.
func TestDeckardNegativeScoresAreDue(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	q, s := "n", Shard{Queue: "n"}
	e.add(q, deckardtest.Message{ID: "a", Score: 1}, deckardtest.Message{ID: "b", Score: 2},
		deckardtest.Message{ID: "c", Score: 3})
	e.pod.SetClock(func() time.Time { return time.UnixMilli(-10_000) })
	e.pullAll(q, 3, time.Second)
	e.reply(q, "a", true, deckardtest.Reply{Lock: time.Second})
	e.reply(q, "b", false, deckardtest.Reply{Lock: time.Second, Score: -4})
	k := e.dkeys(q)
	if got := e.zscores(k.LockAck); got["a"] != -9000 {
		t.Fatalf("lock_ack %v", got)
	}
	// A score of -inf, written by hand.
	e.rdb.ZAdd(e.ctx, k.LockNack, redis.Z{Score: math.Inf(-1), Member: "z"})
	p, err := e.dk.Probe(e.ctx, []ProbeRequest{{Shard: s, Token: 1}})
	if err != nil || p[0].Err != nil || p[0].LockedHead != 0 || p[0].InflightHead != 0 || p[0].TTLHead != -1 {
		t.Fatalf("probe %+v, %v: want both heads due (0)", p, err)
	}
	r, err := unlockPass(e.dk, e.ctx, s, 1, 100)
	if err != nil || r.Moved != 3 || len(r.Lags) != 0 || r.NextMs != -1 {
		t.Fatalf("unlock %+v, %v: want 3 moved, no lags for negative unlock times", r, err)
	}
	if got := e.zscores(k.Ready); !sameScores(got, map[string]float64{"a": float64(r.NowUs / 1000), "b": -4, "z": 0}) {
		t.Fatalf("ready %v", got)
	}
	if r, err := requeuePass(e.dk, e.ctx, s, Config{}, 1, 100); err != nil || r.Moved != 1 {
		t.Fatalf("timeout of a negative deadline %+v, %v", r, err)
	}
}

// A backlog of 50,000 due ids over both lock pools drains oldest first:
// each pass of 1,000 moves exactly the 1,000 earliest unlock times left,
// and the same for 50,000 ids in flight.
func TestDeckardBacklogDrainsOldestFirst(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	const n, batch = 50_000, 1000
	q, s := "b", Shard{Queue: "b"}
	e.add(q, dmsgs(n, "m")...)
	k := e.dkeys(q)
	// Each pull takes ten ids with their own deadline; the pod's clock
	// runs an hour behind and a millisecond further at each reading.
	var tick atomic.Int64
	base := time.Now().Add(-time.Hour).UnixMilli()
	e.pod.SetClock(func() time.Time { return time.UnixMilli(base + tick.Add(1)) })
	for pulled := 0; pulled < n; {
		pulled += len(e.pullAll(q, 10, time.Millisecond))
	}
	drained := 0
	for drained < n {
		before, err := e.rdb.ZRangeWithScores(e.ctx, k.Tmp, 0, batch-1).Result()
		if err != nil {
			t.Fatal(err)
		}
		r, err := requeuePass(e.dk, e.ctx, s, Config{}, 1, batch)
		if err != nil || r.Moved != min(batch, n-drained) {
			t.Fatalf("timeout pass after %d: %+v, %v", drained, r, err)
		}
		if len(before) > 0 && before[len(before)-1].Score == before[0].Score+float64(batch) {
			t.Fatal("deadlines are not spread")
		}
		for _, z := range before {
			if _, err := e.rdb.ZScore(e.ctx, k.Tmp, z.Member.(string)).Result(); err != redis.Nil {
				t.Fatalf("after %d: %s (deadline %f) was among the oldest but stayed", drained, z.Member, z.Score)
			}
		}
		drained += r.Moved
	}
	// Now the locks: every id again, acked or nacked with a lock, each with
	// its own unlock time.
	var all []string
	for len(all) < n {
		all = append(all, e.pullAll(q, 1000, time.Hour)...)
	}
	e.replyAll(q, all, func(i int) bool { return i%3 != 0 }, func(int) deckardtest.Reply {
		return deckardtest.Reply{Lock: time.Millisecond}
	})
	locked := len(e.zscores(k.LockAck)) + len(e.zscores(k.LockNack))
	if locked != n {
		t.Fatalf("%d locked, want %d", locked, n)
	}
	for drained = 0; drained < locked; {
		a, _ := e.rdb.ZRangeWithScores(e.ctx, k.LockAck, 0, batch-1).Result()
		b, _ := e.rdb.ZRangeWithScores(e.ctx, k.LockNack, 0, batch-1).Result()
		oldest := append(a, b...)
		slices.SortFunc(oldest, func(x, y redis.Z) int { return int(x.Score - y.Score) })
		oldest = oldest[:min(batch, len(oldest))]
		r, err := unlockPass(e.dk, e.ctx, s, 1, batch)
		if err != nil || r.Moved != len(oldest) {
			t.Fatalf("unlock pass after %d: %+v, %v", drained, r, err)
		}
		for _, z := range oldest {
			if _, err := e.rdb.ZScore(e.ctx, k.Ready, z.Member.(string)).Result(); err != nil {
				t.Fatalf("after %d: %s (unlock %f) was among the oldest but is not ready: %v", drained, z.Member, z.Score, err)
			}
		}
		drained += r.Moved
	}
}

// Every pass at the largest batch the config accepts (10,000) moves all
// of it and loses nothing.
func TestDeckardPassesAtMaxBatch(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	q, s := "x", Shard{Queue: "x"}
	e.add(q, dmsgs(3*MaxBatch, "m")...)
	e.podClock(-time.Hour)
	var got []string
	for len(got) < 3*MaxBatch {
		got = append(got, e.pullAll(q, 1000, time.Second)...)
	}
	e.replyAll(q, got[:2*MaxBatch], func(i int) bool { return i%2 == 0 }, func(i int) deckardtest.Reply {
		return deckardtest.Reply{Lock: time.Second, Score: float64(i%5 - 2)}
	})
	k := e.dkeys(q)
	r, err := unlockPass(e.dk, e.ctx, s, 1, MaxBatch)
	if err != nil || r.Moved != MaxBatch || !r.Full {
		t.Fatalf("unlock at max batch: %+v, %v", r, err)
	}
	r, err = requeuePass(e.dk, e.ctx, s, Config{}, 1, MaxBatch)
	if err != nil || r.Moved != MaxBatch || !r.Full {
		t.Fatalf("timeout at max batch: %+v, %v", r, err)
	}
	if r, err = unlockPass(e.dk, e.ctx, s, 1, MaxBatch); err != nil || r.Moved != MaxBatch || r.NextMs != -1 {
		t.Fatalf("second unlock: %+v, %v", r, err)
	}
	total := 0
	for _, key := range []string{k.Ready, k.Tmp, k.LockAck, k.LockNack} {
		n, _ := e.rdb.ZCard(e.ctx, key).Result()
		total += int(n)
	}
	if total != 3*MaxBatch || len(e.zscores(k.Ready)) != 3*MaxBatch {
		t.Fatalf("%d ids in the pools, %d ready; want all %d ready", total, len(e.zscores(k.Ready)), 3*MaxBatch)
	}
	if n, _ := e.rdb.Exists(e.ctx, k.LockAckScore, k.LockNackScore).Result(); n != 0 {
		t.Fatal("saved scores left behind")
	}
	if _, err := unlockPass(e.dk, e.ctx, s, 1, MaxBatch+1); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("batch over the max: %v", err)
	}
}

// Fencing as for native shards: a lower token, or an equal one from another
// owner, is refused by every pass and by a claim and changes nothing; a
// claim raises the fence, a read does not; a higher token is accepted.
func TestDeckardFences(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	q, s := "f", Shard{Queue: "f"}
	e.add(q, deckardtest.Message{ID: "a"}, deckardtest.Message{ID: "b"})
	e.podClock(-time.Hour)
	e.pullAll(q, 2, time.Second)
	e.reply(q, "a", false, deckardtest.Reply{Lock: time.Second})
	a, b := e.dk.WithOwner("keeper-a/1").WithHistory(), e.dk.WithOwner("keeper-b/2").WithHistory()
	if p, err := a.Probe(e.ctx, []ProbeRequest{{Shard: s, Claim: true, Token: 10}, {Shard: Shard{Queue: "other"}, Token: 3}}); err != nil || p[0].Err != nil || p[1].Err != nil {
		t.Fatalf("claim: %+v, %v", p, err)
	}
	k := e.dkeys(q)
	if f, _ := e.rdb.Get(e.ctx, k.Fence).Int64(); f != 10 {
		t.Fatalf("fence %d after the claim", f)
	}
	if n, _ := e.rdb.Exists(e.ctx, deckardKeysFor(e.dk.prefix, "other").Fence).Result(); n != 0 {
		t.Fatal("a read-only probe wrote a fence")
	}
	before := e.dsnapshot()
	calls := func(d *Deckard, token int64) map[string]func() error {
		return map[string]func() error{
			"unlock":  func() error { _, err := unlockPass(d, e.ctx, s, token, 100); return err },
			"timeout": func() error { _, err := requeuePass(d, e.ctx, s, Config{}, token, 100); return err },
			"measure": func() error { _, err := measurePass(d, e.ctx, s, token); return err },
			"claim": func() error {
				r, err := d.Probe(e.ctx, []ProbeRequest{{Shard: s, Claim: true, Token: token}})
				if err != nil {
					return err
				}
				return r[0].Err
			},
		}
	}
	for _, tc := range []struct {
		d     *Deckard
		token int64
	}{{a, 9}, {b, 10}} {
		for name, call := range calls(tc.d, tc.token) {
			var fe *FencedError
			if err := call(); !errors.As(err, &fe) || fe.Fence != 10 || fe.Owner != "keeper-a/1" || fe.Shard != s {
				t.Errorf("%s with token %d: %v, want FencedError held by keeper-a at 10", name, tc.token, err)
			}
		}
	}
	h, err := e.rdb.XRange(e.ctx, k.History, "-", "+").Result()
	if err != nil || len(ParseHistory(h)) != 1+8 {
		t.Fatalf("history: %d entries, %v; want the claim and 8 refusals", len(h), err)
	}
	e.rdb.Del(e.ctx, k.History)
	delete(before, k.History)
	if after := e.dsnapshot(); !maps.Equal(after, before) {
		t.Fatal("a refused pass changed a key")
	}
	for name, call := range calls(b, 11) {
		if err := call(); err != nil {
			t.Errorf("%s with a higher token: %v", name, err)
		}
	}
	if f, _ := e.rdb.Get(e.ctx, k.Fence).Int64(); f != 11 {
		t.Fatalf("fence %d after token 11", f)
	}
	for _, task := range []Task{TaskExpire, TaskTrim, NumTasks} {
		if o := pass(e.dk, e.ctx, PassRequest{Shard: s, Task: task, Token: 12, Batch: 10}); !errors.Is(o.Err, ErrBadConfig) {
			t.Errorf("%s on a Deckard queue: %v", task, o.Err)
		}
	}
}

func sameScores(a, b map[string]float64) bool { return maps.Equal(a, b) }

// keeper's keys for Deckard queues (fence, owner, history, counters) are
// outside every pattern Deckard matches: its discovery never takes them for
// queues and its Flush never deletes them; Deckard's own other keys are
// never touched by keeper.
func TestDeckardKeeperKeysOutsideDeckardPatterns(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	d := e.dk.WithHistory().WithOwner("k/1")
	queues := []string{"a", "b::c", "d:lock_ack", "e:tmp", "queue:{x", "sp ace"}
	for _, q := range queues {
		if strings.ContainsAny(q, "{}") {
			continue
		}
		e.add(q, deckardtest.Message{ID: "1"}, deckardtest.Message{ID: "2"}, deckardtest.Message{ID: "3"})
		e.podClock(-time.Hour)
		got := e.pullAll(q, 3, time.Second)
		e.reply(q, got[0], true, deckardtest.Reply{Lock: time.Second, Score: 5})
		e.reply(q, got[1], false, deckardtest.Reply{Lock: time.Second})
		s := Shard{Queue: q}
		if p, err := d.Probe(e.ctx, []ProbeRequest{{Shard: s, Claim: true, Token: 1}}); err != nil || p[0].Err != nil {
			t.Fatal(p, err)
		}
		for _, task := range []Task{TaskUnlock, TaskRequeue, TaskMeasure} {
			if o := pass(d, e.ctx, PassRequest{Shard: s, Task: task, Token: 1, Batch: 10}); o.Err != nil {
				t.Fatal(o.Err)
			}
		}
	}
	recovery := e.dk.prefix + ":{recovery}"
	e.rdb.Set(e.ctx, recovery, "x", 0)
	own := e.allKeys(deckardOwnPrefix(e.dk.prefix) + ":*")
	if len(own) != 4*(len(queues)-1) {
		t.Fatalf("keeper keys %v: want fence, owner, history and stats per queue", own)
	}
	for _, pattern := range e.pod.Patterns() {
		keys, err := e.pod.Scan(e.ctx, pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if slices.Contains(own, k) {
				t.Errorf("Deckard's pattern %s matches keeper's key %s", pattern, k)
			}
		}
	}
	for _, pattern := range e.pod.Patterns()[1:] {
		found, _ := e.pod.Queues(e.ctx, pattern)
		for _, q := range found {
			if strings.Contains(q, "keeper") || !slices.Contains(queues, q) {
				t.Errorf("Deckard's discovery (%s) found queue %q", pattern, q)
			}
		}
	}
	if v, _ := e.rdb.Get(e.ctx, recovery).Result(); v != "x" {
		t.Fatal("keeper touched Deckard's recovery key")
	}
	if err := e.pod.Flush(e.ctx); err != nil {
		t.Fatal(err)
	}
	if left := e.allKeys(e.dk.prefix + ":*"); len(left) != 0 {
		t.Fatalf("Flush left %v", left)
	}
	if after := e.allKeys(deckardOwnPrefix(e.dk.prefix) + ":*"); len(after) != len(own) {
		t.Fatalf("Flush took keeper keys: %d of %d left", len(after), len(own))
	}
}

func TestDeckardMeasureAndInspect(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	q, s := "m", Shard{Queue: "m"}
	nowMs := float64(e.redisNowMs())
	e.add(q, deckardtest.Message{ID: "zero", Score: 1}, deckardtest.Message{ID: "old", Score: nowMs - 60_000},
		deckardtest.Message{ID: "a", Score: nowMs - 50_000})
	if got := e.pullAll(q, 3, time.Hour); !slices.Equal(got, []string{"zero", "old", "a"}) {
		t.Fatalf("pulled %v", got)
	}
	e.reply(q, "old", true, deckardtest.Reply{Lock: time.Hour, Score: 12})
	e.reply(q, "a", false, deckardtest.Reply{Lock: time.Hour})
	e.reply(q, "zero", false, deckardtest.Reply{})
	// Ready: zero at 0 (the top priority), mid added 30 s ago, a small
	// priority a client gave, a large one and an add time still to come;
	// none but mid's is an age.
	e.add(q, deckardtest.Message{ID: "mid", Score: nowMs - 30_000}, deckardtest.Message{ID: "prio", Score: 9e15},
		deckardtest.Message{ID: "c", Score: nowMs + 3_600_000}, deckardtest.Message{ID: "small", Score: 5})
	m, err := measurePass(e.dk, e.ctx, s, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Ready != 5 || m.Inflight != 0 || m.Locked != 2 || m.LockedAck != 1 || m.LockedNack != 1 || m.Dead != 0 {
		t.Fatalf("counts %+v", m)
	}
	if age := m.OldestReadyAge(); !m.HasReady || m.ReadyHead != nowMs-30_000 || age < 29*time.Second || age > 40*time.Second {
		t.Fatalf("oldest ready: head %f (has %v), age %s; want mid's 30s", m.ReadyHead, m.HasReady, age)
	}
	for id, want := range map[string][]DeckardPlace{
		"zero": {{Pool: "ready", Score: "0"}},
		"old":  {{Pool: "lock_ack", Score: "", SavedScore: "12"}},
		"a":    {{Pool: "lock_nack", Score: ""}},
		"gone": nil,
	} {
		places, err := e.dk.InspectDeckard(e.ctx, q, id)
		if err != nil || len(places) != len(want) {
			t.Fatalf("inspect %s = %+v, %v", id, places, err)
		}
		for i := range want {
			if places[i].Pool != want[i].Pool || places[i].SavedScore != want[i].SavedScore ||
				(want[i].Score != "" && places[i].Score != want[i].Score) {
				t.Fatalf("inspect %s = %+v, want %+v", id, places, want)
			}
		}
	}
	// An id in two pools (Deckard's invariant broken by hand) shows both.
	e.rdb.ZAdd(e.ctx, e.dkeys(q).Ready, redis.Z{Score: 1, Member: "a"})
	if places, _ := e.dk.InspectDeckard(e.ctx, q, "a"); len(places) != 2 || places[0].Pool != "ready" {
		t.Fatalf("inspect of an id in two pools: %+v", places)
	}
	if _, err := e.dk.InspectDeckard(e.ctx, "a{b", "x"); !errors.Is(err, ErrBadName) {
		t.Fatalf("inspect of a bad queue name: %v", err)
	}
}

// wakeSink collects wakes of a Deckard layout's Wakes.
type wakeSink struct {
	mu    sync.Mutex
	wakes []Wake
}

func (w *wakeSink) add(x Wake) {
	w.mu.Lock()
	w.wakes = append(w.wakes, x)
	w.mu.Unlock()
}

// find reports whether a wake matching ok arrived.
func (w *wakeSink) find(ok func(Wake) bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.ContainsFunc(w.wakes, ok)
}

func (w *wakeSink) reset() {
	w.mu.Lock()
	w.wakes = nil
	w.mu.Unlock()
}

func runWakes(t *testing.T, d *Deckard) *wakeSink {
	t.Helper()
	sink := &wakeSink{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = d.Wakes(ctx, sink.add)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return sink
}

// queuesOnNodes returns n queue names whose keys are on distinct Redis
// nodes when the test runs on a cluster (any names otherwise).
func queuesOnNodes(t *testing.T, e *denv, n int) []string {
	t.Helper()
	cc, ok := e.rdb.(*redis.ClusterClient)
	if !ok {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprint("q", i)
		}
		return out
	}
	seen := map[string]bool{}
	var out []string
	for i := 0; len(out) < min(n, len(testAddrs)); i++ {
		q := fmt.Sprint("q", i)
		node, err := cc.MasterForKey(e.ctx, e.dkeys(q).Tmp)
		if err != nil {
			t.Fatal(err)
		}
		if !seen[node.Options().Addr] {
			seen[node.Options().Addr] = true
			out = append(out, q)
		}
	}
	return out
}

// With keyspace notifications, an earlier deadline set by a Deckard client
// (here an hour earlier than every known one) is delivered at once as a
// wake, on whichever primary the queue lives; each queue's subscription is
// confirmed by a Resync; changes ask for a measure; an unwatched queue is
// silent.
func TestDeckardKeyspaceWakes(t *testing.T) {
	e := newEnv(t)
	wake, why, err := SetupKeyspaceEvents(e.ctx, e.rdb, KeyspaceAuto)
	if err != nil || wake != WakeKeyspace {
		t.Fatalf("setup: %s (%s), %v", wake, why, err)
	}
	t.Log(why)
	if wake, _, err := SetupKeyspaceEvents(e.ctx, e.rdb, KeyspaceOn); err != nil || wake != WakeKeyspace {
		t.Fatalf("on, once set: %s, %v", wake, err)
	}
	d, err := NewDeckard(e.rdb, e.prefix, DeckardWakeConfig{Mode: WakeKeyspace})
	if err != nil {
		t.Fatal(err)
	}
	de := &denv{env: e, dk: d, pod: deckardtest.New(e.rdb, e.prefix)}
	qs := queuesOnNodes(t, de, 3)
	sink := runWakes(t, d)
	var shards []Shard
	for _, q := range qs {
		shards = append(shards, Shard{Queue: q})
		de.add(q, deckardtest.Message{ID: "a"}, deckardtest.Message{ID: "b"}, deckardtest.Message{ID: "c"})
	}
	d.Watch(shards, true)
	waitUntil(t, 10*time.Second, "every queue's subscription confirmed", func() bool {
		for _, s := range shards {
			if !sink.find(func(w Wake) bool { return w.Resync && w.Shard == s }) {
				return false
			}
		}
		return true
	})
	for _, q := range qs {
		s := Shard{Queue: q}
		de.pullAll(q, 3, 2*time.Hour)
		de.reply(q, "a", true, deckardtest.Reply{Lock: time.Hour})
		de.reply(q, "b", false, deckardtest.Reply{Lock: 30 * time.Minute})
		want := float64(de.pod.NowMs() + 60*60_000)
		start := time.Now()
		waitUntil(t, 5*time.Second, "the hour lock's wake", func() bool {
			return sink.find(func(w Wake) bool {
				return w.Shard == s && w.Due.Task == TaskUnlock && math.Abs(float64(w.Due.AtMs)-want) < 5000
			})
		})
		waitUntil(t, 5*time.Second, "the 30 min lock's wake", func() bool {
			return sink.find(func(w Wake) bool {
				return w.Shard == s && w.Due.Task == TaskUnlock && math.Abs(float64(w.Due.AtMs)-(want-30*60_000)) < 5000
			})
		})
		waitUntil(t, 5*time.Second, "the tmp wake", func() bool {
			return sink.find(func(w Wake) bool { return w.Shard == s && w.Due.Task == TaskRequeue })
		})
		t.Logf("queue %s: wakes within %s", q, time.Since(start))
		waitUntil(t, 5*time.Second, "a measure wake", func() bool {
			return sink.find(func(w Wake) bool { return w.Shard == s && w.Due.Task == TaskMeasure })
		})
	}
	d.Watch(shards[:1], false)
	waitUntil(t, 5*time.Second, "unsubscribed", func() bool {
		return e.subscribers("__keyspace@0__:"+de.dkeys(qs[0]).Tmp) == 0
	})
	sink.reset()
	de.add(qs[0], deckardtest.Message{ID: "late"})
	de.pullAll(qs[0], 1, time.Second)
	if len(qs) > 1 {
		de.add(qs[1], deckardtest.Message{ID: "late"})
		de.pullAll(qs[1], 1, time.Second)
		waitUntil(t, 5*time.Second, "the watched queue's wake", func() bool {
			return sink.find(func(w Wake) bool { return w.Shard.Queue == qs[1] && w.Due.Task == TaskRequeue })
		})
	}
	if sink.find(func(w Wake) bool { return w.Shard.Queue == qs[0] && !w.Resync }) {
		t.Fatal("an unwatched queue woke")
	}
}

// Without CONFIG (a managed Redis), auto falls back to polling and says
// why; on trusts the operator. Polling delivers each watched queue's heads,
// at PollMin while the queue changes, backing off to PollMax when it does
// not.
func TestDeckardPollWakes(t *testing.T) {
	e := newEnv(t)
	srv := startRedisNoConfig(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv})
	t.Cleanup(func() { _ = rdb.Close() })
	wake, why, err := SetupKeyspaceEvents(e.ctx, rdb, KeyspaceAuto)
	if err != nil || wake != WakePoll || !strings.Contains(why, "CONFIG refused") {
		t.Fatalf("auto without CONFIG: %s (%s), %v", wake, why, err)
	}
	if wake, _, err := SetupKeyspaceEvents(e.ctx, rdb, KeyspaceOn); err != nil || wake != WakeKeyspace {
		t.Fatalf("on without CONFIG: %s, %v", wake, err)
	}
	if wake, _, err := SetupKeyspaceEvents(e.ctx, rdb, KeyspaceOff); err != nil || wake != WakePoll {
		t.Fatalf("off: %s, %v", wake, err)
	}
	if _, _, err := SetupKeyspaceEvents(e.ctx, rdb, "maybe"); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("a bad mode: %v", err)
	}
	d, err := NewDeckard(rdb, "p", DeckardWakeConfig{Mode: WakePoll, PollMin: 20 * time.Millisecond, PollMax: 320 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	pod := deckardtest.New(rdb, "p")
	s := Shard{Queue: "q"}
	if _, err := pod.Add(e.ctx, "q", deckardtest.Message{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	sink := runWakes(t, d)
	d.Watch([]Shard{s}, true)
	polls := func() int64 {
		info, _ := rdb.Info(e.ctx, "commandstats").Result()
		for _, l := range strings.Split(info, "\n") {
			if rest, ok := strings.CutPrefix(l, "cmdstat_evalsha:calls="); ok {
				var n int64
				_, _ = fmt.Sscan(strings.Split(rest, ",")[0], &n)
				return n
			}
		}
		return 0
	}
	// nextPoll waits for the next poll and returns the time since the last.
	last, lastAt := polls(), time.Now()
	nextPoll := func() time.Duration {
		t.Helper()
		poll.For(t, 10*time.Second, "a poll", func() (bool, string) { return polls() > last, "" })
		last = polls()
		gap := time.Since(lastAt)
		lastAt = time.Now()
		return gap
	}
	// Idle: the interval doubles up to PollMax.
	for gap := nextPoll(); gap < 250*time.Millisecond; gap = nextPoll() {
	}
	ids, _ := pod.Pull(e.ctx, "q", 1, deckardtest.Pull{AckDeadline: time.Hour})
	start := time.Now()
	waitUntil(t, 5*time.Second, "the new deadline polled", func() bool {
		return sink.find(func(w Wake) bool { return w.Shard == s && w.Due.Task == TaskRequeue })
	})
	seen := time.Since(start)
	if !sink.find(func(w Wake) bool { return w.Shard == s && w.Due.Task == TaskMeasure }) {
		t.Fatal("a change polled asked for no measure")
	}
	t.Logf("idle queue: new deadline seen by polling after %s (PollMax 320ms)", seen)
	// The interval itself: a poll that sees a change comes back to
	// PollMin, one that sees none doubles it up to PollMax.
	p := &polled{s: s, every: 320 * time.Millisecond}
	w := d.wakes
	w.pollOnce(e.ctx, sink.add, []*polled{p})
	if !p.seen || p.every != 20*time.Millisecond {
		t.Fatalf("first poll: every %s, seen %v; want PollMin", p.every, p.seen)
	}
	for _, want := range []time.Duration{40, 80, 160, 320, 320} {
		w.pollOnce(e.ctx, sink.add, []*polled{p})
		if p.every != want*time.Millisecond {
			t.Fatalf("unchanged queue: every %s, want %s", p.every, want*time.Millisecond)
		}
	}
	sink.reset()
	_, _ = pod.Nack(e.ctx, "q", ids[0], deckardtest.Reply{Lock: time.Hour})
	w.pollOnce(e.ctx, sink.add, []*polled{p})
	if p.every != 20*time.Millisecond || !sink.find(func(w Wake) bool { return w.Due.Task == TaskMeasure }) ||
		!sink.find(func(w Wake) bool { return w.Due.Task == TaskUnlock }) {
		t.Fatalf("a change: every %s, wakes %+v; want PollMin, a measure and the lock's deadline", p.every, sink.wakes)
	}
}

// startRedisNoConfig starts a redis-server without the CONFIG command, as
// a managed Redis forbids it.
func startRedisNoConfig(t *testing.T) string {
	t.Helper()
	return redisserver.StartConfigTB(t, redisserver.Config{ExtraArgs: []string{"--rename-command", "CONFIG", ""}}).Addr
}

// Discover finds every queue that has a key in any pool, by one pattern,
// on every primary; keeper's own keys, Deckard's recovery keys and foreign
// keys that happen to match are not queues; names keeper cannot housekeep
// are reported, not returned; glob characters in the prefix match only
// themselves.
func TestDeckardDiscover(t *testing.T) {
	e := newEnv(t)
	for _, prefix := range []string{e.prefix, e.prefix + "[x]*?"} {
		d, err := NewDeckard(e.rdb, prefix, DeckardWakeConfig{})
		if err != nil {
			t.Fatal(err)
		}
		pod := deckardtest.New(e.rdb, prefix)
		ctx := e.ctx
		// ready only; tmp only; lock_ack only (with its score); lock_nack.
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		_, err = pod.Add(ctx, "ready-only", deckardtest.Message{ID: "a"})
		must(err)
		_, err = pod.Add(ctx, "tmp::only", deckardtest.Message{ID: "a"})
		must(err)
		_, err = pod.Pull(ctx, "tmp::only", 1, deckardtest.Pull{})
		must(err)
		for _, q := range []string{"acked", "nacked"} {
			_, err = pod.Add(ctx, q, deckardtest.Message{ID: "a"})
			must(err)
			_, err = pod.Pull(ctx, q, 1, deckardtest.Pull{})
			must(err)
			f := pod.Ack
			if q == "nacked" {
				f = pod.Nack
			}
			_, err = f(ctx, q, "a", deckardtest.Reply{Lock: time.Hour, Score: 3})
			must(err)
		}
		p := d.Prefix()
		must(e.rdb.ZAdd(ctx, p+":queue:{a{b}", redis.Z{Score: 1, Member: "x"}).Err()) // name with a brace: refused
		must(e.rdb.Set(ctx, p+":queue:{foreign}:other", "x", 0).Err())                // no pool of Deckard's
		must(e.rdb.Set(ctx, p+":{recovery}", "x", 0).Err())
		must(e.rdb.Set(ctx, deckardOwnPrefix(p)+":{own}:fence", "1", 0).Err())
		if prefix != e.prefix {
			// A key the unescaped pattern would match.
			must(e.rdb.ZAdd(ctx, e.prefix+"xx:queue:{glob}", redis.Z{Score: 1, Member: "x"}).Err())
		}
		got, st, err := d.Discover(ctx)
		must(err)
		want := []string{"acked", "nacked", "ready-only", "tmp::only"}
		if !slices.Equal(got, want) {
			t.Fatalf("prefix %q: discovered %v, want %v", prefix, got, want)
		}
		if st.RefusedCount != 1 || st.Refused[0] != "a{b" || st.Keys != 7 || st.Calls < len(testAddrs) {
			t.Fatalf("prefix %q: stats %+v", prefix, st)
		}
	}
}

// StatsOf reads what operators see without writing: pools, saved scores,
// next deadlines, oldest-ready age, keeper's fence, owner and counters; a
// queue without keys reads as empty; a key of another type is an error.
func TestDeckardStatsOf(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	q := "st"
	nowMs := e.redisNowMs()
	e.add(q, deckardtest.Message{ID: "a", Score: 1}, deckardtest.Message{ID: "b", Score: 2},
		deckardtest.Message{ID: "c", Score: 3}, deckardtest.Message{ID: "d", Score: 4})
	e.pullAll(q, 4, time.Hour)
	e.podClock(-time.Hour)
	e.reply(q, "a", true, deckardtest.Reply{Lock: time.Minute, Score: 9})
	e.podClock(0)
	e.reply(q, "b", false, deckardtest.Reply{Lock: time.Hour, Score: 1})
	e.reply(q, "c", false, deckardtest.Reply{Lock: 2 * time.Hour})
	e.add(q, deckardtest.Message{ID: "old", Score: float64(nowMs - 90_000)})
	d := e.dk.WithOwner("k/1")
	if r, err := unlockPass(d, e.ctx, Shard{Queue: q}, 5, 10); err != nil || r.Moved != 1 {
		t.Fatalf("unlock %+v, %v", r, err)
	}
	before := e.dsnapshot()
	st, err := e.dk.StatsOf(e.ctx, []string{q, "empty"})
	if err != nil {
		t.Fatal(err)
	}
	e.sameAsD(before)
	s := st[0]
	if s.Queue != q || s.Ready != 2 || s.Inflight != 1 || s.LockAck != 0 || s.LockNack != 2 || s.SavedAck != 0 ||
		s.SavedNack != 1 || s.Fence != 5 || s.Owner != "k/1" || s.Counters.UnlockedAck != 1 || s.Counters.Unlocked != 1 {
		t.Fatalf("stats %+v", s)
	}
	tmp := e.zscores(e.dkeys(q).Tmp)["d"]
	if s.NextTimeoutMs != int64(tmp) || s.NextUnlockMs != int64(e.zscores(e.dkeys(q).LockNack)["b"]) {
		t.Fatalf("next deadlines %d %d", s.NextTimeoutMs, s.NextUnlockMs)
	}
	if age := s.OldestReadyAge(); age < 90*time.Second || age > 100*time.Second {
		t.Fatalf("oldest ready age %s, want about 90s", age)
	}
	if z := st[1]; z.Queue != "empty" || z.Ready+z.Inflight+z.LockAck+z.LockNack != 0 || z.NextTimeoutMs != -1 || z.NextUnlockMs != -1 {
		t.Fatalf("empty queue %+v", z)
	}
	e.rdb.Set(e.ctx, e.dkeys("bad").Tmp, "x", 0)
	if _, err := e.dk.StatsOf(e.ctx, []string{"bad"}); err == nil {
		t.Fatal("a key of another type read as stats")
	}
	for _, want := range []string{fmt.Sprint("local ADD_TIME_MIN = ", int64(DeckardAddTimeMin)),
		fmt.Sprint("local MAX_DUE_MS = ", int64(maxWakeMs))} {
		if !strings.Contains(mustRead("deckard_lib"), want) {
			t.Fatalf("deckard_lib.lua does not say %q", want)
		}
	}
	if _, err := e.dk.StatsOf(e.ctx, []string{"a{b"}); !errors.Is(err, ErrBadName) {
		t.Fatalf("a bad name: %v", err)
	}
}

func (e *denv) sameAsD(before map[string]string) {
	e.t.Helper()
	if after := e.dsnapshot(); !maps.Equal(after, before) {
		e.t.Fatal("a read changed a key")
	}
}

// A pool key of another type fails every pass and probe of the queue with
// ErrWrongType and changes nothing, claims included; the other queues of
// the same probe are read.
func TestDeckardWrongType(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	e.add("ok", deckardtest.Message{ID: "a"})
	k := e.dkeys("bad")
	e.rdb.Set(e.ctx, k.LockNack, "x", 0)
	before := e.dsnapshot()
	for _, claim := range []bool{false, true} {
		res, err := e.dk.Probe(e.ctx, []ProbeRequest{{Shard: Shard{Queue: "bad"}, Claim: claim, Token: 3},
			{Shard: Shard{Queue: "ok"}, Claim: claim, Token: 3}})
		if err != nil || !errors.Is(res[0].Err, ErrWrongType) || res[1].Err != nil {
			t.Fatalf("probe (claim %v): %+v, %v", claim, res, err)
		}
	}
	delete(before, e.dkeys("ok").Fence)
	// (The timeout pass does not read lock_nack.)
	for _, task := range []Task{TaskUnlock, TaskMeasure} {
		if o := pass(e.dk, e.ctx, PassRequest{Shard: Shard{Queue: "bad"}, Task: task, Token: 3, Batch: 10}); !errors.Is(o.Err, ErrWrongType) {
			t.Fatalf("%s: %v", task, o.Err)
		}
	}
	after := e.dsnapshot()
	delete(after, e.dkeys("ok").Fence)
	delete(after, e.dkeys("ok").FenceOwner)
	if !maps.Equal(after, before) {
		t.Fatal("a refused pass or probe changed a key")
	}
}

// A read-only probe (the safety sweep's) costs Redis three ZRANGEs per
// queue and nothing else; the poller's adds the four pool sizes. (It once
// also checked four key types, read the sizes and Redis's clock: thirteen
// commands per queue, twice the idle budget at 10,000 queues.)
func TestDeckardProbeCost(t *testing.T) {
	e := newDeckardEnv(t, DeckardWakeConfig{})
	if len(testAddrs) > 1 {
		t.Skip("counts commands on one server")
	}
	const n = 50
	var reqs []ProbeRequest
	for i := 0; i < n; i++ {
		q := fmt.Sprint("c", i)
		e.add(q, deckardtest.Message{ID: "a"})
		reqs = append(reqs, ProbeRequest{Shard: Shard{Queue: q}})
	}
	calls := func() map[string]int64 {
		info, err := e.rdb.Info(e.ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int64{}
		for _, l := range strings.Split(info, "\n") {
			name, rest, ok := strings.Cut(strings.TrimPrefix(l, "cmdstat_"), ":calls=")
			if ok {
				c, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
				out[name] = c
			}
		}
		return out
	}
	if _, err := e.dk.Probe(e.ctx, reqs); err != nil { // scripts loaded
		t.Fatal(err)
	}
	before := calls()
	if _, err := e.dk.Probe(e.ctx, reqs); err != nil {
		t.Fatal(err)
	}
	after := calls()
	delete(after, "info")
	spent := map[string]int64{}
	for name, c := range after {
		if d := c - before[name]; d > 0 {
			spent[name] = d
		}
	}
	if want := map[string]int64{"evalsha": n, "zrange": 3 * n}; !maps.Equal(spent, want) {
		t.Fatalf("%d read-only probes cost %v, want %v", n, spent, want)
	}
}
