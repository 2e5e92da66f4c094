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

// A settled keeper's loop skips its ticks, since every change that could
// give it work kicks it: a catalog change is applied at once, and a round
// still runs every quietResync in case a change went unnoticed.
func TestQuietLoopSkipsTicks(t *testing.T) {
	h := newHarness(t, 200)
	a := h.start("a")
	live := []*keeper{a}
	poll.For(t, 20*time.Second, "settled", h.settled(live))
	if _, err := a.c.TestSignals.QuietTick.Wait(20 * time.Second); err != nil {
		t.Fatalf("settled loop never skipped a tick: %v", err)
	}
	a.c.TestSignals.Round.Drain()
	for i := 0; i < 2; i++ {
		if _, err := a.c.TestSignals.QuietTick.Wait(10 * time.Second); err != nil {
			t.Fatalf("quiet tick %d: %v", i, err)
		}
	}
	if n := len(a.c.TestSignals.Round.C()); n > 0 {
		t.Fatalf("%d rounds ran between quiet ticks with nothing changed", n)
	}

	// A change kicks the loop: applied well before the next resync.
	h.catalog = append(h.catalog, queue.Shard{Queue: "late", Partition: 0})
	a.c.SetShards(h.catalog)
	poll.For(t, quietResync/2, "new shard owned", h.settled(live))

	// Nothing changes any more: once quiet again, the resync round comes
	// anyway, and not before its time.
	if _, err := a.c.TestSignals.QuietTick.Wait(10 * time.Second); err != nil {
		t.Fatalf("quiet again: %v", err)
	}
	quietAt := time.Now()
	a.c.TestSignals.Round.Drain()
	if _, err := a.c.TestSignals.Round.Wait(quietResync + 5*time.Second); err != nil {
		t.Fatalf("no resync round: %v", err)
	}
	if took := time.Since(quietAt); took < quietResync/2 {
		t.Fatalf("a round %s after the loop was quiet, with nothing changed", took)
	}
	h.w.check()
}

// A release whose transaction did not report success may still have
// deleted the key (the reply was lost). Until etcd shows the key gone, the
// unit's shards must not be owned again under the old token, even if the
// ring gives the unit back: a successor may hold the unit already, and our
// copy of etcd may not show it yet. The next round releases it again.
func TestReleaseWithoutReplyIsNotOwnedAgain(t *testing.T) {
	h := newHarness(t, 0)
	rec := newRecorder(h.w, "me")
	c := NewCoordinator(h.raw, Config{Prefix: "/t/", MemberID: "me", Ring: RingConfig{Units: testPartitions}, Logger: h.log}, rec)
	ctx := context.Background()
	s, err := c.member.open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.lease.Revoke(context.Background()) })
	c.opened(s)
	c.resetEpoch(s.epoch)
	c.st.ring = NewRing([]string{"me"}, c.ring)
	sh := queue.Shard{Queue: "q"}
	u := UnitOf(sh, testPartitions)
	c.st.byUnit = make([][]queue.Shard, testPartitions)
	c.st.byUnit[u] = []queue.Shard{sh}
	got, err := c.acquire(ctx, s, []int{u})
	if err != nil || len(got) != 1 {
		t.Fatalf("acquire: %v %v", got, err)
	}
	tok := got[0].token
	c.st.held[u], c.st.nheld = tok, 1
	c.syncUnits(s, got)
	if owned, _ := rec.snapshot(); owned[sh] != tok {
		t.Fatalf("shard not owned after the acquisition: %v", owned)
	}
	// The copy of etcd still shows our key.
	mirrorOwners := func(entry ownerEntry, rev int64) {
		c.owners.mu.Lock()
		c.owners.store.(*ownerStore).units[u] = entry
		c.owners.rev, c.owners.synced = rev, true
		c.owners.mu.Unlock()
	}
	mirrorOwners(ownerEntry{member: "me", create: tok, lease: int64(s.lease.ID())}, tok)

	// A release the ring asked for: its shards are disowned, and its
	// transaction reports no success (here: it is never sent) while the key
	// goes anyway (here: deleted by hand, as a committed delete whose reply
	// was lost).
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	c.runRound(cancelled, s, plan{release: []unitToken{{u, tok}}})
	if owned, _ := rec.snapshot(); len(owned) != 0 {
		t.Fatalf("shards owned after the release: %v", owned)
	}
	if _, err := h.raw.Delete(ctx, c.keys.Owner(u)); err != nil {
		t.Fatal(err)
	}

	// The ring still names us: the unit must be released again, not
	// owned again under tok.
	p, ok := c.decide(s)
	if !ok || len(p.release) != 1 || len(p.sync) != 0 || len(p.acquire) != 0 {
		t.Fatalf("decision after a release without reply: release %v, sync %v, acquire %v", p.release, p.sync, p.acquire)
	}
	c.syncUnits(s, p.sync)
	c.runRound(ctx, s, p)
	if owned, _ := rec.snapshot(); len(owned) != 0 {
		t.Fatalf("shards owned again under the released token: %v", owned)
	}
	// Once etcd shows the key gone, the unit is free, and acquired again
	// under a new token.
	r, err := h.raw.Get(ctx, c.keys.Owner(u))
	if err != nil {
		t.Fatal(err)
	}
	mirrorOwners(ownerEntry{}, r.Header.Revision)
	p, _ = c.decide(s)
	if len(p.acquire) != 1 || len(p.lost) != 0 {
		t.Fatalf("decision once the key is gone: acquire %v, lost %v", p.acquire, p.lost)
	}
	c.runRound(ctx, s, p)
	if owned, _ := rec.snapshot(); owned[sh] <= tok {
		t.Fatalf("shard owned under %d after the new acquisition, want above %d", owned[sh], tok)
	}
	h.w.check()
}

// decide's cost per round, at the default 98,304 units and 100,000 shards
// over three keepers, this one holding every unit the ring gives it (the
// rounds of a handoff, which run on every batch of watch events).
func BenchmarkDecide(b *testing.B) {
	c := NewCoordinator(nil, Config{MemberID: "k1"}, nil)
	s := &session{lease: &Lease{id: 42}}
	c.resetEpoch(s.epoch)
	c.st.ring = NewRing([]string{"k0", "k1", "k2"}, c.ring)
	shards := make([]queue.Shard, 100_000)
	for i := range shards {
		shards[i] = queue.Shard{Queue: fmt.Sprintf("q%d", i/100), Partition: i % 100}
	}
	c.SetShards(shards)
	c.refreshCatalog()
	units := c.owners.store.(*ownerStore).units
	for u := range units {
		if c.st.ring.owner[u] == c.id && len(c.st.byUnit[u]) > 0 {
			units[u] = ownerEntry{member: c.id, create: int64(100 + u), lease: 42}
			c.st.held[u], c.st.synced[u] = int64(100+u), c.st.catGen+1
			c.st.nheld++
		}
	}
	c.owners.rev, c.owners.synced = int64(100+len(units)), true
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if p, ok := c.decide(s); !ok || len(p.acquire)+len(p.release)+len(p.sync)+len(p.lost) != 0 {
			b.Fatalf("a settled keeper's round: %d to acquire, %d release, %d sync, %d lost",
				len(p.acquire), len(p.release), len(p.sync), len(p.lost))
		}
	}
	b.ReportMetric(float64(c.st.nheld), "held_units")
}
