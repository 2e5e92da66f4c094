package deckardtest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

func newServer(t *testing.T) (*Server, redis.UniversalClient) {
	t.Helper()
	srv := redisserver.StartTB(t)
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{srv.Addr}})
	t.Cleanup(func() { _ = rdb.Close() })
	return New(rdb, ""), rdb
}

// fixed is a pod clock stopped at ms.
func fixed(ms int64) func() time.Time { return func() time.Time { return time.UnixMilli(ms) } }

func scores(t *testing.T, rdb redis.UniversalClient, key string) map[string]float64 {
	t.Helper()
	zs, err := rdb.ZRangeWithScores(context.Background(), key, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, z := range zs {
		out[z.Member.(string)] = z.Score
	}
	return out
}

func TestPrefix(t *testing.T) {
	for in, want := range map[string]string{"": DefaultPrefix, "  ": DefaultPrefix, ":": DefaultPrefix,
		":p:": "p", " :p: ": "p", "p": "p", "a:b": "a:b", "::a::": "a", ": p :": " p "} {
		if got := Prefix(in); got != want {
			t.Errorf("Prefix(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOperations(t *testing.T) {
	ctx := context.Background()
	s, rdb := newServer(t)
	s.SetClock(fixed(1_000_000))
	k := s.Keys("q")
	if k.LockAckScore != "deckard_v1:queue:{q}:lock_ack:score" || k.Tmp != "deckard_v1:queue:{q}:tmp" {
		t.Fatalf("keys %+v", k)
	}
	added, err := s.Add(ctx, "q", Message{ID: "a"}, Message{ID: "b", Score: 5}, Message{ID: "c", Score: -3},
		Message{ID: "d", Score: 2 * MaxScore})
	if err != nil || len(added) != 4 {
		t.Fatalf("add = %v, %v", added, err)
	}
	want := map[string]float64{"a": 1_000_000, "b": 5, "c": 0, "d": MaxScore}
	if got := scores(t, rdb, k.Ready); !mapsEqual(got, want) {
		t.Fatalf("ready %v, want %v", got, want)
	}
	// Pull takes the lowest scores; the deadline is the pod's clock + ack.
	ids, err := s.Pull(ctx, "q", 2, Pull{AckDeadline: time.Second})
	if err != nil || !slices.Equal(ids, []string{"c", "b"}) {
		t.Fatalf("pull = %v, %v", ids, err)
	}
	if got := scores(t, rdb, k.Tmp); !mapsEqual(got, map[string]float64{"b": 1_001_000, "c": 1_001_000}) {
		t.Fatalf("tmp %v", got)
	}
	// A re-add of an id in any pool changes nothing.
	if added, _ := s.Add(ctx, "q", Message{ID: "c", Score: 9}, Message{ID: "a", Score: 9}); len(added) != 0 {
		t.Fatalf("re-add added %v", added)
	}
	// Ack with a lock and a score; nack with a lock and none.
	if ok, err := s.Ack(ctx, "q", "c", Reply{Lock: time.Minute, Score: 42}); !ok || err != nil {
		t.Fatalf("ack lock = %v, %v", ok, err)
	}
	if ok, err := s.Nack(ctx, "q", "b", Reply{Lock: 2 * time.Minute}); !ok || err != nil {
		t.Fatalf("nack lock = %v, %v", ok, err)
	}
	if ok, _ := s.Nack(ctx, "q", "b", Reply{}); ok {
		t.Fatal("nack of an id no longer in tmp moved it")
	}
	if got := scores(t, rdb, k.LockAck); !mapsEqual(got, map[string]float64{"c": 1_060_000}) {
		t.Fatalf("lock_ack %v", got)
	}
	if got := scores(t, rdb, k.LockAckScore); !mapsEqual(got, map[string]float64{"c": 42}) {
		t.Fatalf("lock_ack:score %v", got)
	}
	if got := scores(t, rdb, k.LockNack); !mapsEqual(got, map[string]float64{"b": 1_120_000}) {
		t.Fatalf("lock_nack %v", got)
	}
	if n, _ := rdb.Exists(ctx, k.LockNackScore).Result(); n != 0 {
		t.Fatal("a nack without a score saved one")
	}
	// Without a lock: ack with the score given, else now; nack always 0.
	s.SetClock(fixed(2_000_000))
	ids, _ = s.Pull(ctx, "q", 2, Pull{})
	if !slices.Equal(ids, []string{"a", "d"}) {
		t.Fatalf("second pull %v", ids)
	}
	if got := scores(t, rdb, k.Tmp); got["a"] != 2_000_000+float64(DefaultAckDeadline.Milliseconds()) {
		t.Fatalf("default ack deadline: tmp %v", got)
	}
	_, _ = s.Ack(ctx, "q", "a", Reply{})
	_, _ = s.Nack(ctx, "q", "d", Reply{Score: 77})
	if got := scores(t, rdb, k.Ready); !mapsEqual(got, map[string]float64{"a": 2_000_000, "d": 0}) {
		t.Fatalf("ready after ack/nack %v", got)
	}
	ids, _ = s.Pull(ctx, "q", 1, Pull{Min: ptr(1.0), Max: ptr(3_000_000.0)})
	if !slices.Equal(ids, []string{"a"}) {
		t.Fatalf("ranged pull %v", ids)
	}
	_, _ = s.Ack(ctx, "q", "a", Reply{Score: 11})
	if got := scores(t, rdb, k.Ready); got["a"] != 11 {
		t.Fatalf("ack with a score: ready %v", got)
	}
	// Remove clears all six keys.
	if n, err := s.Remove(ctx, "q", "a", "b", "c", "d"); err != nil || n != 5 {
		t.Fatalf("remove = %d, %v (a, d ready; b lock_nack; c lock_ack and its score)", n, err)
	}
	if n, _ := rdb.Exists(ctx, k.All()...).Result(); n != 0 {
		t.Fatalf("%d keys left after remove", n)
	}
	if _, err := s.Add(ctx, "a{b", Message{ID: "x"}); !errors.Is(err, ErrBadQueue) {
		t.Fatalf("brace in a queue name: %v", err)
	}
}

func TestDiscoveryAndFlush(t *testing.T) {
	ctx := context.Background()
	s, rdb := newServer(t)
	for _, q := range []string{"a", "b::c", "d:e"} {
		if _, err := s.Add(ctx, q, Message{ID: "1"}, Message{ID: "2"}); err != nil {
			t.Fatal(err)
		}
	}
	_, _ = s.Pull(ctx, "b::c", 1, Pull{})
	ids, _ := s.Pull(ctx, "d:e", 1, Pull{})
	_, _ = s.Nack(ctx, "d:e", ids[0], Reply{Lock: time.Minute, Score: 3})
	_ = rdb.Set(ctx, "other:key", "1", 0).Err()
	_ = rdb.Set(ctx, "deckard_v1:{recovery}", "1", 0).Err()
	p := s.Patterns()
	for pattern, want := range map[string][]string{p[1]: {"a", "b::c", "d:e"}, p[2]: {"b::c"}, p[4]: {"d:e"}, p[3]: nil} {
		got, err := s.Queues(ctx, pattern)
		slices.Sort(got)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("queues of %s = %v, %v; want %v", pattern, got, err, want)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if keys, _ := rdb.Keys(ctx, "*").Result(); !slices.Equal(keys, []string{"other:key"}) {
		t.Fatalf("after flush: %v", keys)
	}
}

func mapsEqual(a, b map[string]float64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func ptr[T any](v T) *T { return &v }
