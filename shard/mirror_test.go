package shard

import (
	"context"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/poll"
)

func TestMirrorFollowsAndRelists(t *testing.T) {
	srv := etcdserver.StartTB(t)
	cli := testClient(t, srv)
	var kicks atomic.Int64
	keys := NewKeys("/m/")
	m := &mirror{cli: cli, prefix: keys.Members(), log: slog.Default(), kick: func() { kicks.Add(1) },
		store: &memberStore{keys: keys}}
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
