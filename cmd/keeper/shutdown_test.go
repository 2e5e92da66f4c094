package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keeperhq/keeper/chaos"
	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SIGTERM of a real `keeper run` process under continuous due work (every
// shard has thousands of due locks and the batch is 1, so passes run back to
// back until the signal): every trial must exit with status 0 within
// shutdown_timeout and leave no key bound to its lease in etcd (ownership
// keys, member key, summary and election keys deleted by the handoff, not
// left to expire). Before the fix (issue 9, defect 2) the signal stopped the
// dispatcher, which could leave a pass counted as running that no worker
// would ever run, and the handoff waited for it forever: a keeper built from
// the code before the fix hung in about one trial in 25 here.
func TestSIGTERMHandsOverWithinBudget(t *testing.T) {
	const (
		trials = 30
		budget = 10 * time.Second // the smallest shutdown_timeout accepted
	)
	f := newTermFixture(t, 8)
	var exits []time.Duration
	var failed []string
	clean := 0
	for i := 0; i < trials; i++ {
		f.topUp(fmt.Sprintf("t%d", i))
		k := f.start(fmt.Sprintf("term-%d", i), budget)
		before := f.unlocked()
		f.waitBusy(k, before)
		termAt := time.Now()
		ok, err := k.term(budget + 5*time.Second)
		took := time.Since(termAt)
		left := f.leased()
		switch {
		case !ok:
			failed = append(failed, fmt.Sprintf("trial %d: still running %s after SIGTERM (hang); its goroutines in keeper code:\n%s",
				i, took.Round(time.Second), keeperGoroutines(k.logPath)))
			// Its keys expire with its lease; the next keeper starts clean.
			poll.For(t, 2*f.ttl+5*time.Second, "a killed keeper's keys expired", func() (bool, string) {
				left := f.leased()
				return len(left) == 0, strings.Join(left, " ")
			})
		case err != nil:
			failed = append(failed, fmt.Sprintf("trial %d: exit %v after %s", i, err, took))
		case took > budget:
			failed = append(failed, fmt.Sprintf("trial %d: exited after %s, over the %s budget", i, took, budget))
		case len(left) > 0:
			failed = append(failed, fmt.Sprintf("trial %d: keys left to lease expiry after exit: %v", i, left))
		default:
			clean++
		}
		if ok {
			exits = append(exits, took)
		}
		t.Logf("trial %d: %d unlocked while it ran, exit after %s", i, f.unlocked()-before, took.Round(time.Millisecond))
	}
	slices.Sort(exits)
	if len(exits) > 0 {
		t.Logf("%d trials: %d clean; SIGTERM to exit p50 %s, max %s (budget %s)", trials, clean,
			exits[len(exits)/2].Round(time.Millisecond), exits[len(exits)-1].Round(time.Millisecond), budget)
	}
	for _, msg := range failed {
		t.Error(msg)
	}
}

// SIGTERM while Redis does not answer (redis-server stopped with SIGSTOP)
// and passes are blocked on it: the passes are cancelled at a quarter of
// the budget, so the shutdown still hands every shard over in etcd and
// exits with status 0 within shutdown_timeout. Without that cut the blocked
// passes, retried by the Redis client, held the handoff past the budget.
func TestSIGTERMWithRedisStuckStaysWithinBudget(t *testing.T) {
	const budget = 10 * time.Second
	f := newTermFixture(t, 4)
	f.topUp("stuck")
	k := f.start("stuck", budget)
	f.waitBusy(k, f.unlocked())
	pid := f.rs.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Before the server's own cleanup, which must find it running.
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	termAt := time.Now()
	ok, err := k.term(budget + 5*time.Second)
	took := time.Since(termAt)
	if !ok {
		t.Fatalf("still running %s after SIGTERM; its goroutines in keeper code:\n%s", took.Round(time.Second), keeperGoroutines(k.logPath))
	}
	t.Logf("SIGTERM with Redis stopped: exit after %s (budget %s)", took.Round(time.Millisecond), budget)
	if err != nil || took > budget {
		t.Fatalf("exit %v after %s; want status 0 within %s\n%s", err, took, budget, tail(k.logPath, 20))
	}
	if left := f.leased(); len(left) > 0 {
		t.Fatalf("keys left to lease expiry after exit: %v", left)
	}
}

// termFixture is an etcd and a redis-server on loopback, and a queue whose
// shards have due locks, for SIGTERM tests of real keeper processes.
type termFixture struct {
	t          *testing.T
	ctx        context.Context
	bin        string
	es         *etcdserver.Server
	rs         *redisserver.Server
	ec         *clientv3.Client
	client     *queue.Client
	layout     *queue.Native
	inspector  *queue.Inspector
	partitions int
	ttl        time.Duration
	logDir     string
}

const termQueue = "busy"

func newTermFixture(t *testing.T, partitions int) *termFixture {
	t.Helper()
	bin, err := chaos.KeeperBinary()
	if err != nil {
		t.Fatal(err)
	}
	f := &termFixture{t: t, bin: bin, partitions: partitions, ttl: 2 * time.Second, logDir: t.TempDir()}
	var cancel context.CancelFunc
	f.ctx, cancel = context.WithTimeout(context.Background(), 15*time.Minute)
	t.Cleanup(cancel)
	f.es = etcdserver.StartTB(t)
	f.rs = redisserver.StartTB(t)
	rdb := redis.NewClient(&redis.Options{Addr: f.rs.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	f.ec, err = clientv3.New(clientv3.Config{Endpoints: f.es.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.ec.Close() })
	f.client = queue.NewClient(rdb, queue.ClientOptions{})
	f.layout = queue.NewNative(rdb, "")
	f.inspector = queue.NewInspector(rdb, "")
	if err := f.client.Registry().Create(f.ctx, termQueue, queue.Config{Partitions: partitions}); err != nil {
		t.Fatal(err)
	}
	return f
}

// topUp brings every shard to 3000 due locks (due a minute ago): more than
// a keeper unlocks with batch 1 before the tests signal it, so passes are
// due until the signal.
func (f *termFixture) topUp(tag string) {
	f.t.Helper()
	const dueLocks = 3000
	now, err := f.layout.Now(f.ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	st, err := f.client.Stats(f.ctx, termQueue)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, sh := range st.Shards {
		s, err := queue.ParseShard(sh.Shard)
		if err != nil {
			f.t.Fatal(err)
		}
		if n := dueLocks - int(sh.Locked); n > 0 {
			if err := f.inspector.SeedLocked(f.ctx, s, fmt.Sprintf("%s-p%d-", tag, s.Partition), 0,
				n, now.Add(-time.Minute).UnixMilli(), 0, []byte("x")); err != nil {
				f.t.Fatal(err)
			}
		}
	}
}

// leased lists the keys under the prefix that are bound to a lease: what a
// keeper that stopped cleanly must not leave behind.
func (f *termFixture) leased() []string {
	f.t.Helper()
	resp, err := f.ec.Get(f.ctx, "/keeper/", clientv3.WithPrefix())
	if err != nil {
		f.t.Fatal(err)
	}
	var out []string
	for _, kv := range resp.Kvs {
		if kv.Lease != 0 {
			out = append(out, string(kv.Key))
		}
	}
	return out
}

func (f *termFixture) unlocked() int64 {
	f.t.Helper()
	st, err := f.client.Stats(f.ctx, termQueue)
	if err != nil {
		f.t.Fatal(err)
	}
	return st.Counters.Unlocked
}

// keeperProc is one `keeper run` process.
type keeperProc struct {
	cmd     *exec.Cmd
	exited  chan error
	logPath string
	health  string
}

// start runs a keeper with the given shutdown budget and batch 1. The
// budget is given by environment, so that a keeper built before
// shutdown_timeout existed still starts (and the test can show it hang).
func (f *termFixture) start(id string, budget time.Duration) *keeperProc {
	f.t.Helper()
	port, err := loopback.Port()
	if err != nil {
		f.t.Fatal(err)
	}
	return spawnKeeper(f.t, f.bin, filepath.Join(f.logDir, id+".log"), loopback.Addr(port),
		[]string{"KEEPER_SHUTDOWN_TIMEOUT=" + budget.String()}, "run", "--member_id", id,
		"--redis.addr", f.rs.Addr, "--etcd.endpoints", f.es.Endpoints()[0], "--etcd.session_ttl", f.ttl.String(),
		"--health_addr", loopback.Addr(port), "--metrics.disabled", "--tasks.batch", "1", "--log_level", "warn")
}

// waitBusy waits until k owns every shard and has unlocked 200 messages
// since the counter read before.
func (f *termFixture) waitBusy(k *keeperProc, before int64) {
	f.t.Helper()
	waitOwnedShards(f.t, k.health, f.partitions)
	poll.For(f.t, 30*time.Second, "passes running", func() (bool, string) {
		n := f.unlocked() - before
		return n >= 200, fmt.Sprintf("%d unlocked", n)
	})
}

// term sends SIGTERM and waits up to wait for the exit. ok is false when the
// process was still running then; it is then made to dump its goroutines
// into its log (SIGQUIT) and killed.
func (k *keeperProc) term(wait time.Duration) (ok bool, err error) {
	if err := k.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return true, err
	}
	select {
	case err := <-k.exited:
		return true, err
	case <-time.After(wait):
	}
	_ = k.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-k.exited:
	case <-time.After(5 * time.Second):
		_ = k.cmd.Process.Kill()
		<-k.exited
	}
	return false, nil
}

// keeperGoroutines are the goroutines of a Go traceback (SIGQUIT) in the
// log at path whose stacks pass through keeper's own packages.
func keeperGoroutines(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, g := range strings.Split(string(b), "\n\n") {
		if strings.HasPrefix(g, "goroutine ") && strings.Contains(g, "github.com/keeperhq/keeper/") {
			out = append(out, g)
		}
	}
	return strings.Join(out, "\n\n")
}

// tail is the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
