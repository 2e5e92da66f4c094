package shard

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keeperhq/keeper/internal/etcdserver"
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

// keepLease grants a lease and keeps it until the test ends; Keep's result
// arrives on the channel.
func keepLease(t *testing.T, cli *clientv3.Client, ttl time.Duration) (*Lease, chan error) {
	t.Helper()
	l, err := GrantLease(context.Background(), cli, ttl, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	l.TestSignals.Renewed.Init()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		done <- l.Keep(ctx)
		close(finished)
	}()
	// The test may have taken Keep's result from done already.
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	return l, done
}

func waitRenewals(t *testing.T, l *Lease, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := l.TestSignals.Renewed.Wait(10 * time.Second); err != nil {
			t.Fatalf("renewal %d: %v", i+1, err)
		}
	}
}

func waitExpired(t *testing.T, done chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, ErrLeaseExpired) {
			t.Fatalf("%s: Keep ended with %v", what, err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: Keep still running after 15s", what)
	}
}

// With etcd gone, the keeper must give its lease up on its own once no
// renewal was acknowledged for the TTL, without waiting for the client.
func TestLeaseLocalDeadline(t *testing.T) {
	srv, err := etcdserver.Start(context.Background(), etcdserver.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	l, done := keepLease(t, testClient(t, srv), 2*time.Second)
	waitRenewals(t, l, 3)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	waitExpired(t, done, "etcd stopped")
	if l.Alive() {
		t.Fatalf("lease alive after Keep gave it up")
	}
	t.Logf("lease given up %s after etcd stopped (TTL 2s)", time.Since(stopped).Round(time.Millisecond))
}

func TestLeaseRevoked(t *testing.T) {
	cli := testClient(t, etcdserver.StartTB(t))
	l, done := keepLease(t, cli, 5*time.Second)
	waitRenewals(t, l, 1)
	if _, err := cli.Revoke(context.Background(), l.ID()); err != nil {
		t.Fatal(err)
	}
	waitExpired(t, done, "lease revoked")
}

func TestLeaseLostSignal(t *testing.T) {
	cli := testClient(t, etcdserver.StartTB(t))
	l, done := keepLease(t, cli, 30*time.Second)
	if !l.Alive() {
		t.Fatal("a fresh lease is not alive")
	}
	l.Lost()
	l.Lost() // idempotent
	// At once, before Keep returns: the coordinator tries nothing more
	// under a lease a request learnt is gone.
	if l.Alive() {
		t.Fatal("a lease etcd dropped still reads as alive")
	}
	waitExpired(t, done, "Lost")
}

// The deadline counts from the send time of the last acknowledged renewal,
// less a tenth of the TTL: a lease whose renewals stop is not alive after
// that, whatever etcd still says.
func TestLeaseDeadlineFromSendTime(t *testing.T) {
	cli := testClient(t, etcdserver.StartTB(t))
	sent := time.Now()
	l, err := GrantLease(context.Background(), cli, 2*time.Second, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if left := l.Left(); left > 2*time.Second-200*time.Millisecond+time.Since(sent) || left <= 0 {
		t.Fatalf("left %s after a grant of 2s", left)
	}
	before := time.Now()
	if err := l.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	if left := l.Left(); left > 1800*time.Millisecond-time.Since(after) {
		t.Fatalf("left %s after a renewal, more than TTL less the margin since it returned", left)
	}
	for l.Alive() {
		time.Sleep(10 * time.Millisecond)
	}
	if d := time.Since(before); d > 1800*time.Millisecond+time.Second {
		t.Fatalf("alive %s after the last renewal was sent", d)
	}
	if err := l.Renew(context.Background()); !errors.Is(err, ErrLeaseExpired) {
		t.Fatalf("renew past the deadline: %v", err)
	}
}

func TestLeaseTTL(t *testing.T) {
	for d, want := range map[time.Duration]time.Duration{0: 2 * time.Second, time.Second: 2 * time.Second,
		2 * time.Second: 2 * time.Second, 2500 * time.Millisecond: 3 * time.Second, 3 * time.Second: 3 * time.Second,
		10 * time.Second: 10 * time.Second} {
		if got := LeaseTTL(d); got != want {
			t.Fatalf("LeaseTTL(%s) = %s, want %s", d, got, want)
		}
	}
}
