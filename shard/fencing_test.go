package shard

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/queue"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestFenced(t *testing.T) {
	h := newHarness(t, 2000)
	live := []*keeper{h.start("a"), h.start("b")}
	poll.For(t, 30*time.Second, "settled", h.settled(live))
	a := live[0]
	owned, _ := a.rec.snapshot()
	// Pick two shards of A in different units, with unit siblings.
	byUnit := map[int][]queue.Shard{}
	for sh := range owned {
		u := UnitOf(sh, testPartitions)
		byUnit[u] = append(byUnit[u], sh)
	}
	var units []int
	for u, shs := range byUnit {
		if len(shs) >= 2 {
			units = append(units, u)
		}
	}
	sort.Ints(units)
	for _, shs := range byUnit {
		sort.Slice(shs, func(i, j int) bool { return shs[i].String() < shs[j].String() })
	}
	if len(units) < 2 {
		t.Fatalf("need two units with several shards, have %v", units)
	}

	// 1. Fence ahead of etcd: the key is still ours. The shard stays
	// dropped, its siblings stay owned.
	u1 := units[0]
	sh1 := byUnit[u1][0]
	tok1 := owned[sh1]
	a.rec.Disown([]queue.Shard{sh1}) // the listener drops it before reporting
	a.refusals.Report(sh1, tok1)
	poll.For(t, 10*time.Second, "fence handled", func() (bool, string) {
		_, ok := a.c.OwnedShards()[sh1]
		return !ok, "still in OwnedShards"
	})
	// Let the coordinator run full rounds in which it could (wrongly)
	// re-own it.
	a.c.TestSignals.Round.Drain()
	for i := 0; i < 2; i++ {
		a.c.kick()
		if _, err := a.c.TestSignals.Round.Wait(10 * time.Second); err != nil {
			t.Fatalf("round %d after the fence report: %v", i, err)
		}
	}
	poll.For(t, 10*time.Second, "siblings kept", func() (bool, string) {
		cur, _ := a.rec.snapshot()
		for _, sh := range byUnit[u1][1:] {
			if cur[sh] != tok1 {
				return false, sh.String() + " lost"
			}
		}
		return true, ""
	})
	if _, ok := a.c.OwnedShards()[sh1]; ok {
		t.Fatalf("fenced shard %s re-owned under the same token", sh1)
	}

	// 2. Unit lost: another token took the unit (here an intruder with its
	// own lease). A disowns the whole unit and leaves the key alone.
	u2 := units[1]
	sh2 := byUnit[u2][0]
	tok2 := owned[sh2]
	key := "/t/owners/" + fmt.Sprint(u2)
	g, err := h.raw.Grant(context.Background(), 30)
	if err != nil {
		t.Fatal(err)
	}
	// Overwriting keeps the CreateRevision: only the lease and value say
	// the key is no longer A's.
	if _, err := h.raw.Txn(context.Background()).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", tok2)).
		Then(clientv3.OpPut(key, "intruder", clientv3.WithLease(g.ID))).
		Commit(); err != nil {
		t.Fatal(err)
	}
	a.rec.Disown([]queue.Shard{sh2})
	a.refusals.Report(sh2, tok2)
	poll.For(t, 10*time.Second, "unit disowned", func() (bool, string) {
		cur, _ := a.rec.snapshot()
		for _, sh := range byUnit[u2] {
			if _, ok := cur[sh]; ok {
				return false, sh.String() + " still owned"
			}
		}
		return true, ""
	})
	r, err := h.raw.Get(context.Background(), key)
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "intruder" {
		t.Fatalf("intruder's key touched: %v %v", r, err)
	}
	// When the intruder goes, the ring's owner takes the unit back with a
	// higher token.
	if _, err := h.raw.Revoke(context.Background(), g.ID); err != nil {
		t.Fatal(err)
	}
	poll.For(t, 20*time.Second, "unit re-acquired", func() (bool, string) {
		for _, k := range live {
			cur, _ := k.rec.snapshot()
			if cur[sh2] > tok2 {
				return true, ""
			}
		}
		return false, "not re-acquired"
	})
	h.w.check()
}

// A shard dropped because its fence is ahead of etcd is claimed again after
// FenceRetry under the same token, and again after each further refusal: a
// fleet whose fences an operator reset resumes by itself.
func TestFenceAheadRetried(t *testing.T) {
	h := newHarness(t, 50)
	h.cfg.FenceRetry = 300 * time.Millisecond
	a := h.start("a")
	poll.For(t, 30*time.Second, "settled", h.settled([]*keeper{a}))
	owned, _ := a.rec.snapshot()
	var sh queue.Shard
	for s := range owned {
		if sh.Queue == "" || s.String() < sh.String() {
			sh = s
		}
	}
	tok := owned[sh]
	for round := 1; round <= 2; round++ {
		a.rec.Disown([]queue.Shard{sh})
		a.refusals.Report(sh, tok)
		poll.For(t, 10*time.Second, "fenced shard dropped", func() (bool, string) {
			_, ok := a.c.OwnedShards()[sh]
			return !ok, "still owned"
		})
		took := poll.For(t, 10*time.Second, "fenced shard claimed again", func() (bool, string) {
			cur, _ := a.rec.snapshot()
			return cur[sh] == tok, fmt.Sprintf("token %d, want %d", cur[sh], tok)
		})
		t.Logf("round %d: claimed again after %s (FenceRetry %s)", round, took.Round(time.Millisecond), h.cfg.FenceRetry)
	}
	h.w.check()
}
