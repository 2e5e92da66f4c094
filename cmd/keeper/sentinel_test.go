package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keeperhq/keeper/chaos"
	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/internal/testpki"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
	"github.com/redis/go-redis/v9"
)

// sentinelFixture is a Redis primary and its replica, both with a
// password, watched by three sentinels (quorum 2) with their own password,
// an etcd, and a keeper.yaml that reaches Redis through the sentinels.
type sentinelFixture struct {
	t         *testing.T
	ctx       context.Context
	primary   *redisserver.Server
	replica   *redisserver.Server
	sentinels []*redisserver.Server
	etcd      *etcdserver.Server
	file      string // keeper.yaml
	cfg       Config
}

const (
	sentinelMaster = "queues"
	dataPassword   = "data-pw"
	sentinelPass   = "sentinel-pw"
)

func newSentinelFixture(t *testing.T) *sentinelFixture {
	t.Helper()
	f := &sentinelFixture{t: t}
	var cancel context.CancelFunc
	f.ctx, cancel = context.WithTimeout(context.Background(), 10*time.Minute)
	t.Cleanup(cancel)
	auth := []string{"--requirepass", dataPassword, "--masterauth", dataPassword,
		"--maxmemory-policy", "noeviction", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"}
	f.primary = redisserver.StartConfigTB(t, redisserver.Config{ExtraArgs: auth})
	_, port, _ := net.SplitHostPort(f.primary.Addr)
	f.replica = redisserver.StartConfigTB(t, redisserver.Config{ExtraArgs: append([]string{"--replicaof", "127.0.0.1", port}, auth...)})
	f.sentinels = redisserver.StartSentinelsTB(t, 3, 1, redisserver.SentinelConfig{Master: sentinelMaster,
		MasterAddr: f.primary.Addr, Quorum: 2, AuthPass: dataPassword, RequirePass: sentinelPass})
	f.etcd = etcdserver.StartTB(t)
	dir := t.TempDir()
	pw, spw := passwordFiles(t, dir)
	var addrs []string
	for _, s := range f.sentinels {
		addrs = append(addrs, s.Addr)
	}
	f.file = filepath.Join(dir, "keeper.yaml")
	yaml := fmt.Sprintf(`log_level: info
metrics: {disabled: true}
redis:
  password_file: %s
  sentinel:
    master: %s
    addrs: [%s]
    password_file: %s
etcd:
  endpoints: [%s]
  session_ttl: 2s
tasks:
  record_history: true
  sweep_interval: 10m      # only a wake tells a keeper of a new deadline
`, pw, sentinelMaster, strings.Join(addrs, ", "), spw, f.etcd.Endpoints()[0])
	if err := os.WriteFile(f.file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.cfg, err = loadConfig("run", []string{"--config", f.file}, nil); err != nil {
		t.Fatal(err)
	}
	return f
}

// passwordFiles writes the data nodes' and the sentinels' passwords into
// files in dir, as Secrets would be mounted.
func passwordFiles(t *testing.T, dir string) (data, sentinel string) {
	t.Helper()
	data, sentinel = filepath.Join(dir, "redis-password"), filepath.Join(dir, "sentinel-password")
	for p, v := range map[string]string{data: dataPassword, sentinel: sentinelPass} {
		if err := os.WriteFile(p, []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return data, sentinel
}

// client is a failover client with the keepers' settings.
func (f *sentinelFixture) client() *redis.Client {
	f.t.Helper()
	rdb, err := redisClient(f.cfg.Redis, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = rdb.Close() })
	c, ok := rdb.(*redis.Client)
	if !ok {
		f.t.Fatalf("redis.sentinel made a %T, not go-redis's failover client", rdb)
	}
	return c
}

// direct is a client of one server, by its address.
func (f *sentinelFixture) direct(s *redisserver.Server) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, Password: dataPassword})
	f.t.Cleanup(func() { _ = c.Close() })
	return c
}

