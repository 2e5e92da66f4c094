package queue

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestEnqueuePullAck(t *testing.T) {
	e := newEnv(t)
	e.create("jobs", Config{})
	r1 := e.enqueue("jobs", Message{ID: "a", Payload: []byte("one")})
	e.enqueue("jobs", Message{ID: "b", Payload: []byte("two")})
	if r1.Shard.String() != "jobs#0" || r1.Duplicate {
		t.Fatalf("enqueue result %+v", r1)
	}
	dup := e.enqueue("jobs", Message{ID: "a", Payload: []byte("other")})
	if !dup.Duplicate || !dup.EnqueuedAt.Equal(r1.EnqueuedAt) {
		t.Fatalf("duplicate enqueue = %+v, want Duplicate with the original's time", dup)
	}
	ds := e.pull("jobs", 10, time.Minute)
	if len(ds) != 2 || ds[0].ID != "a" || string(ds[0].Payload) != "one" || ds[0].Deliveries != 1 {
		t.Fatalf("pull = %+v", ds)
	}
	if ds[0].Token == ds[1].Token {
		t.Fatalf("two deliveries share token %s", ds[0].Token)
	}
	if more := e.pull("jobs", 10, time.Minute); len(more) != 0 {
		t.Fatalf("leased messages pulled again: %+v", more)
	}
	for _, d := range ds {
		if err := e.c.Ack(e.ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.c.Ack(e.ctx, ds[0]); !errors.Is(err, ErrStale) {
		t.Fatalf("second ack = %v, want ErrStale", err)
	}
	st, err := e.c.Stats(e.ctx, "jobs")
	if err != nil {
		t.Fatal(err)
	}
	if st.Ready+st.Inflight+st.Locked+st.Dead != 0 || st.Counters.Enqueued != 2 || st.Counters.Acked != 2 || st.Counters.Deduplicated != 1 {
		t.Fatalf("stats %+v", st)
	}
	// An acked id can be enqueued again: de-duplication lasts while the
	// message is in the queue.
	if r := e.enqueue("jobs", Message{ID: "a"}); r.Duplicate {
		t.Fatal("re-enqueue after ack reported duplicate")
	}
	if keys := e.allKeys(e.prefix + ":{jobs#0}:tok"); len(keys) != 0 {
		t.Fatalf("token hash left behind: %v", keys)
	}
}

func TestPriorityOrder(t *testing.T) {
	e := newEnv(t)
	e.create("p", Config{})
	e.enqueue("p", Message{ID: "late", Priority: ptr(int64(300))})
	e.enqueue("p", Message{ID: "first", Priority: ptr(int64(-5))})
	e.enqueue("p", Message{ID: "mid", Priority: ptr(int64(100))})
	ds := e.pull("p", 3, time.Minute)
	got := []string{ds[0].ID, ds[1].ID, ds[2].ID}
	if strings.Join(got, ",") != "first,mid,late" {
		t.Fatalf("order %v", got)
	}
}

func TestNackAndExtend(t *testing.T) {
	e := newEnv(t)
	e.create("n", Config{MaxDeliveries: 2})
	e.enqueue("n", Message{ID: "m", Priority: ptr(int64(10))})
	d := e.pull("n", 1, time.Minute)[0]
	before := e.redisNowMs()
	due, err := e.c.Extend(e.ctx, d, 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got := due.UnixMilli() - before; got < 5*60*1000-50 || got > 5*60*1000+1000 {
		t.Fatalf("extended deadline is now+%dms, want now+5m", got)
	}
	st, err := e.c.Nack(e.ctx, d, NackOptions{LockFor: time.Hour, Priority: ptr(int64(7))})
	if err != nil || st != StateLocked {
		t.Fatalf("nack = %v, %v", st, err)
	}
	info, err := e.c.Inspect(e.ctx, "n", "m")
	if err != nil {
		t.Fatal(err)
	}
	if info.State != StateLocked || info.Priority != 7 || info.Deliveries != 1 {
		t.Fatalf("inspect %+v", info)
	}
	if lockAt := int64(info.Score) - e.redisNowMs(); lockAt < 59*60*1000 {
		t.Fatalf("locked until now+%dms, want about 1h", lockAt)
	}
	if _, err := e.c.Extend(e.ctx, d, time.Minute); !errors.Is(err, ErrStale) {
		t.Fatalf("extend after nack = %v, want ErrStale", err)
	}
	// Unlock by hand through the layout (the keeper's job) to redeliver.
	k := e.keys(d.Shard)
	e.rdb.ZAdd(e.ctx, k.Locked, redisZ(0, "m"))
	if _, err := unlockPass(e.n, e.ctx, d.Shard, 1, 100); err != nil {
		t.Fatal(err)
	}
	d2 := e.pull("n", 1, time.Minute)[0]
	if d2.Deliveries != 2 {
		t.Fatalf("second delivery counted %d", d2.Deliveries)
	}
	// The second failed delivery reaches max_deliveries: dead, not ready.
	if st, err := e.c.Nack(e.ctx, d2, NackOptions{}); err != nil || st != StateDead {
		t.Fatalf("nack at max deliveries = %v, %v; want dead", st, err)
	}
}

func TestDelayAndTTLAtEnqueue(t *testing.T) {
	e := newEnv(t)
	e.create("d", Config{TTL: Duration(time.Hour)})
	e.enqueue("d", Message{ID: "later", Delay: time.Hour})
	e.enqueue("d", Message{ID: "short", TTL: time.Minute})
	if ds := e.pull("d", 10, time.Minute); len(ds) != 1 || ds[0].ID != "short" {
		t.Fatalf("delayed message was pullable: %+v", ds)
	}
	info, err := e.c.Inspect(e.ctx, "d", "later")
	if err != nil {
		t.Fatal(err)
	}
	if info.State != StateLocked || info.ExpiresAt.Sub(info.EnqueuedAt) != time.Hour {
		t.Fatalf("inspect later = %+v", info)
	}
	info, _ = e.c.Inspect(e.ctx, "d", "short")
	if info.ExpiresAt.Sub(info.EnqueuedAt) != time.Minute {
		t.Fatalf("per-message TTL not applied: %+v", info)
	}
}

func TestMaxInFlight(t *testing.T) {
	e := newEnv(t)
	e.create("cap", Config{Partitions: 2, MaxInFlight: 3})
	for i := 0; i < 20; i++ {
		e.enqueue("cap", Message{})
	}
	var got []Delivery
	for i := 0; i < 10; i++ {
		ds, err := e.c.Pull(e.ctx, "cap", 5, time.Minute)
		if err != nil && !errors.Is(err, ErrCapped) {
			t.Fatal(err)
		}
		got = append(got, ds...)
	}
	if len(got) != 3 {
		t.Fatalf("leased %d messages with max_inflight 3", len(got))
	}
	if _, err := e.c.Pull(e.ctx, "cap", 1, time.Minute); !errors.Is(err, ErrCapped) {
		t.Fatalf("pull at cap = %v, want ErrCapped", err)
	}
	if err := e.c.Ack(e.ctx, got[0]); err != nil {
		t.Fatal(err)
	}
	if ds := e.pull("cap", 5, time.Minute); len(ds) != 1 {
		t.Fatalf("after one ack, pulled %d, want 1", len(ds))
	}
}

func TestPullSpreadsOverPartitions(t *testing.T) {
	e := newEnv(t)
	e.create("wide", Config{Partitions: 4})
	for i := 0; i < 400; i++ {
		e.enqueue("wide", Message{})
	}
	seen := map[int]int{}
	for i := 0; i < 8; i++ {
		for _, d := range e.pull("wide", 10, time.Minute) {
			seen[d.Shard.Partition]++
		}
	}
	for p := 0; p < 4; p++ {
		if seen[p] == 0 {
			t.Fatalf("partition %d never served: %v", p, seen)
		}
	}
}

func TestBadInputsChangeNothing(t *testing.T) {
	e := newEnv(t)
	e.create("q", Config{MaxPayloadBytes: 8})
	e.enqueue("q", Message{ID: "x"})
	d := e.pull("q", 1, time.Minute)[0]
	before := e.snapshot()

	if err := e.c.Registry().Create(e.ctx, "bad name", Config{}); !errors.Is(err, ErrBadName) {
		t.Errorf("create bad name = %v", err)
	}
	if err := e.c.Registry().Create(e.ctx, "q2", Config{Partitions: -3}); !errors.Is(err, ErrBadConfig) {
		t.Errorf("create bad config = %v", err)
	}
	if err := e.c.Registry().Create(e.ctx, "q", Config{}); !errors.Is(err, ErrQueueExists) {
		t.Errorf("create existing = %v", err)
	}
	if _, err := e.c.Enqueue(e.ctx, "a#b", Message{}); !errors.Is(err, ErrBadName) {
		t.Errorf("enqueue to bad name = %v", err)
	}
	if _, err := e.c.Enqueue(e.ctx, "nosuch", Message{}); !errors.Is(err, ErrUnknownQueue) {
		t.Errorf("enqueue to unknown queue = %v", err)
	}
	if _, err := e.c.Enqueue(e.ctx, "q", Message{Payload: bytes.Repeat([]byte("z"), 9)}); !errors.Is(err, ErrTooBig) {
		t.Errorf("oversized payload = %v", err)
	}
	stale := d
	stale.Token = "999999"
	if err := e.c.Ack(e.ctx, stale); !errors.Is(err, ErrStale) {
		t.Errorf("ack with stale token = %v", err)
	}
	if _, err := e.c.Nack(e.ctx, stale, NackOptions{}); !errors.Is(err, ErrStale) {
		t.Errorf("nack with stale token = %v", err)
	}
	if _, err := e.c.Pull(e.ctx, "q", 0, 0); !errors.Is(err, ErrBadMessage) {
		t.Errorf("pull 0 = %v", err)
	}
	if _, err := e.c.Inspect(e.ctx, "q", "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("inspect unknown id = %v", err)
	}
	e.sameAs(before)

	// The oversized payload is refused by the script too, for writers that
	// skip the client's check.
	st, err := e.c.config(e.ctx, "q")
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.c.enqueueShard(e.ctx, Shard{"q", 0}, st, Message{ID: "big", Payload: []byte("123456789")}, "")
	if !errors.Is(err, ErrTooBig) {
		t.Errorf("script with oversized payload = %v", err)
	}
	e.sameAs(before)
}

func TestWrongTypedKeyChangesNothing(t *testing.T) {
	e := newEnv(t)
	e.create("w", Config{})
	e.enqueue("w", Message{ID: "keep"})
	k := e.keys(Shard{"w", 0})
	// Someone else's tool wrote a string where the TTL index lives.
	e.rdb.Set(e.ctx, k.TTL, "not a zset", 0)
	before := e.snapshot()
	if _, err := e.c.Enqueue(e.ctx, "w", Message{ID: "new"}); !errors.Is(err, ErrWrongType) {
		t.Fatalf("enqueue with wrong-typed key = %v, want ErrWrongType", err)
	}
	if _, err := e.c.Pull(e.ctx, "w", 1, time.Minute); !errors.Is(err, ErrWrongType) {
		t.Fatalf("pull with wrong-typed key = %v, want ErrWrongType", err)
	}
	if _, err := expirePass(e.n, e.ctx, Shard{"w", 0}, 1, 10); !errors.Is(err, ErrWrongType) {
		t.Fatalf("expire with wrong-typed key = %v, want ErrWrongType", err)
	}
	e.sameAs(before)
	if !strings.Contains(errString(e.c.Enqueue(e.ctx, "w", Message{})), k.TTL) {
		t.Fatal("error does not name the offending key")
	}
}

func TestMalformedStoredConfigIsReportedAlone(t *testing.T) {
	e := newEnv(t)
	e.create("good", Config{Partitions: 2})
	e.rdb.HSet(e.ctx, registryKey(e.prefix), "broken", `{"partitions":"two"}`)
	e.rdb.HSet(e.ctx, registryKey(e.prefix), "bad name", `{}`)
	list, err := e.c.Registry().List(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Entry{}
	for _, en := range list {
		byName[en.Name] = en
	}
	if byName["good"].Err != nil || byName["good"].Config.Partitions != 2 {
		t.Fatalf("good queue = %+v", byName["good"])
	}
	if !errors.Is(byName["broken"].Err, ErrBadConfig) || !errors.Is(byName["bad name"].Err, ErrBadName) {
		t.Fatalf("malformed entries = %+v / %+v", byName["broken"], byName["bad name"])
	}
	if _, err := e.c.Enqueue(e.ctx, "broken", Message{}); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("enqueue to a queue with a malformed config = %v", err)
	}
}

func TestUpdateNeverLowersPartitions(t *testing.T) {
	e := newEnv(t)
	e.create("u", Config{Partitions: 4})
	if err := e.c.Registry().Update(e.ctx, "u", Config{Partitions: 2}); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("lowering partitions = %v", err)
	}
	if err := e.c.Registry().Update(e.ctx, "u", Config{Partitions: 8, MaxSize: 5}); err != nil {
		t.Fatal(err)
	}
	cfg, _ := e.c.Registry().Get(e.ctx, "u")
	if cfg.Partitions != 8 || cfg.MaxSize != 5 {
		t.Fatalf("after update %+v", cfg)
	}
	if err := e.c.Registry().Delete(e.ctx, "u"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Registry().Get(e.ctx, "u"); !errors.Is(err, ErrUnknownQueue) {
		t.Fatalf("get after delete = %v", err)
	}
}

func errString[T any](_ T, err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// A per-message TTL under 1ms used to become 0 ms, which means "never
// expires"; it is refused and changes nothing. 1ms is the shortest TTL and
// expires.
func TestSubMillisecondTTLIsRefused(t *testing.T) {
	e := newEnv(t)
	e.create("ttl", Config{})
	before := e.snapshot()
	for _, ttl := range []time.Duration{time.Nanosecond, 500 * time.Microsecond, 999 * time.Microsecond, 366 * 24 * time.Hour} {
		if _, err := e.c.Enqueue(e.ctx, "ttl", Message{ID: "m", TTL: ttl}); !errors.Is(err, ErrBadMessage) || !strings.Contains(err.Error(), "ttl") {
			t.Errorf("enqueue with ttl %s = %v, want ErrBadMessage about the ttl", ttl, err)
		}
	}
	e.sameAs(before)
	e.enqueue("ttl", Message{ID: "m", TTL: time.Millisecond})
	info, err := e.c.Inspect(e.ctx, "ttl", "m")
	if err != nil || info.ExpiresAt.Sub(info.EnqueuedAt) != time.Millisecond {
		t.Fatalf("1ms ttl stored as %+v, %v", info, err)
	}
	waitUntil(t, 5*time.Second, "the 1ms ttl expires", func() bool {
		r, err := expirePass(e.n, e.ctx, Shard{"ttl", 0}, 1, 10)
		return err == nil && r.Moved == 1
	})
}
