package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
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
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd with authentication on: the daemon's client logs in with the user
// and the password read from a file (never a flag), and a wrong password is
// a clear error.
func TestEtcdAuthFromPasswordFile(t *testing.T) {
	srv := etcdserver.StartTB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, step := range []func() error{
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "keeper", "s3cret"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "keeper", "root"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "etcd-password")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig("run", []string{"--etcd.endpoints", srv.Endpoints()[0], "--etcd.username", "keeper",
		"--etcd.password_file", pw}, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{cfg: cfg, log: newLogger("error")}
	if err := d.startEtcd(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.etcd.Close()
	if _, err := d.etcd.Put(ctx, "/keeper/auth-check", "ok"); err != nil {
		t.Fatalf("authenticated put: %v", err)
	}
	cfg.Etcd.Password = "wrong"
	bad := &daemon{cfg: cfg, log: newLogger("error")}
	err = bad.startEtcd(ctx)
	if err == nil {
		defer bad.etcd.Close()
		_, err = bad.etcd.Put(ctx, "/keeper/auth-check", "no")
	}
	if err == nil {
		t.Fatal("a wrong etcd password was accepted")
	}
	t.Logf("wrong password: %v", err)
}

// A keeper started while etcd and Redis are both unreachable waits for them
// rather than failing: /healthz answers at once (a liveness probe must not
// restart a process that is only waiting), /readyz names both problems, and
// once the servers come up on their addresses the keeper joins the fleet,
// takes the queue's shards and housekeeps them.
func TestStartsWhileEtcdAndRedisAreDown(t *testing.T) {
	ports, err := loopback.Ports(3)
	if err != nil {
		t.Fatal(err)
	}
	etcdPort, redisPort, healthAddr := ports[0], ports[1], loopback.Addr(ports[2])
	cfg, err := loadConfig("run", []string{"--etcd.endpoints", loopback.Addr(etcdPort),
		"--redis.addr", loopback.Addr(redisPort), "--health_addr", healthAddr,
		"--metrics.disabled", "--etcd.session_ttl", "2s", "--log_level", "error"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{cfg: cfg, log: newLogger("error")}
	started := make(chan error, 1)
	go func() { started <- d.start(ctx) }()
	// The daemon must stop before the servers it talks to, and cleanups run
	// last-registered first: stopDaemon is registered again after the
	// servers start.
	stopDaemon := sync.OnceFunc(func() {
		cancel()
		<-started
		d.shutdown()
	})
	t.Cleanup(stopDaemon)

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + healthAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	poll.For(t, 20*time.Second, "/healthz while waiting for etcd and Redis", func() (bool, string) {
		code, body := get("/healthz")
		return code == http.StatusOK, body
	})
	code, body := get("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "redis: ") || !strings.Contains(body, "etcd: ") {
		t.Fatalf("/readyz = %d %s; want 503 naming redis and etcd", code, body)
	}
	t.Logf("/readyz while both are down: %s", strings.TrimSpace(body))

	rs := redisserver.StartConfigTB(t, redisserver.Config{Port: redisPort})
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	client := queue.NewClient(rdb, queue.ClientOptions{})
	if err := client.Registry().Create(ctx, "orders", queue.Config{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	es, err := etcdserver.Start(ctx, etcdserver.Config{ClientPort: etcdPort})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = es.Stop() })
	t.Cleanup(stopDaemon)
	etcdUp := time.Now()

	select {
	case err := <-started:
		started <- err // for stopDaemon
		if err != nil {
			t.Fatalf("start after etcd and Redis came up: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("keeper did not join the fleet within 60s of etcd coming up")
	}
	t.Logf("joined the fleet %s after etcd came up", time.Since(etcdUp).Round(time.Millisecond))
	poll.For(t, 30*time.Second, "ready, owning both shards", func() (bool, string) {
		if code, body := get("/readyz"); code != http.StatusOK {
			return false, body
		}
		var st struct {
			OwnedShards int `json:"owned_shards"`
		}
		_, body := get("/status")
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			return false, body
		}
		return st.OwnedShards == 2, body
	})

	// Housekeeping runs: a lease left to expire comes back to ready.
	if _, err := client.Enqueue(ctx, "orders", queue.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	ds, err := client.Pull(ctx, "orders", 1, 100*time.Millisecond)
	if err != nil || len(ds) != 1 {
		t.Fatalf("pull: %v %v", ds, err)
	}
	poll.For(t, 10*time.Second, "expired lease requeued by the keeper", func() (bool, string) {
		st, err := client.Stats(ctx, "orders")
		if err != nil {
			return false, err.Error()
		}
		return st.Ready == 1 && st.Inflight == 0, fmt.Sprintf("ready %d inflight %d", st.Ready, st.Inflight)
	})
}
