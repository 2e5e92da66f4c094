package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// syncBuffer is a log sink tests read while the daemon writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startLogged starts the daemon with cfg in this process, its log in a
// buffer; it is shut down in Cleanup.
func startLogged(t *testing.T, cfg Config) (*daemon, *syncBuffer, error) {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{cfg: cfg, log: slog.New(slog.NewJSONHandler(logs, nil))}
	t.Cleanup(func() {
		cancel()
		d.shutdown()
	})
	return d, logs, d.start(ctx)
}

func runArgs(t *testing.T, redisAddr string, extra ...string) (Config, string) {
	t.Helper()
	es := etcdserver.StartTB(t)
	port, err := loopback.Port()
	if err != nil {
		t.Fatal(err)
	}
	health := loopback.Addr(port)
	cfg, err := loadConfig("run", append([]string{"--redis.addr", redisAddr, "--etcd.endpoints", es.Endpoints()[0],
		"--health_addr", health, "--metrics.disabled", "--etcd.session_ttl", "2s"}, extra...), nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, health
}

// A Redis whose maxmemory-policy may evict keys is refused at start, by
// name; with redis.allow_eviction: warn the keeper runs and says why it
// should not.
func TestRefusesRedisThatMayEvictAtStart(t *testing.T) {
	srv := redisserver.StartConfigTB(t, redisserver.Config{ExtraArgs: []string{"--maxmemory-policy", "allkeys-lru"}})
	cfg, _ := runArgs(t, srv.Addr)
	_, _, err := startLogged(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "allkeys-lru") || !strings.Contains(err.Error(), "noeviction") {
		t.Fatalf("keeper run on an allkeys-lru redis: %v; want a refusal naming the policy", err)
	}
	t.Logf("refused: %v", err)

	cfg, _ = runArgs(t, srv.Addr, "--redis.allow_eviction", "warn")
	_, logs, err := startLogged(t, cfg)
	if err != nil {
		t.Fatalf("keeper run with allow_eviction warn: %v", err)
	}
	if !strings.Contains(logs.String(), `"level":"WARN","msg":"redis may evict keys`) || !strings.Contains(logs.String(), "allkeys-lru") {
		t.Fatalf("no warning at start:\n%s", logs.String())
	}
}

// The policy is checked on every new connection: set to allkeys-lru under a
// running keeper, whose connections are then cut, every reconnect is
// refused (a clear log line, /readyz says why) and nothing is housekept;
// set back to noeviction, the keeper resumes by itself.
func TestRefusesEvictionOnReconnect(t *testing.T) {
	srv := redisserver.StartTB(t)
	cfg, health := runArgs(t, srv.Addr)
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = admin.Close() })
	ctx := context.Background()
	client := queue.NewClient(admin, queue.ClientOptions{})
	if err := client.Registry().Create(ctx, "ev", queue.Config{}); err != nil {
		t.Fatal(err)
	}
	_, logs, err := startLogged(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitOwnedShards(t, health, 1)
	locked := func() int64 {
		st, err := client.Stats(ctx, "ev")
		if err != nil {
			t.Fatal(err)
		}
		return st.Locked
	}
	if _, err := client.Enqueue(ctx, "ev", queue.Message{ID: "before", Delay: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 20*time.Second, "the first lock unlocked", func() (bool, string) {
		n := locked()
		return n == 0, fmt.Sprint(n, " locked")
	})

	if err := admin.ConfigSet(ctx, "maxmemory-policy", "allkeys-lru").Err(); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"normal", "pubsub"} {
		if err := admin.ClientKillByFilter(ctx, "TYPE", typ).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// From here no connection of the keeper is left, and every new one is
	// refused: nothing can move this lock.
	if _, err := client.Enqueue(ctx, "ev", queue.Message{ID: "during", Delay: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 20*time.Second, "/readyz reporting the refusal", func() (bool, string) {
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(b), "allkeys-lru"), string(b)
	})
	if !strings.Contains(logs.String(), "refusing a redis connection") {
		t.Fatalf("no log line for the refusal:\n%s", logs.String())
	}
	if n := locked(); n != 1 {
		t.Fatalf("%d locked while every connection is refused; want the lock left alone", n)
	}

	if err := admin.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 30*time.Second, "the keeper resuming", func() (bool, string) {
		n := locked()
		return n == 0, fmt.Sprint(n, " locked")
	})
}