// named is what every sentinel names as the primary, "" while they differ.
func (f *sentinelFixture) named() (string, string) {
	var got []string
	for _, s := range f.sentinels {
		c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr, Password: sentinelPass})
		a, err := c.GetMasterAddrByName(f.ctx, sentinelMaster).Result()
		_ = c.Close()
		if err != nil {
			return "", err.Error()
		}
		got = append(got, net.JoinHostPort(a[0], a[1]))
	}
	for _, g := range got[1:] {
		if g != got[0] {
			return "", fmt.Sprintf("the sentinels name %v", got)
		}
	}
	return got[0], ""
}

// startKeeper runs a real `keeper run` process with the fixture's config.
func (f *sentinelFixture) startKeeper(bin, id string) *keeperProc {
	f.t.Helper()
	port, err := loopback.Port()
	if err != nil {
		f.t.Fatal(err)
	}
	k := &keeperProc{logPath: filepath.Join(f.t.TempDir(), id+".log"), health: loopback.Addr(port), exited: make(chan error, 1)}
	logFile, err := os.Create(k.logPath)
	if err != nil {
		f.t.Fatal(err)
	}
	k.cmd = exec.Command(bin, "run", "--config", f.file, "--member_id", id, "--health_addr", k.health)
	k.cmd.Stdout, k.cmd.Stderr = logFile, logFile
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	go func() { k.exited <- k.cmd.Wait(); _ = logFile.Close() }()
	f.t.Cleanup(func() {
		_ = k.cmd.Process.Signal(syscall.SIGCONT)
		_ = k.cmd.Process.Kill()
		<-k.exited
		if f.t.Failed() {
			f.t.Logf("%s's log ends:\n%s", id, tail(k.logPath, 30))
		}
	})
	return k
}

