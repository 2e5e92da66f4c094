package shard

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/service/servicetest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A keeper whose session ends stops everything (DisownAll) before it
// re-registers and re-acquires, and its new tokens are higher.
func TestSessionLostDisownAllFirst(t *testing.T) {
	h := newHarness(t, 500)
	k := h.start("solo")
	poll.For(t, 20*time.Second, "settled", h.settled([]*keeper{k}))
	owned, _ := k.rec.snapshot()
	var oldMax int64
	for _, tok := range owned {
		oldMax = max(oldMax, tok)
	}
	lease := k.lease()
	if _, err := h.raw.Revoke(context.Background(), lease); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	d := poll.For(t, 20*time.Second, "re-acquired", func() (bool, string) {
		owned, _ := k.rec.snapshot()
		for _, sh := range h.catalog {
			if owned[sh] <= oldMax {
				return false, fmt.Sprintf("%s at token %d", sh, owned[sh])
			}
		}
		return true, ""
	})
	t.Logf("session lost and every shard re-acquired with a higher token in %s", d)
	_, log := k.rec.snapshot()
	disownAll, firstNewOwn := -1, -1
	for i, e := range log {
		if e.kind == "disownall" && disownAll < 0 {
			disownAll = i
		}
		if e.kind == "own" && e.token > oldMax && firstNewOwn < 0 {
			firstNewOwn = i
		}
	}
	if disownAll < 0 || firstNewOwn < disownAll {
		t.Fatalf("DisownAll at event %d, first Own with a new token at %d", disownAll, firstNewOwn)
	}
	h.w.check()
}

// With etcd gone for longer than the TTL, the keeper gives its session up
// by itself (no keepalive acknowledged), then recovers when etcd returns.
func TestEtcdDownLongerThanTTL(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var srv2 *etcdserver.Server
	t.Cleanup(func() {
		_ = srv.Stop()
		if srv2 != nil {
			_ = srv2.Stop()
		}
	})
	h := newHarnessOn(t, 500, srv)
	k := h.start("solo")
	poll.For(t, 20*time.Second, "settled", h.settled([]*keeper{k}))
	owned, _ := k.rec.snapshot()
	var oldMax int64
	for _, tok := range owned {
		oldMax = max(oldMax, tok)
	}
	clientPort, peerPort := srv.Ports()
	down := time.Now()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 15*time.Second, "DisownAll while etcd is down", func() (bool, string) {
		_, log := k.rec.snapshot()
		return slices.ContainsFunc(log, func(e event) bool { return e.kind == "disownall" }), "no DisownAll"
	})
	t.Logf("etcd down: keeper stopped all housekeeping %s after etcd began to stop (TTL %s)",
		time.Since(down).Round(time.Millisecond), k.c.cfg.SessionTTL)
	srv2, err = etcdserver.Start(ctx, etcdserver.Config{Dir: dir, ClientPort: clientPort, PeerPort: peerPort})
	if err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	h.srv = srv2
	t.Logf("etcd back after %s", time.Since(down).Round(time.Millisecond))
	poll.For(t, 30*time.Second, "recovered", func() (bool, string) {
		owned, _ := k.rec.snapshot()
		for _, sh := range h.catalog {
			if owned[sh] <= oldMax {
				return false, fmt.Sprintf("%s at token %d", sh, owned[sh])
			}
		}
		return true, ""
	})
	poll.For(t, 20*time.Second, "settled", h.settled([]*keeper{k}))
	h.w.check()
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

// The member session keeps the lifecycle rules (internal/service); a
// stopped member leaves no key behind (one stopped with an expired context
// leaves its key to expire with the lease).
func TestMemberStartStop(t *testing.T) {
	srv := etcdserver.StartTB(t)
	cli := testClient(t, srv)
	keys := NewKeys("/ms/")
	n := 0
	servicetest.Stress(t, 10, func(t *testing.T) service.Service {
		n++
		return newMember(cli, keys, fmt.Sprintf("m%d", n), 2*time.Second, slog.Default(), &countingOwner{})
	})
	poll.For(t, 10*time.Second, "no member key left", func() (bool, string) {
		r, err := cli.Get(context.Background(), keys.Members(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return false, err.Error()
		}
		return r.Count == 0, fmt.Sprintf("%d member keys", r.Count)
	})
}

type countingOwner struct{ opens, losses atomic.Int64 }

func (o *countingOwner) opened(*session) bool { o.opens.Add(1); return true }
func (o *countingOwner) lost(*session)        { o.losses.Add(1) }
