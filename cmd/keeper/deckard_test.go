package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keeperhq/keeper/chaos"
	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue/deckardtest"
)

// deckardFleet is a Deckard deployment's Redis, an etcd, and keeper
// processes with redis.layout deckard beside them.
type deckardFleet struct {
	t      *testing.T
	ctx    context.Context
	bin    string
	es     *etcdserver.Server
	addr   string // redis.addr: one server, or every primary of a cluster
	rdb    redis.UniversalClient
	pod    *deckardtest.Server
	logDir string
}

func newDeckardFleet(t *testing.T, prefix string) *deckardFleet {
	return newDeckardFleetOn(t, prefix, 0)
}

// newDeckardFleetOn is a deckardFleet on one redis-server (primaries 0) or
// on a Redis Cluster of that many primaries.
func newDeckardFleetOn(t *testing.T, prefix string, primaries int) *deckardFleet {
	t.Helper()
	bin, err := chaos.KeeperBinary()
	if err != nil {
		t.Fatal(err)
	}
	f := &deckardFleet{t: t, bin: bin, logDir: t.TempDir()}
	var cancel context.CancelFunc
	f.ctx, cancel = context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	f.es = etcdserver.StartTB(t)
	var addrs []string
	if primaries > 0 {
		addrs = redisserver.StartClusterTB(t, primaries).Addrs()
	} else {
		addrs = []string{redisserver.StartTB(t).Addr}
	}
	f.addr = strings.Join(addrs, ",")
	f.rdb = redis.NewUniversalClient(&redis.UniversalOptions{Addrs: addrs})
	t.Cleanup(func() { _ = f.rdb.Close() })
	f.pod = deckardtest.New(f.rdb, prefix)
	return f
}

// start runs `keeper run --redis.layout deckard` with args after the
// fleet's own.
func (f *deckardFleet) start(id string, args ...string) *keeperProc {
	f.t.Helper()
	port, err := loopback.Port()
	if err != nil {
		f.t.Fatal(err)
	}
	k := spawnKeeper(f.t, f.bin, filepath.Join(f.logDir, id+".log"), loopback.Addr(port), nil,
		append([]string{"run", "--member_id", id, "--redis.layout", "deckard",
			"--redis.addr", f.addr, "--etcd.endpoints", f.es.Endpoints()[0], "--etcd.session_ttl", "2s",
			"--health_addr", loopback.Addr(port), "--metrics.disabled", "--deckard.discovery_interval", "1s",
			"--log_level", "info"}, args...)...)
	f.t.Cleanup(func() {
		if _, err := k.term(20 * time.Second); err != nil && !errors.Is(err, os.ErrProcessDone) {
			f.t.Logf("%s: %v", id, err)
		}
		if f.t.Failed() {
			f.t.Logf("%s log:\n%s", id, tail(k.logPath, 40))
		}
	})
	return k
}

func (f *deckardFleet) must(err error) {
	f.t.Helper()
	if err != nil {
		f.t.Fatal(err)
	}
}

// scores reads a sorted set.
func (f *deckardFleet) scores(key string) map[string]float64 {
	f.t.Helper()
	zs, err := f.rdb.ZRangeWithScores(f.ctx, key, 0, -1).Result()
	f.must(err)
	out := map[string]float64{}
	for _, z := range zs {
		out[z.Member.(string)] = z.Score
	}
	return out
}

// keeperStatus is a keeper's /status.
func keeperStatus(t *testing.T, health string) (map[string]any, error) {
	t.Helper()
	resp, err := http.Get("http://" + health + "/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var st map[string]any
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%w: %s", err, b)
	}
	return st, nil
}

