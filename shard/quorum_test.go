package shard

import (
	"context"
	"log/slog"
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
	pc, err := etcdserver.StartProcesses(ctx, etcdserver.ProcessConfig{})
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
	_, err = m.open(ctx)
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
