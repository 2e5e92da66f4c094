package shard

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/poll"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// With two of three etcd members down, opening a session fails at once
// ("no leader") instead of holding the grant for the whole operation
// timeout: a grant held through the outage delayed registering by up to
// that timeout after the quorum was back (the chaos harness measured 5s
// from etcd-quorum-loss to one owner per shard).
func TestOpenSessionWithoutQuorumFailsFast(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd processes")
	}
	ctx := context.Background()
	pc, cli := startProcessCluster(t)
	m := newMember(cli, NewKeys(""), "q1", 3*time.Second, slog.Default(), &countingOwner{})
	if _, err := m.open(ctx); err != nil {
		t.Fatalf("with a quorum: %v", err)
	}

	ms := pc.Members()
	for _, m := range ms[:2] {
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	poll.For(t, 20*time.Second, "the last member without a leader", func() (bool, string) {
		_, leader, err := ms[2].Status(ctx)
		return err == nil && leader == 0, "it still knows a leader"
	})
	start := time.Now()
	_, err := m.open(ctx)
	took := time.Since(start)
	if err == nil {
		t.Fatal("a session opened without a quorum")
	}
	// Before, it failed only at the operation timeout (3s).
	if limit := m.timeout() - 500*time.Millisecond; took > limit {
		t.Fatalf("without a quorum the grant was held %s before failing (limit %s): %v", took.Round(time.Millisecond), limit, err)
	}
	t.Logf("without a quorum: failed after %s: %v", took.Round(time.Millisecond), err)

	for _, m := range ms[:2] {
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
	}
	hctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := pc.WaitHealthy(hctx); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 20*time.Second, "a session once the quorum is back", func() (bool, string) {
		_, err := m.open(ctx)
		return err == nil, errString(err)
	})
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// A session given up during a quorum loss leaves its lease in etcd: the new
// leader extends every lease by a whole TTL. The member registers again as
// soon as etcd has a quorum, by revoking its own old lease, instead of
// waiting for that lease to expire (before: about TTL after the heal, which
// with the ring's handoff put one owner per shard 5-6s after the heal in the
// chaos harness, the bound being TTL+1s).
func TestReregisterAfterQuorumLossDoesNotWaitForOwnLease(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd processes")
	}
	ctx := context.Background()
	pc, cli := startProcessCluster(t)
	// A TTL long enough that "before the old lease could have expired by
	// itself" leaves a wide margin on a loaded machine.
	const ttl = 6 * time.Second
	owner := &countingOwner{}
	keys := NewKeys("")
	var revokeFailed atomic.Bool
	log := slog.New(&watchHandler{Handler: slog.Default().Handler(), level: slog.LevelDebug, seen: func(r slog.Record) {
		if strings.HasPrefix(r.Message, "revoke of") {
			revokeFailed.Store(true)
		}
	}})
	m := newMember(cli, keys, "q1", ttl, log, owner)
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = m.Stop(sctx)
	})
	m.mu.Lock()
	first := m.cur.lease.ID()
	m.mu.Unlock()

	ms := pc.Members()
	for _, pm := range ms[:2] {
		if err := pm.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	poll.For(t, 30*time.Second, "the session given up", func() (bool, string) {
		return owner.losses.Load() > 0, "not yet"
	})
	// A revoke of the given-up lease fails against the leaderless member
	// before the quorum comes back.
	poll.For(t, 30*time.Second, "a revoke of the given-up lease failed", func() (bool, string) {
		return revokeFailed.Load(), "not yet"
	})
	for _, pm := range ms[:2] {
		if err := pm.Start(); err != nil {
			t.Fatal(err)
		}
	}
	hctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := pc.WaitHealthy(hctx); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	var registeredUnder int64
	poll.For(t, 30*time.Second, "registered under a new lease", func() (bool, string) {
		resp, err := cli.Get(ctx, keys.Member("q1"))
		if err != nil || len(resp.Kvs) == 0 {
			return false, fmt.Sprintf("no member key (%v)", err)
		}
		registeredUnder = resp.Kvs[0].Lease
		return registeredUnder != int64(first), "still under the old lease"
	})
	took := time.Since(healed)
	t.Logf("registered again %s after etcd was healthy (old lease %x, new %x)", took.Round(time.Millisecond), int64(first), registeredUnder)
	// The old lease, extended by the new leader, lives at least ttl after
	// the heal unless revoked: registering before that proves it was.
	if took >= ttl {
		t.Fatalf("registering waited %s for the keeper's own old lease to expire (TTL %s)", took.Round(time.Millisecond), ttl)
	}
	ttlResp, err := cli.TimeToLive(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	if ttlResp.TTL > 0 {
		t.Fatalf("the given-up lease %x still lives (%ds left)", int64(first), ttlResp.TTL)
	}
}

// watchHandler shows every record of at least level to seen, and passes
// the usual ones on.
type watchHandler struct {
	slog.Handler
	level slog.Level
	seen  func(slog.Record)
}

func (h *watchHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *watchHandler) Handle(ctx context.Context, r slog.Record) error {
	h.seen(r)
	if !h.Handler.Enabled(ctx, r.Level) {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func (h *watchHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &watchHandler{Handler: h.Handler.WithAttrs(as), level: h.level, seen: h.seen}
}

func (h *watchHandler) WithGroup(g string) slog.Handler {
	return &watchHandler{Handler: h.Handler.WithGroup(g), level: h.level, seen: h.seen}
}

// startProcessCluster starts three etcd member processes and a client of
// them, both stopped when the test ends.
func startProcessCluster(t *testing.T) (*etcdserver.ProcessCluster, *clientv3.Client) {
	t.Helper()
	pc, err := etcdserver.StartProcesses(context.Background(), etcdserver.ProcessConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pc.Stop() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: pc.Endpoints(), DialTimeout: 5 * time.Second,
		DialOptions: DialOptions(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return pc, cli
}
