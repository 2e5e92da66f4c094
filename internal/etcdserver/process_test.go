package etcdserver

import (
	"context"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// A three-process cluster survives losing its leader, loses quorum with two
// members down, and serves again with the same data when they return.
func TestProcessCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts etcd processes")
	}
	ctx := context.Background()
	c, err := StartProcesses(ctx, ProcessConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	put := func(k, v string, within time.Duration) {
		t.Helper()
		poll.For(t, within, "put "+k, func() (bool, string) {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			_, err := cli.Put(pctx, k, v)
			return err == nil, "put: " + errString(err)
		})
	}
	get := func(k string) string {
		t.Helper()
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		r, err := cli.Get(gctx, k)
		if err != nil {
			t.Fatalf("get %s: %v", k, err)
		}
		if len(r.Kvs) == 0 {
			return ""
		}
		return string(r.Kvs[0].Value)
	}
	put("a", "1", 10*time.Second)

	leader, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	took := poll.For(t, 30*time.Second, "a new leader", func() (bool, string) {
		l, err := c.Leader(ctx)
		return err == nil && l != leader, errString(err)
	})
	t.Logf("leader %s killed: new leader after %s", leader.Name, took.Round(time.Millisecond))
	put("b", "2", 10*time.Second)

	// Quorum lost: nothing is written; the data is there when it returns.
	var down []*Member
	for _, m := range c.Members() {
		if m.Running() {
			down = append(down, m)
			break
		}
	}
	down = append(down, leader)
	if err := down[0].Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Leader(ctx); err == nil {
		// A lone member may still believe in its old leader for an election
		// timeout; it must not accept a write.
		t.Log("the remaining member still reports a leader")
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = cli.Put(wctx, "c", "3")
	cancel()
	if err == nil {
		t.Fatal("a write succeeded with one of three members up")
	}
	for _, m := range down {
		if err := m.Start(); err != nil {
			t.Fatal(err)
		}
	}
	hctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := c.WaitHealthy(hctx); err != nil {
		t.Fatal(err)
	}
	put("d", "4", 20*time.Second)
	if get("a") != "1" || get("b") != "2" || get("d") != "4" {
		t.Fatalf("data after quorum loss: a=%q b=%q d=%q", get("a"), get("b"), get("d"))
	}

	// Pause and resume one member; restart all.
	m := c.Members()[0]
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	put("e", "5", 20*time.Second)
	if err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(hctx); err != nil {
		t.Fatal(err)
	}
	put("f", "6", 20*time.Second)
	if get("e") != "5" {
		t.Fatalf("e=%q after a full restart", get("e"))
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
