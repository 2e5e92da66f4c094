package shard

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/queue"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// A catalog change writes to etcd only for units that gain their first
// shard or lose their last one: keys track the shards, never more.
func TestCatalogChangesWriteOnlyChangedUnits(t *testing.T) {
	h := newHarness(t, 200)
	live := []*keeper{h.start("a"), h.start("b")}
	poll.For(t, 20*time.Second, "settled", h.settled(live))
	rev := func() int64 {
		r, err := h.raw.Get(context.Background(), "/t/ring")
		if err != nil {
			t.Fatal(err)
		}
		return r.Header.Revision
	}
	before := rev()
	old := usedUnitSet(h.catalog)
	h.catalog = append(h.catalog[50:], queue.Shard{Queue: "new-queue", Partition: 0}, queue.Shard{Queue: "new-queue", Partition: 1})
	now := usedUnitSet(h.catalog)
	changed := 0
	for u := range old {
		if !now[u] {
			changed++
		}
	}
	for u := range now {
		if !old[u] {
			changed++
		}
	}
	for _, k := range live {
		k.c.SetShards(h.catalog)
	}
	poll.For(t, 20*time.Second, "catalog applied", h.settled(live))
	poll.For(t, 20*time.Second, "emptied units released", func() (bool, string) {
		r, err := h.raw.Get(context.Background(), "/t/owners/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return false, err.Error()
		}
		return int(r.Count) == len(now), fmt.Sprintf("%d owner keys, %d used units", r.Count, len(now))
	})
	// Each changed unit costs one acquire or one release; batches of
	// them share a revision, so this is an upper bound.
	if after := rev(); after-before > int64(changed) {
		t.Fatalf("catalog change of %d units wrote %d revisions", changed, after-before)
	}
	h.w.check()
}
