package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/internal/testpki"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
	"github.com/keeperhq/keeper/tasks"
	"github.com/redis/go-redis/v9"
	"go.etcd.io/etcd/client/pkg/v3/transport"
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
	// /status counts the commands the keeper sent to Redis (what `keeper
	// bench scaleout` reads per keeper).
	var st struct {
		RedisCommands int64 `json:"redis_commands"`
	}
	if _, body := get("/status"); json.Unmarshal([]byte(body), &st) != nil || st.RedisCommands <= 0 {
		t.Fatalf("/status counts no redis commands: %s", body)
	}
}

// The daemon against an etcd that requires client certificates and a Redis
// that requires TLS, a client certificate and a password, all from one
// config file: it joins, owns the queue's shards and housekeeps them over
// TLS, and `keeper status` with the same file reads the fleet.
func TestRunOverTLS(t *testing.T) {
	pki := testpki.NewTB(t)
	es := etcdserver.StartConfigTB(t, etcdserver.Config{ClientTLS: &transport.TLSInfo{CertFile: pki.ServerCert,
		KeyFile: pki.ServerKey, TrustedCAFile: pki.CAFile, ClientCertAuth: true}})
	rs := redisserver.StartConfigTB(t, redisserver.Config{
		TLS:       &redisserver.TLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, CAFile: pki.CAFile, AuthClients: true},
		ExtraArgs: []string{"--requirepass", "s3cret"},
	})
	port, err := loopback.Port()
	if err != nil {
		t.Fatal(err)
	}
	healthAddr := loopback.Addr(port)
	dir := t.TempDir()
	pw := filepath.Join(dir, "redis-password")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "keeper.yaml")
	yaml := fmt.Sprintf(`health_addr: %s
log_level: error
metrics: {disabled: true}
redis:
  addr: %s
  tls: true
  ca_file: %s
  cert_file: %s
  key_file: %s
  password_file: %s
etcd:
  endpoints: [%s]
  session_ttl: 2s
  ca_file: %s
  cert_file: %s
  key_file: %s
queues:
  secure: {partitions: 2}
`, healthAddr, rs.TLSAddr, pki.CAFile, pki.ClientCert, pki.ClientKey, pw, es.Endpoints()[0],
		pki.CAFile, pki.ClientCert, pki.ClientKey)
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig("run", []string{"--config", file}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	startDaemonTB(t, cfg)
	waitOwnedShards(t, healthAddr, 2)

	// Producers reach the same Redis with the same settings.
	rdb, err := redisClient(cfg.Redis, []string{cfg.Redis.Addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	client := queue.NewClient(rdb, queue.ClientOptions{})
	if _, err := client.Enqueue(ctx, "secure", queue.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if ds, err := client.Pull(ctx, "secure", 1, 100*time.Millisecond); err != nil || len(ds) != 1 {
		t.Fatalf("pull: %v %v", ds, err)
	}
	waitAllReady(t, client, "secure", 1)

	var out bytes.Buffer
	if err := statusCmd([]string{"--config", file, "--json"}, &out); err != nil {
		t.Fatalf("keeper status over TLS: %v", err)
	}
	var st shard.Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if len(st.Members) != 1 || len(st.Members[0].Shards) != 2 || len(st.UnownedShards) != 0 {
		t.Fatalf("status over TLS: %s", out.String())
	}
}

// startDaemonTB starts `keeper run` with cfg in this process, waits until it
// has joined the fleet, and shuts it down in Cleanup.
func startDaemonTB(t *testing.T, cfg Config) *daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{cfg: cfg, log: newLogger("error")}
	t.Cleanup(func() {
		cancel()
		d.shutdown()
	})
	if err := d.start(ctx); err != nil {
		t.Fatalf("keeper run: %v", err)
	}
	return d
}

// waitOwnedShards polls the daemon's /status until it owns n shards.
func waitOwnedShards(t *testing.T, healthAddr string, n int) {
	t.Helper()
	poll.For(t, 30*time.Second, fmt.Sprintf("owning %d shards", n), func() (bool, string) {
		resp, err := http.Get("http://" + healthAddr + "/status")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var st struct {
			OwnedShards int `json:"owned_shards"`
		}
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &st); err != nil {
			return false, string(b)
		}
		return st.OwnedShards == n, string(b)
	})
}

// waitAllReady polls until the keeper has brought every message of q back
// to ready: want ready, nothing in flight or locked.
func waitAllReady(t *testing.T, client *queue.Client, q string, want int64) {
	t.Helper()
	poll.For(t, 20*time.Second, "leases and locks returned to ready by the keeper", func() (bool, string) {
		st, err := client.Stats(context.Background(), q)
		if err != nil {
			return false, err.Error()
		}
		return st.Ready == want && st.Inflight == 0 && st.Locked == 0,
			fmt.Sprintf("ready %d inflight %d locked %d", st.Ready, st.Inflight, st.Locked)
	})
}

// The daemon on a Redis Cluster of three primaries (several addresses make
// a cluster client): a queue whose partitions land on different nodes is
// owned, its expired leases and locks come back to ready on every node, the
// audit finds nothing wrong, and `keeper queue stats` reads it through the
// same address list.
func TestRunOnRedisCluster(t *testing.T) {
	cluster := redisserver.StartClusterTB(t, 3)
	es := etcdserver.StartTB(t)
	port, err := loopback.Port()
	if err != nil {
		t.Fatal(err)
	}
	healthAddr := loopback.Addr(port)
	addrs := strings.Join(cluster.Addrs(), ",")
	cfg, err := loadConfig("run", []string{"--redis.addr", addrs, "--etcd.endpoints", es.Endpoints()[0],
		"--health_addr", healthAddr, "--metrics.disabled", "--etcd.session_ttl", "2s", "--log_level", "error"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rdb, err := redisClient(cfg.Redis, cluster.Addrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	if _, ok := rdb.(*redis.ClusterClient); !ok {
		t.Fatalf("three addresses made a %T, not a cluster client", rdb)
	}
	client := queue.NewClient(rdb, queue.ClientOptions{})
	const partitions = 6
	if err := client.Registry().Create(ctx, "spread", queue.Config{Partitions: partitions}); err != nil {
		t.Fatal(err)
	}
	// The partitions' hash tags must land on more than one node, or this
	// test would prove nothing about routing.
	nodes := map[string]bool{}
	for p := 0; p < partitions; p++ {
		key := fmt.Sprintf("%s:{spread#%d}:ready", queue.DefaultPrefix, p)
		node, err := rdb.(*redis.ClusterClient).MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		nodes[node.Options().Addr] = true
	}
	if len(nodes) < 2 {
		t.Fatalf("all %d partitions hash to one node", partitions)
	}

	startDaemonTB(t, cfg)
	waitOwnedShards(t, healthAddr, partitions)

	const msgs = 60
	for i := 0; i < msgs; i++ {
		if _, err := client.Enqueue(ctx, "spread", queue.Message{Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	ds, err := client.Pull(ctx, "spread", 40, time.Second)
	if err != nil || len(ds) < partitions {
		t.Fatalf("pull: %d deliveries, %v", len(ds), err)
	}
	for _, d := range ds[:len(ds)/2] {
		if _, err := client.Nack(ctx, d, queue.NackOptions{LockFor: 150 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	waitAllReady(t, client, "spread", msgs)
	a, err := client.Audit(ctx, "spread")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 || a.Present() != msgs {
		t.Fatalf("audit: %d present, problems %v", a.Present(), a.Problems)
	}
	st, err := client.Stats(ctx, "spread")
	if err != nil {
		t.Fatal(err)
	}
	// Every nacked message was unlocked by the keeper and every other pulled
	// one requeued, on whichever node its partition lives.
	nacked := int64(len(ds) / 2)
	if st.Counters.Unlocked != nacked || st.Counters.Requeued != int64(len(ds))-nacked {
		t.Fatalf("counters %v; want unlocked %d, requeued %d", st.Counters, nacked, int64(len(ds))-nacked)
	}
	out, err := queueRun(nil, "stats", "spread", "--redis", addrs)
	if err != nil || !regexp.MustCompile(fmt.Sprintf(`(?m)^total\s+%d\s`, msgs)).MatchString(out) {
		t.Fatalf("keeper queue stats on the cluster: %v\n%s", err, out)
	}
}

// After etcd's data is reset, revisions restart below the fences in Redis
// and every claim is refused: the keeper keeps the shards dropped (fence
// refusals counted, nothing housekept), `keeper queue reset-fences` clears
// the fences, and the keeper resumes by itself within etcd.fence_retry.
func TestRecoveryAfterEtcdReset(t *testing.T) {
	rs := redisserver.StartTB(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	client := queue.NewClient(rdb, queue.ClientOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := client.Registry().Create(ctx, "orders", queue.Config{Partitions: 2}); err != nil {
		t.Fatal(err)
	}
	ports, err := loopback.Ports(3)
	if err != nil {
		t.Fatal(err)
	}
	healthAddr, promAddr, closed := loopback.Addr(ports[0]), loopback.Addr(ports[1]), loopback.Addr(ports[2])
	config := func(etcd *etcdserver.Server) Config {
		cfg, err := loadConfig("run", []string{"--redis.addr", rs.Addr, "--etcd.endpoints", etcd.Endpoints()[0],
			"--health_addr", healthAddr, "--metrics.prometheus_addr", promAddr, "--metrics.endpoint", "http://" + closed,
			"--etcd.session_ttl", "2s", "--etcd.fence_retry", "1s", "--log_level", "error"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	fences := func() []int64 {
		st, err := client.Stats(ctx, "orders")
		if err != nil {
			t.Fatal(err)
		}
		var fs []int64
		for _, s := range st.Shards {
			fs = append(fs, s.Fence)
		}
		return fs
	}

	// The old etcd has seen some history, so its tokens are high.
	old := etcdserver.StartTB(t)
	oldCli, err := clientv3.New(clientv3.Config{Endpoints: old.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		if _, err := oldCli.Put(ctx, "/history", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	_ = oldCli.Close()
	first := &daemon{cfg: config(old), log: newLogger("error")}
	stopFirst := sync.OnceFunc(first.shutdown)
	t.Cleanup(stopFirst)
	if err := first.start(ctx); err != nil {
		t.Fatal(err)
	}
	waitOwnedShards(t, healthAddr, 2)
	poll.For(t, 10*time.Second, "both fences set from the old etcd's tokens", func() (bool, string) {
		fs := fences()
		return fs[0] > 300 && fs[1] > 300, fmt.Sprint(fs)
	})
	before := fences()
	stopFirst()
	_ = old.Stop()

	// A new, empty etcd: its revisions start again at 1.
	fresh := etcdserver.StartTB(t)
	if _, err := client.Enqueue(ctx, "orders", queue.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if ds, err := client.Pull(ctx, "orders", 1, 100*time.Millisecond); err != nil || len(ds) != 1 {
		t.Fatalf("pull: %v %v", ds, err)
	}
	startDaemonTB(t, config(fresh))
	refusals := func() (float64, string) {
		resp, err := http.Get("http://" + promAddr + "/metrics")
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		ss, err := otelcol.ParseText(resp.Body)
		if err != nil {
			return 0, err.Error()
		}
		var n float64
		for _, s := range otelcol.Select(ss, "keeper_fence_refusals_total", map[string]string{"queue": "orders"}) {
			n += s.Value
		}
		return n, fmt.Sprintf("%v refusals", n)
	}
	poll.For(t, 30*time.Second, "both shards refused by the fences", func() (bool, string) {
		n, why := refusals()
		return n >= 2, why
	})
	// Refused writes changed nothing: the fences are the old ones and the
	// expired lease is still in flight.
	if fs := fences(); fs[0] != before[0] || fs[1] != before[1] {
		t.Fatalf("fences moved from %v to %v under refused tokens", before, fs)
	}
	if st, err := client.Stats(ctx, "orders"); err != nil || st.Inflight != 1 {
		t.Fatalf("inflight %d (%v); the refused keeper must not have requeued", st.Inflight, err)
	}

	out, err := queueRun(nil, "reset-fences", "orders", "--redis", rs.Addr)
	if err != nil || !strings.Contains(out, fmt.Sprint(before[0])) || !strings.Contains(out, fmt.Sprint(before[1])) {
		t.Fatalf("reset-fences: %v\n%s", err, out)
	}
	reset := time.Now()
	waitAllReady(t, client, "orders", 1)
	t.Logf("housekeeping resumed %s after reset-fences (fence_retry 1s)", time.Since(reset).Round(time.Millisecond))
	if fs := fences(); fs[0] == 0 || fs[0] >= 300 || fs[1] == 0 || fs[1] >= 300 {
		t.Fatalf("fences after recovery %v; want the new etcd's (low) tokens", fs)
	}
}

// keeper run with every bounded setting at the end of its range that costs
// most (the most ring partitions and workers, the shortest intervals and
// shutdown budget) owns its shards, housekeeps them and hands them over.
func TestRunAtTheLimits(t *testing.T) {
	rs := redisserver.StartTB(t)
	es := etcdserver.StartTB(t)
	port, err := loopback.Port()
	if err != nil {
		t.Fatal(err)
	}
	healthAddr := loopback.Addr(port)
	cfg, err := loadConfig("run", []string{"--redis.addr", rs.Addr, "--etcd.endpoints", es.Endpoints()[0],
		"--health_addr", healthAddr, "--metrics.disabled", "--log_level", "error",
		"--ring.partitions", fmt.Sprint(shard.MaxUnits), "--tasks.workers", "256",
		"--tasks.measure_interval", "100ms", "--tasks.sweep_interval", "1s", "--tasks.catalog_interval", "1s",
		"--etcd.session_ttl", "2s", "--etcd.fence_retry", "1s", "--shutdown_timeout", "10s"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	client := queue.NewClient(rdb, queue.ClientOptions{})
	if err := client.Registry().Create(ctx, "edge", queue.Config{Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	d := &daemon{cfg: cfg, log: newLogger("error")}
	stop := sync.OnceFunc(d.shutdown)
	t.Cleanup(stop)
	if err := d.start(ctx); err != nil {
		t.Fatal(err)
	}
	waitOwnedShards(t, healthAddr, 4)
	for i := 0; i < 8; i++ {
		if _, err := client.Enqueue(ctx, "edge", queue.Message{Payload: []byte("x"), Delay: 50 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	waitAllReady(t, client, "edge", 8)
	start := time.Now()
	stop()
	t.Logf("shutdown took %s", time.Since(start).Round(time.Millisecond))
	cli, err := clientv3.New(clientv3.Config{Endpoints: es.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if resp, err := cli.Get(ctx, cfg.Etcd.Prefix+"owners/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || resp.Count != 0 {
		t.Fatalf("ownership keys after shutdown: %v %v", resp, err)
	}
}

// The daemon's Redis pool holds every worker's round trip and every claim
// pipeline at once, with room to spare, up to the most workers the config
// accepts: a pass must not wait for a connection while a takeover's claims
// hold them.
func TestRedisPoolHoldsWorkersAndClaims(t *testing.T) {
	var most int64
	for _, l := range limits {
		if l.path == "tasks.workers" {
			most = l.max
		}
	}
	if most == 0 {
		t.Fatal("no limit on tasks.workers")
	}
	for _, workers := range []int{1, tasks.WorkersDefault, int(most)} {
		if got, need := redisPoolSize(workers), workers+tasks.ProbePipelines; got <= need {
			t.Errorf("workers %d: pool of %d connections, want more than %d", workers, got, need)
		}
	}
}
