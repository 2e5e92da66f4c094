package shard

import (
	"context"
	"slices"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A unit transaction over keys our copy of etcd saw wrongly does what can
// be done: acquire takes the absent keys and leaves the others' alone;
// release deletes ours and leaves a key someone else holds now.
func TestUnitTxnWithAStaleView(t *testing.T) {
	h := newHarness(t, 0)
	c := NewCoordinator(h.raw, Config{Prefix: "/t/", MemberID: "me", Ring: RingConfig{Units: testPartitions}, Logger: h.log}, newRecorder(h.w, "me"))
	ctx := context.Background()
	s, err := c.member.open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.lease.Revoke(context.Background()) })
	other, err := h.raw.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.raw.Put(ctx, c.keys.Owner(2), "other", clientv3.WithLease(other.ID)); err != nil {
		t.Fatal(err)
	}
	got, err := c.acquire(ctx, s, []int{1, 2, 3})
	if err != nil {
		t.Fatal(err)
	}
	var units []int
	for _, ut := range got {
		units = append(units, ut.unit)
		if ut.token == 0 {
			t.Fatalf("unit %d acquired without a token", ut.unit)
		}
	}
	slices.Sort(units)
	if !slices.Equal(units, []int{1, 3}) {
		t.Fatalf("acquired %v, want [1 3]", units)
	}
	// Unit 2 is still the other's; releasing it under a made-up token
	// must not delete it, and unit 1 is released.
	done, err := c.release(ctx, []unitToken{{1, got[0].token}, {2, 12345}})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(done)
	if !slices.Equal(done, []int{1, 2}) {
		t.Fatalf("release settled %v, want [1 2]", done)
	}
	r, err := h.raw.Get(ctx, c.keys.Owners(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, kv := range r.Kvs {
		left = append(left, string(kv.Key)+"="+string(kv.Value))
	}
	if !slices.Equal(left, []string{"/t/owners/2=other", "/t/owners/3=me"}) {
		t.Fatalf("owner keys after release: %v", left)
	}
}

func TestBatches(t *testing.T) {
	items := make([]int, 300)
	if b := batches(items, 4); len(b) != 4 || len(b[0]) != 75 {
		t.Fatalf("300 items over 4: %d batches of %d", len(b), len(b[0]))
	}
	items = make([]int, 1000)
	for _, b := range batches(items, 4) {
		if len(b) > maxTxnOps {
			t.Fatalf("batch of %d", len(b))
		}
	}
	if b := batches([]int{}, 4); b != nil {
		t.Fatalf("batches of nothing: %v", b)
	}
}
