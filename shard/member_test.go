package shard

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/poll"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func testClient(t *testing.T, srv *etcdserver.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: srv.Endpoints(), DialTimeout: 5 * time.Second,
		DialOptions: DialOptions(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func startKeepalive(t *testing.T, cli *clientv3.Client, ttl int64) (*keepalive, *atomic.Int64, chan error) {
	t.Helper()
	sent := time.Now()
	g, err := cli.Grant(context.Background(), ttl)
	if err != nil {
		t.Fatal(err)
	}
	d := time.Duration(g.TTL) * time.Second
	var renewals atomic.Int64
	k := &keepalive{cli: cli, lease: g.ID, ttl: d, margin: d / 10, deadline: sent.Add(d - d/10),
		log: slog.Default(), gone: make(chan struct{}), renewed: func() { renewals.Add(1) }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		done <- k.run(ctx)
		close(finished)
	}()
	// The test may have taken run's result from done already.
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	return k, &renewals, done
}

// With etcd gone, the keeper must give its session up on its own once no
// renewal was acknowledged for the TTL, without waiting for the client.
func TestKeepaliveLocalDeadline(t *testing.T) {
	srv, err := etcdserver.Start(context.Background(), etcdserver.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	cli := testClient(t, srv)
	_, renewals, done := startKeepalive(t, cli, 2)
	poll.For(t, 10*time.Second, "renewals", func() (bool, string) { return renewals.Load() >= 3, "fewer than 3 renewals" })
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, errLeaseExpired) {
			t.Fatalf("keepalive ended with %v", err)
		}
		t.Logf("session given up %s after etcd stopped (TTL 2s)", time.Since(stopped).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatalf("keepalive still running 15s after etcd stopped")
	}
}

func TestKeepaliveRevokedLease(t *testing.T) {
	srv := etcdserver.StartTB(t)
	cli := testClient(t, srv)
	k, renewals, done := startKeepalive(t, cli, 5)
	poll.For(t, 10*time.Second, "a renewal", func() (bool, string) { return renewals.Load() >= 1, "no renewal" })
	if _, err := cli.Revoke(context.Background(), k.lease); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, errLeaseExpired) {
			t.Fatalf("keepalive ended with %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("keepalive did not notice the revoked lease")
	}
}

func TestKeepaliveLeaseGoneSignal(t *testing.T) {
	srv := etcdserver.StartTB(t)
	cli := testClient(t, srv)
	k, _, done := startKeepalive(t, cli, 30)
	k.leaseGone()
	k.leaseGone() // idempotent
	select {
	case err := <-done:
		if !errors.Is(err, errLeaseExpired) {
			t.Fatalf("keepalive ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("keepalive ignored the lease-gone signal")
	}
}

func TestTTLSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int64{0: 2, time.Second: 2, 2 * time.Second: 2, 2500 * time.Millisecond: 3, 3 * time.Second: 3, 10 * time.Second: 10} {
		if got := ttlSeconds(d); got != want {
			t.Fatalf("ttlSeconds(%s) = %d, want %d", d, got, want)
		}
	}
}

func TestValidMemberID(t *testing.T) {
	for _, ok := range []string{"keeper-0", "a", "pod.ns_1:x"} {
		if err := validMemberID(ok); err != nil {
			t.Fatalf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a/b", "a b", "a\x00", "é", string(make([]byte, 300))} {
		if err := validMemberID(bad); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

func TestMirrorFollowsAndRelists(t *testing.T) {
	srv := etcdserver.StartTB(t)
	cli := testClient(t, srv)
	var kicks atomic.Int64
	m := &mirror{cli: cli, prefix: "/m/members/", log: slog.Default(), kick: func() { kicks.Add(1) },
		store: &memberStore{prefix: "/m/members/"}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	ids := func() map[string]struct{} {
		m.mu.Lock()
		defer m.mu.Unlock()
		out := map[string]struct{}{}
		for id := range m.store.(*memberStore).ids {
			out[id] = struct{}{}
		}
		return out
	}
	bg := context.Background()
	for _, id := range []string{"a", "b", "c"} {
		if _, err := cli.Put(bg, "/m/members/"+id, id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Delete(bg, "/m/members/a"); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 10*time.Second, "b and c", func() (bool, string) {
		got := ids()
		_, b := got["b"]
		_, c := got["c"]
		return len(got) == 2 && b && c, "wrong set"
	})

	// Changes made while etcd restarts are picked up too.
	if err := srv.Restart(bg); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 20*time.Second, "put after restart", func() (bool, string) {
		pctx, pcancel := context.WithTimeout(bg, time.Second)
		defer pcancel()
		_, err := cli.Put(pctx, "/m/members/d", "d")
		return err == nil, "put failed"
	})
	poll.For(t, 20*time.Second, "d", func() (bool, string) {
		_, ok := ids()["d"]
		return ok, "d missing"
	})

	// A watch from a compacted revision ends at once, so run lists again.
	r, err := cli.Get(bg, "/m/members/d")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(bg, r.Header.Revision); err != nil {
		t.Fatal(err)
	}
	wdone := make(chan struct{})
	go func() { defer close(wdone); m.watch(ctx, 1) }()
	select {
	case <-wdone:
	case <-time.After(10 * time.Second):
		t.Fatalf("watch from a compacted revision did not end")
	}
}

// Deleting a live keeper's member key by hand must not leave it out of the
// others' rings for good: it puts the key back.
func TestMemberKeyRestored(t *testing.T) {
	h := newHarness(t, 100)
	k := h.start("a")
	poll.For(t, 20*time.Second, "settled", h.settled([]*keeper{k}))
	if _, err := h.raw.Delete(context.Background(), "/t/members/a"); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 10*time.Second, "member key back", func() (bool, string) {
		r, err := h.raw.Get(context.Background(), "/t/members/a")
		if err != nil || len(r.Kvs) == 0 {
			return false, "missing"
		}
		return r.Kvs[0].Lease != 0, "no lease"
	})
	poll.For(t, 20*time.Second, "settled", h.settled([]*keeper{k}))
}