// Two `keeper run` processes with redis.layout deckard and Deckard's
// default prefix housekeep Deckard's keys with nothing else configured:
// they discover the queue, return its timed-out id with score 0 and its
// locked ids with the saved score or the default, find a queue created
// while they run, and say which wake mode they run in and which layout.
func TestRunDeckardEndToEnd(t *testing.T) {
	f := newDeckardFleet(t, "")
	ctx := f.ctx
	keys := f.pod.Keys("orders")
	_, err := f.pod.Add(ctx, "orders", deckardtest.Message{ID: "acked"}, deckardtest.Message{ID: "nacked"},
		deckardtest.Message{ID: "pulled"})
	f.must(err)
	// Deadlines an hour ago by the pod's clock: due at once for keeper.
	f.pod.SetClock(func() time.Time { return time.Now().Add(-time.Hour) })
	_, err = f.pod.Pull(ctx, "orders", 3, deckardtest.Pull{AckDeadline: time.Second})
	f.must(err)
	_, err = f.pod.Ack(ctx, "orders", "acked", deckardtest.Reply{Lock: time.Second, Score: 7})
	f.must(err)
	_, err = f.pod.Nack(ctx, "orders", "nacked", deckardtest.Reply{Lock: time.Second})
	f.must(err)
	f.pod.SetClock(time.Now)
	_, err = f.pod.Add(ctx, "orders", deckardtest.Message{ID: "waiting", Score: 5})
	f.must(err)

	ks := []*keeperProc{f.start("dk-0"), f.start("dk-1")}
	poll.For(t, 30*time.Second, "orders housekept", func() (bool, string) {
		got := f.scores(keys.Ready)
		ok := len(got) == 4 && got["acked"] == 7 && got["nacked"] == 0 && got["pulled"] == 0 && got["waiting"] == 5
		return ok, fmt.Sprint(got)
	})
	if n, _ := f.rdb.Exists(ctx, keys.Tmp, keys.LockAck, keys.LockNack, keys.LockAckScore).Result(); n != 0 {
		t.Fatalf("%d pool keys left", n)
	}

	// A queue that appears while the fleet runs: its lease expires 300ms
	// after the pull, and the keepers return it.
	late := f.pod.Keys("late::q")
	_, err = f.pod.Add(ctx, "late::q", deckardtest.Message{ID: "x", Score: 1})
	f.must(err)
	_, err = f.pod.Pull(ctx, "late::q", 1, deckardtest.Pull{AckDeadline: 300 * time.Millisecond})
	f.must(err)
	poll.For(t, 30*time.Second, "late::q housekept", func() (bool, string) {
		got := f.scores(late.Ready)
		return len(got) == 1 && got["x"] == 0, fmt.Sprint(got)
	})
	owned := 0
	for _, k := range ks {
		st, err := keeperStatus(t, k.health)
		if err != nil {
			t.Fatal(err)
		}
		if st["layout"] != "deckard" {
			t.Fatalf("/status layout %v", st["layout"])
		}
		owned += int(st["owned_shards"].(float64))
		b, _ := os.ReadFile(k.logPath)
		if !strings.Contains(string(b), "wake-ups by keyspace notifications") {
			t.Fatalf("the keeper did not say its wake mode:\n%s", tail(k.logPath, 20))
		}
	}
	if owned != 2 {
		t.Fatalf("the keepers own %d queues, want 2", owned)
	}

	// keeper status names the layout and the discovered set, and counts
	// the Deckard queues as shards, all owned.
	var out strings.Builder
	if err := statusCmd([]string{"--etcd.endpoints", f.es.Endpoints()[0], "--redis.addr", f.addr,
		"--redis.layout", "deckard"}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"layout      deckard (redis prefix deckard_v1); 2 queues discovered", "shards      2 (0 unowned)"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("keeper status does not say %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := statusCmd([]string{"--etcd.endpoints", f.es.Endpoints()[0], "--json"}, &out); err != nil {
		t.Fatal(err)
	}
	var st struct {
		Layout     string `json:"layout"`
		Shards     int    `json:"shards"`
		Discovered struct {
			Queues int `json:"queues"`
		} `json:"discovered"`
	}
	if err := json.Unmarshal([]byte(out.String()), &st); err != nil || st.Layout != "deckard" || st.Discovered.Queues != 2 {
		t.Fatalf("keeper status --json without the layout configured: %+v, %v\n%s", st, err, out.String())
	}

	// keeper queue list|stats|inspect read Deckard's queues and keeper's
	// counters for them.
	env := []string{"KEEPER_REDIS_ADDR=" + f.addr, "KEEPER_REDIS_LAYOUT=deckard"}
	q := func(args ...string) string {
		t.Helper()
		out, err := queueRun(env, args...)
		if err != nil {
			t.Fatalf("keeper queue %v: %v\n%s", args, err, out)
		}
		return out
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(q("list", "--json")), &rows); err != nil || len(rows) != 2 ||
		rows[0]["queue"] != "late::q" || rows[1]["queue"] != "orders" || rows[1]["ready"].(float64) != 4 {
		t.Fatalf("queue list: %v, %v", rows, err)
	}
	var stats struct {
		Ready    int64 `json:"ready"`
		Fence    int64 `json:"fence"`
		Owner    string
		Counters map[string]int64 `json:"counters"`
	}
	if err := json.Unmarshal([]byte(q("stats", "orders", "--json")), &stats); err != nil || stats.Ready != 4 ||
		stats.Fence == 0 || stats.Counters["unlocked_ack"] != 1 || stats.Counters["unlocked_nack"] != 1 ||
		stats.Counters["requeued"] != 1 {
		t.Fatalf("queue stats: %+v, %v", stats, err)
	}
	if text := q("stats", "orders"); !strings.Contains(text, "timed_out      1") {
		t.Fatalf("queue stats text:\n%s", text)
	}
	if text := q("inspect", "orders", "acked"); !strings.Contains(text, "ready  7") {
		t.Fatalf("queue inspect:\n%s", text)
	}
	if _, err := queueRun(env, "inspect", "orders", "nobody"); err == nil || !strings.Contains(err.Error(), "in no pool") {
		t.Fatalf("inspect of an unknown id: %v", err)
	}
	if _, err := queueRun(env, "create", "x"); err == nil || !strings.Contains(err.Error(), "not with the deckard layout") {
		t.Fatalf("queue create with the deckard layout: %v", err)
	}
}

// spawnKeeper runs bin with args (and env added to the test's), its output
// in logPath, killed with the test at the latest.
func spawnKeeper(t *testing.T, bin, logPath, health string, env []string, args ...string) *keeperProc {
	t.Helper()
	k := &keeperProc{logPath: logPath, health: health, exited: make(chan error, 1)}
	logFile, err := os.Create(k.logPath)
	if err != nil {
		t.Fatal(err)
	}
	k.cmd = exec.Command(bin, args...)
	k.cmd.Env = append(os.Environ(), env...)
	k.cmd.Stdout, k.cmd.Stderr = logFile, logFile
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { k.exited <- k.cmd.Wait(); _ = logFile.Close() }()
	t.Cleanup(func() { _ = k.cmd.Process.Kill() })
	return k
}