// owned is the shards a keeper's /status lists, with their tokens.
func owned(k *keeperProc) (map[string]int64, error) {
	resp, err := http.Get("http://" + k.health + "/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var st struct {
		Owned map[string]int64 `json:"owned"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%v: %s", err, b)
	}
	return st.Owned, nil
}

// sentinelWorkload produces and consumes on a queue through a failover
// client, and remembers every id the queue took and every id acked.
type sentinelWorkload struct {
	client  *queue.Client
	queue   string
	paused  atomic.Bool
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	took    map[string]bool // enqueue answered: the queue has it
	unsure  map[string]bool // enqueue failed: it may or may not have
	acked   map[string]bool
	errs    map[string]int // client errors by kind
	enqueue atomic.Int64
}

func startSentinelWorkload(client *queue.Client, q string) *sentinelWorkload {
	w := &sentinelWorkload{client: client, queue: q, stop: make(chan struct{}), took: map[string]bool{},
		unsure: map[string]bool{}, acked: map[string]bool{}, errs: map[string]int{}}
	w.wg.Add(2)
	go w.produce()
	go w.consume()
	return w
}

func (w *sentinelWorkload) fail(kind string, err error) {
	w.mu.Lock()
	w.errs[kind+": "+firstLine(err.Error())]++
	w.mu.Unlock()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// produce enqueues about 200 messages a second, a third of them delayed
// (locked until then: unlocked by a keeper), until stop; nothing while
// paused.
func (w *sentinelWorkload) produce() {
	defer w.wg.Done()
	ctx := context.Background()
	for i := 0; ; i++ {
		select {
		case <-w.stop:
			return
		case <-time.After(5 * time.Millisecond):
		}
		if w.paused.Load() {
			continue
		}
		id := fmt.Sprintf("m-%d", i)
		m := queue.Message{ID: id, Payload: []byte("x")}
		if i%3 == 0 {
			m.Delay = time.Duration(100+rand.IntN(400)) * time.Millisecond
		}
		w.enqueue.Add(1)
		_, err := w.client.Enqueue(ctx, w.queue, m)
		w.enqueue.Add(-1)
		w.mu.Lock()
		if err != nil {
			w.unsure[id] = true
		} else {
			w.took[id] = true
		}
		w.mu.Unlock()
		if err != nil {
			w.fail("enqueue", err)
		}
	}
}

// waitIdle waits until no enqueue is in flight (after pausing).
func (w *sentinelWorkload) waitIdle(t *testing.T) {
	t.Helper()
	poll.For(t, 30*time.Second, "the producer idle", poll.Holds(func() bool { return w.enqueue.Load() == 0 }))
}

// consume pulls with a 300 ms lease and acks half, nacks a quarter with a
// 200 ms lock and leaves a quarter to lapse: keepers unlock and requeue.
func (w *sentinelWorkload) consume() {
	defer w.wg.Done()
	ctx := context.Background()
	for {
		select {
		case <-w.stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
		ds, err := w.client.Pull(ctx, w.queue, 20, 300*time.Millisecond)
		if err != nil {
			w.fail("pull", err)
			continue
		}
		for _, d := range ds {
			switch r := rand.IntN(4); {
			case r < 2:
				if err := w.client.Ack(ctx, d); err != nil {
					w.fail("ack", err)
					continue
				}
				w.mu.Lock()
				w.acked[d.ID] = true
				w.mu.Unlock()
			case r == 2:
				if _, err := w.client.Nack(ctx, d, queue.NackOptions{LockFor: 200 * time.Millisecond}); err != nil {
					w.fail("nack", err)
				}
			}
		}
	}
}

func (w *sentinelWorkload) halt() {
	close(w.stop)
	w.wg.Wait()
}

// keeper run, status and queue through Redis Sentinel, and a forced
// failover (SENTINEL FAILOVER) while two real keeper processes housekeep a
// queue under a workload:
//   - `keeper queue` creates the queues and `keeper status` reads the fleet
//     through the sentinels;
//   - one keeper is frozen (SIGSTOP) and the other takes its shards, its
//     claims raising the fences (acknowledged by the replica: WAIT);
//   - the failover promotes the replica; housekeeping resumes on it, and a
//     hint published there is heard at once although Sentinel turns the old
//     primary into a replica only some 15 s later (the keepers' wake
//     subscriptions are moved off it: sentinelWatch);
//   - the frozen keeper resumes: the tokens it held are refused by the
//     fences on the new primary (its keeper never writes under them, and a
//     pass presented under one directly is refused), and the recorded
//     history (tasks.record_history) shows no write accepted under a stale
//     token;
//   - nothing is lost: every id the queue took is acked in the end, the
//     audit is clean and the counters balance.
//
// The producer pauses from the failover until the old primary is a replica:
// a write the old primary took in that window is lost with it (Redis
// replication is asynchronous; Sentinel does not stop the old primary), as
// the README says. Consumers and keepers run on through it, and what the
// old primary took from them is redone on the new one.
func TestSentinelFailoverUnderKeepers(t *testing.T) {
	bin, err := chaos.KeeperBinary()
	if err != nil {
		t.Fatal(err)
	}
	f := newSentinelFixture(t)
	ctx := f.ctx
	env := []string{"KEEPER_CONFIG=" + f.file}
	for _, q := range [][]string{{"orders", "16"}, {"probe", "1"}} {
		if out, err := queueRun(env, "create", q[0], "--partitions", q[1]); err != nil {
			t.Fatalf("keeper queue create through the sentinels: %v\n%s", err, out)
		}
	}
	const shards = 17
	k1, k2 := f.startKeeper(bin, "k1"), f.startKeeper(bin, "k2")
	poll.For(t, 60*time.Second, "both keepers owning shards, all 17 owned", func() (bool, string) {
		o1, err1 := owned(k1)
		o2, err2 := owned(k2)
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		return len(o1) > 0 && len(o2) > 0 && len(o1)+len(o2) == shards, fmt.Sprintf("k1 %d, k2 %d", len(o1), len(o2))
	})
	var out bytes.Buffer
	if err := statusCmd([]string{"--config", f.file, "--json"}, &out); err != nil {
		t.Fatalf("keeper status through the sentinels: %v", err)
	}
	var st shard.Status
	if err := json.Unmarshal(out.Bytes(), &st); err != nil || st.Shards != shards || len(st.Members) != 2 || len(st.UnownedShards) != 0 {
		t.Fatalf("keeper status through the sentinels (%v):\n%s", err, out.String())
	}

	rdb := f.client()
	client := queue.NewClient(rdb, queue.ClientOptions{})
	stats := func() queue.QueueStats {
		st, err := client.Stats(ctx, "orders")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	w := startSentinelWorkload(client, "orders")
	halted := sync.OnceFunc(w.halt)
	defer halted()
	poll.For(t, 30*time.Second, "housekeeping on the first primary", func() (bool, string) {
		c := stats().Counters
		return c.Unlocked > 50 && c.Requeued > 50, fmt.Sprintf("unlocked %d, requeued %d", c.Unlocked, c.Requeued)
	})

	// Freeze k1; k2 takes its shards, claiming each (the fence rises to
	// k2's token, acknowledged by the replica).
	stale, err := owned(k1)
	if err != nil {
		t.Fatal(err)
	}
	if err := k1.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	inspector := queue.NewInspector(rdb, "")
	staleShards := make([]queue.Shard, 0, len(stale))
	for name := range stale {
		s, err := queue.ParseShard(name)
		if err != nil {
			t.Fatal(err)
		}
		staleShards = append(staleShards, s)
	}
	took := poll.For(t, 30*time.Second, "k2 owning every shard, the fences of k1's above its tokens", func() (bool, string) {
		o2, err := owned(k2)
		if err != nil || len(o2) != shards {
			return false, fmt.Sprintf("k2 owns %d (%v)", len(o2), err)
		}
		fences, err := inspector.Fences(ctx, staleShards)
		if err != nil {
			return false, err.Error()
		}
		for i, s := range staleShards {
			if fences[i] <= stale[s.String()] {
				return false, fmt.Sprintf("%s: fence %d, k1's token %d", s, fences[i], stale[s.String()])
			}
		}
		return true, ""
	})
	t.Logf("k1 frozen; k2 took its %d shards in %s", len(stale), took.Round(time.Millisecond))

	// The failover, with every enqueue so far on the replica.
	w.paused.Store(true)
	w.waitIdle(t)
	old, promoted := f.direct(f.primary), f.direct(f.replica)
	offset := func(c *redis.Client, field string) int64 {
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), field+":"); ok {
				var n int64
				_, _ = fmt.Sscan(v, &n)
				return n
			}
		}
		return -1
	}
	at := offset(old, "master_repl_offset")
	poll.For(t, 10*time.Second, "the replica caught up with the paused producer", func() (bool, string) {
		o := offset(promoted, "slave_repl_offset")
		return o >= at, fmt.Sprintf("replica at %d, primary was at %d", o, at)
	})
	sc := redis.NewSentinelClient(&redis.Options{Addr: f.sentinels[0].Addr, Password: sentinelPass})
	defer sc.Close()
	failoverAt := time.Now()
	if err := sc.Failover(ctx, sentinelMaster).Err(); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 30*time.Second, "every sentinel naming the replica", func() (bool, string) {
		a, why := f.named()
		return a == f.replica.Addr, why + a
	})
	switched := time.Since(failoverAt)
	// A hint on the new primary, while the old one still is a primary: an
	// idle shard gets a message due in 100 ms. Only the wake tells its
	// keeper (the sweep is a minute away).
	probe := queue.NewClient(promoted, queue.ClientOptions{})
	if !strings.Contains(infoOf(t, old), "role:master") {
		t.Fatal("the old primary is already a replica; the hint would prove nothing")
	}
	if _, err := probe.Enqueue(ctx, "probe", queue.Message{ID: "hint", Payload: []byte("x"), Delay: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	lag := poll.For(t, 30*time.Second, "the hinted message unlocked on the new primary", func() (bool, string) {
		st, err := probe.Stats(ctx, "probe")
		if err != nil {
			return false, err.Error()
		}
		return st.Ready == 1, fmt.Sprintf("ready %d locked %d", st.Ready, st.Locked)
	})
	oldStillPrimary := strings.Contains(infoOf(t, old), "role:master")
	if bound := f.cfg.Etcd.SessionTTL + time.Second; lag > bound {
		t.Errorf("a message due 100 ms after a hint on the new primary became ready after %s (bound %s)", lag, bound)
	}
	t.Logf("failover: the sentinels named the replica %s after SENTINEL FAILOVER; a message due in 100 ms, hinted on the new primary, was ready %s after its enqueue (the old primary still a primary then: %v)",
		switched.Round(time.Millisecond), lag.Round(time.Millisecond), oldStillPrimary)
	poll.For(t, 90*time.Second, "the old primary a replica of the new one", func() (bool, string) {
		info := infoOf(t, old)
		return strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up"), info
	})
	t.Logf("Sentinel turned the old primary into a replica %s after the failover", time.Since(failoverAt).Round(time.Millisecond))
	w.paused.Store(false)

	// k1 resumes: its session is gone, its tokens are below the fences.
	if err := k1.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	layout := queue.NewNative(rdb, "").WithOwner("k1/stale-probe")
	var reqs []queue.PassRequest
	for _, s := range staleShards {
		reqs = append(reqs, queue.PassRequest{Shard: s, Task: queue.TaskUnlock, Token: stale[s.String()], Batch: 1000})
	}
	for i, o := range layout.Passes(ctx, reqs) {
		var fe *queue.FencedError
		if !errors.As(o.Err, &fe) {
			t.Errorf("%s: a pass under k1's old token %d on the new primary: %v, want refused by the fence", reqs[i].Shard, reqs[i].Token, o.Err)
		}
	}
	poll.For(t, 60*time.Second, "k1 back, owning shards again, all owned", func() (bool, string) {
		o1, err1 := owned(k1)
		o2, err2 := owned(k2)
		if err1 != nil || err2 != nil {
			return false, fmt.Sprint(err1, err2)
		}
		return len(o1) > 0 && len(o1)+len(o2) == shards, fmt.Sprintf("k1 %d, k2 %d", len(o1), len(o2))
	})
	before := stats().Counters
	poll.For(t, 60*time.Second, "housekeeping on the new primary", func() (bool, string) {
		c := stats().Counters
		return c.Unlocked > before.Unlocked+50 && c.Requeued > before.Requeued+50,
			fmt.Sprintf("unlocked %d, requeued %d since", c.Unlocked-before.Unlocked, c.Requeued-before.Requeued)
	})

	// Drain: the keepers return every lease and lock, then everything is
	// acked.
	halted()
	poll.For(t, 60*time.Second, "every lease and lock returned to ready", func() (bool, string) {
		st := stats()
		return st.Inflight == 0 && st.Locked == 0, fmt.Sprintf("inflight %d locked %d", st.Inflight, st.Locked)
	})
	for {
		ds, err := client.Pull(ctx, "orders", 1000, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			break
		}
		for _, d := range ds {
			if err := client.Ack(ctx, d); err != nil {
				t.Fatal(err)
			}
			w.acked[d.ID] = true
		}
	}
	lost := 0
	for id := range w.took {
		if !w.acked[id] {
			if lost++; lost <= 10 {
				t.Errorf("message %s: the queue took it, nobody got it", id)
			}
		}
	}
	a, err := client.Audit(ctx, "orders")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 || a.Present() != 0 || a.Counters.Enqueued != a.Counters.Acked {
		t.Errorf("audit: %d present, counters %+v, problems %v", a.Present(), a.Counters, a.Problems)
	}
	t.Logf("%d messages taken (%d enqueues failed, may or may not be in), %d lost; client errors %v; counters %+v",
		len(w.took), len(w.unsure), lost, w.errs, a.Counters)

	// Fences: replayed in order on the new primary, accepted tokens never
	// decrease, each token writes for one keeper process, and no token of
	// k1 from before the freeze is accepted after k2's claim.
	var accepted, refused, afterFailover int
	failoverMs := failoverAt.UnixMilli()
	for p := 0; p < 16; p++ {
		s := queue.Shard{Queue: "orders", Partition: p}
		h, err := inspector.History(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		var high int64
		owners := map[int64]string{}
		for _, e := range h {
			if !e.Accepted {
				refused++
				continue
			}
			accepted++
			var ms int64
			_, _ = fmt.Sscanf(e.ID, "%d-", &ms)
			if ms > failoverMs {
				afterFailover++
			}
			if e.Token < high {
				t.Errorf("%s: %s accepted under token %d (%s) after token %d had written", s, e.Task, e.Token, e.Owner, high)
			}
			if o, ok := owners[e.Token]; ok && o != e.Owner {
				t.Errorf("%s: token %d accepted from %s and from %s", s, e.Token, o, e.Owner)
			}
			owners[e.Token] = e.Owner
			high = max(high, e.Token)
		}
	}
	if afterFailover == 0 {
		t.Error("no housekeeping pass recorded on the new primary after the failover")
	}
	t.Logf("history on the new primary: %d passes accepted (%d after the failover), %d refused", accepted, afterFailover, refused)
}

func infoOf(t *testing.T, c *redis.Client) string {
	t.Helper()
	info, err := c.Info(context.Background(), "replication").Result()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// Sentinel with TLS everywhere (the data nodes and the sentinel serve TLS
// only to clients with a certificate, and want passwords, each its own):
// the same TLS settings reach the sentinels and the data nodes. `keeper
// queue` creates and lists through them, and `keeper run` joins, owns the
// queue's shards and housekeeps them (its eviction check passes the
// sentinel's connections, which have no memory policy); a wrong sentinel
// password is a clear error.
func TestSentinelOverTLS(t *testing.T) {
	pki := testpki.NewTB(t)
	tlsCfg := &redisserver.TLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, CAFile: pki.CAFile, AuthClients: true}
	auth := []string{"--requirepass", dataPassword, "--masterauth", dataPassword, "--tls-replication", "yes"}
	primary := redisserver.StartConfigTB(t, redisserver.Config{TLS: tlsCfg, ExtraArgs: auth})
	_, port, _ := net.SplitHostPort(primary.TLSAddr)
	redisserver.StartConfigTB(t, redisserver.Config{TLS: tlsCfg, ExtraArgs: append([]string{"--replicaof", "127.0.0.1", port}, auth...)})
	sentinels := redisserver.StartSentinelsTB(t, 1, 1, redisserver.SentinelConfig{Master: sentinelMaster,
		MasterAddr: primary.TLSAddr, AuthPass: dataPassword, RequirePass: sentinelPass, TLS: tlsCfg})
	es := etcdserver.StartTB(t)
	hp, err := loopback.Port()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pw, spw := passwordFiles(t, dir)
	file := filepath.Join(dir, "keeper.yaml")
	if err := os.WriteFile(file, []byte(fmt.Sprintf(`health_addr: %s
metrics: {disabled: true}
redis:
  tls: true
  ca_file: %s
  cert_file: %s
  key_file: %s
  password_file: %s
  sentinel:
    master: %s
    addrs: [%s]
    password_file: %s
etcd:
  endpoints: [%s]
  session_ttl: 2s
`, loopback.Addr(hp), pki.CAFile, pki.ClientCert, pki.ClientKey, pw, sentinelMaster, sentinels[0].TLSAddr, spw,
		es.Endpoints()[0])), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"KEEPER_CONFIG=" + file}
	if out, err := queueRun(env, "create", "secure", "--partitions", "2"); err != nil {
		t.Fatalf("keeper queue create through TLS sentinels: %v\n%s", err, out)
	}
	if out, err := queueRun(env, "list"); err != nil || !strings.Contains(out, "secure") {
		t.Fatalf("keeper queue list through TLS sentinels: %v\n%s", err, out)
	}
	if _, err := queueRun(append(env, "KEEPER_REDIS_SENTINEL_PASSWORD=wrong"), "list"); err == nil ||
		!strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("a wrong sentinel password: err %v; want WRONGPASS", err)
	} else {
		t.Logf("wrong sentinel password: %v", err)
	}
	if _, err := queueRun(env, "list", "--redis", primary.TLSAddr); err == nil ||
		!strings.Contains(err.Error(), "redis.addr and redis.sentinel are exclusive") {
		t.Fatalf("--redis with a sentinel config: %v", err)
	}

	cfg, err := loadConfig("run", []string{"--config", file}, nil)
	if err != nil {
		t.Fatal(err)
	}
	startDaemonTB(t, cfg)
	waitOwnedShards(t, loopback.Addr(hp), 2)
	rdb, err := redisClient(cfg.Redis, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	client := queue.NewClient(rdb, queue.ClientOptions{})
	if _, err := client.Enqueue(context.Background(), "secure", queue.Message{Payload: []byte("x"), Delay: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	waitAllReady(t, client, "secure", 1)
}
