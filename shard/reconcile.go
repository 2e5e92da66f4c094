package shard

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// settle is how long no member may have joined before the ring is
// recomputed, so that keepers starting together do not hand units around
// once per arrival; maxSettle bounds the wait under churn. A member that
// leaves (a handoff, a crash) is not waited for: its units are free, or
// about to be, and every millisecond until the ring is recomputed is a
// millisecond of the takeover.
const (
	settle    = 50 * time.Millisecond
	maxSettle = time.Second
)

// quietResync is how often a loop with nothing to do reconciles anyway. A
// round compares every unit of the ring (98,304 by default) with etcd,
// whatever the keeper's share of the shards: about 1 ms of a keeper's CPU
// in `bench scaleout` (2,000 shards over eight keepers), 1–2 % of what it
// spends there when repeated every second for nothing. Every change
// that can give the loop work kicks it (the mirrors' watches, the session,
// the catalog, fence reports), so the ticks only retry what failed, and
// retry a fenced shard when its time comes; a quiet loop skips them, but
// still reconciles this often in case a change went unnoticed.
const quietResync = 10 * time.Second

// loopState is the reconcile loop's own state; only the loop goroutine
// touches it.
type loopState struct {
	epoch      uint64
	held       []int64 // unit -> token (0: not held), this session
	nheld      int
	unitShards map[int]map[queue.Shard]struct{} // shards told Own, per unit
	synced     []uint64                         // unit -> catalog generation + 1 its shards match (0: none)
	dropped    map[queue.Shard]int64            // fenced shards kept dropped, with the token
	ahead      map[queue.Shard]aheadShard       // dropped because the fence is ahead of etcd
	// releasing are held units whose shards were disowned for a release
	// that did not report success: the key may be gone already (the reply
	// was lost), so they are released again, never owned again, until
	// etcd shows their key gone or replaced.
	releasing map[int]bool
	ring      *Ring
	catGen    uint64
	// byUnit is the catalog's shards by unit: a slice, since decide
	// looks up every unit the ring gives this keeper in every round (with
	// maps, decide's lookups were 7 % of the machine's CPU during a
	// handoff of 100,000 shards, BenchmarkDecide).
	byUnit [][]queue.Shard
	// quiet: the last round found nothing to do and left nothing to
	// retry (see quietResync), at lastRound.
	quiet     bool
	lastRound time.Time
}

// loop reconciles whenever a watch, the catalog, the session or a fence
// report changes something, and every TTL/3 (at least every 500ms) while
// something failed or waits for its retry time, as when etcd was
// unreachable; a quiet loop every quietResync.
func (c *Coordinator) loop(ctx context.Context) {
	tick := time.NewTicker(max(c.cfg.SessionTTL/3, 500*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kickCh:
		case <-c.refusals.notify:
		case <-tick.C:
			if c.st.quiet && time.Since(c.st.lastRound) < quietResync {
				c.TestSignals.QuietTick.Signal(struct{}{})
				continue
			}
		}
		c.waitSettled(ctx)
		if ctx.Err() != nil {
			return
		}
		c.st.quiet = c.reconcile(ctx)
		c.st.lastRound = time.Now()
		c.TestSignals.Round.Signal(struct{}{})
	}
}

func (c *Coordinator) waitSettled(ctx context.Context) {
	start := time.Now()
	for {
		since := c.members.sinceJoin()
		if since >= settle || time.Since(start) >= maxSettle {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(settle - since):
		}
	}
}

func (c *Coordinator) resetEpoch(epoch uint64) {
	c.st.epoch = epoch
	c.st.held = make([]int64, c.ring.Units)
	c.st.nheld = 0
	c.st.unitShards = map[int]map[queue.Shard]struct{}{}
	c.st.synced = make([]uint64, c.ring.Units)
	c.st.dropped = map[queue.Shard]int64{}
	c.st.ahead = map[queue.Shard]aheadShard{}
	c.st.releasing = map[int]bool{}
}

func (c *Coordinator) memberSnapshot() ([]string, int64, bool) {
	c.members.mu.Lock()
	defer c.members.mu.Unlock()
	if !c.members.synced {
		return nil, 0, false
	}
	ids := c.members.store.(*memberStore).ids
	out := make([]string, 0, len(ids)+1)
	for id := range ids {
		out = append(out, id)
	}
	return out, c.members.rev, true
}

func (c *Coordinator) refreshCatalog() {
	c.catMu.Lock()
	gen, cat := c.catGen, c.catalog
	c.catMu.Unlock()
	if gen == c.st.catGen && c.st.byUnit != nil {
		return
	}
	by := make([][]queue.Shard, c.ring.Units)
	for _, sh := range cat {
		u := UnitOf(sh, c.ring.Units)
		by[u] = append(by[u], sh)
	}
	c.st.byUnit, c.st.catGen = by, gen
}

// updateRing recomputes the ring when the member set changed.
func (c *Coordinator) updateRing(members []string) {
	if c.st.ring == nil {
		c.st.ring = NewRing(members, c.ring)
		return
	}
	ms := normalize(members)
	if slices.Equal(ms, c.st.ring.members) {
		return
	}
	prev := c.st.ring
	start := time.Now()
	c.st.ring = prev.Next(ms)
	c.log.Info("ring changed", "members", len(ms), "moved_units", prev.Moved(c.st.ring),
		"my_units", len(c.st.ring.units[c.id]), "took", time.Since(start).Round(time.Millisecond))
}

// plan is what one round does: units to acquire, to release (the ring moved
// them away), lost (their key is gone or someone else's), and held units
// whose shards no longer match the catalog.
type plan struct {
	acquire             []int
	release, lost, sync []unitToken
	lostTo              []ownerEntry
}

func (p plan) empty() bool {
	return len(p.acquire)+len(p.release)+len(p.lost)+len(p.sync) == 0
}

// reconcile moves this keeper towards what the ring says: acquire units it
// should own whose keys are free, release units the ring moved away, drop
// units whose keys are gone, and keep each held unit's shards in line with
// the catalog. It reports whether the round was quiet: it found nothing to
// do and left nothing to retry.
func (c *Coordinator) reconcile(ctx context.Context) (quiet bool) {
	s, live := c.currentSession()
	if s == nil {
		return false
	}
	if s.epoch != c.st.epoch {
		c.resetEpoch(s.epoch)
	}
	if !live {
		return false
	}
	members, mrev, ok := c.memberSnapshot()
	if !ok {
		return false
	}
	registered := slices.Contains(members, c.id)
	if !registered {
		if mrev >= s.registered {
			c.member.reregister(ctx, s)
		}
		// Until the watch shows it, count ourselves in anyway.
		members = append(members, c.id)
	}
	c.updateRing(members)
	c.refreshCatalog()
	c.handleRefusals(ctx, s)
	c.retryAhead()

	p, ok := c.decide(s)
	if !ok {
		return false
	}
	c.syncUnits(s, p.sync)
	for i, ut := range p.lost {
		c.log.Warn("unit lost: its key is gone or replaced", "unit", ut.unit, "token", ut.token,
			"now", p.lostTo[i].member, "now_token", p.lostTo[i].create)
	}
	c.runRound(ctx, s, p)
	return registered && p.empty() && len(c.st.releasing) == 0 && !c.retryPending()
}

// decide compares every unit's ownership key with the ring, under the
// mirror's lock: copying the whole table every round cost more than
// everything else at 98304 units.
func (c *Coordinator) decide(s *session) (plan, bool) {
	var p plan
	ring := c.st.ring
	c.owners.mu.Lock()
	defer c.owners.mu.Unlock()
	if !c.owners.synced {
		return p, false
	}
	owners := c.owners.store.(*ownerStore).units
	orev := c.owners.rev
	lease := int64(s.lease.ID())
	for u := range owners {
		e := &owners[u]
		// Only units that hold shards are owned: etcd keys, handoffs and
		// takeovers then scale with the shards a fleet has, never with
		// the ring's unit count.
		// Shards first: most units hold none when the fleet has fewer
		// shards than the ring has units, and their owner ids need not
		// be compared.
		mine := len(c.st.byUnit[u]) > 0 && ring.owner[u] == c.id
		t := c.st.held[u]
		if t == 0 && e.create != 0 && e.lease == lease {
			// Acquired under this session but the reply was lost.
			t = e.create
			c.st.held[u] = t
			c.st.nheld++
		}
		held := t != 0
		switch {
		case held && orev >= t && (e.create != t || e.lease != lease):
			if c.st.releasing[u] {
				// Our own release went through after all.
				delete(c.st.releasing, u)
				c.dropHeld(u)
				continue
			}
			p.lost = append(p.lost, unitToken{u, t})
			p.lostTo = append(p.lostTo, *e)
		case held && (!mine || c.st.releasing[u]):
			p.release = append(p.release, unitToken{u, t})
		case held:
			if c.st.synced[u] != c.st.catGen+1 {
				p.sync = append(p.sync, unitToken{u, t})
			}
		case mine && e.create == 0:
			p.acquire = append(p.acquire, u)
		}
	}
	return p, true
}

// syncUnits makes the shards told Own for held units match the catalog:
// the shards a unit lost are disowned in one call, the ones it gained are
// owned in one call per token.
func (c *Coordinator) syncUnits(s *session, uts []unitToken) {
	var del []queue.Shard
	add := map[int64][]queue.Shard{}
	for _, ut := range uts {
		u, t := ut.unit, ut.token
		cur := c.st.unitShards[u]
		if cur == nil {
			cur = map[queue.Shard]struct{}{}
			c.st.unitShards[u] = cur
		}
		want := make(map[queue.Shard]struct{}, len(c.st.byUnit[u]))
		for _, sh := range c.st.byUnit[u] {
			if dt, ok := c.st.dropped[sh]; ok && dt == t {
				continue
			}
			want[sh] = struct{}{}
			if _, ok := cur[sh]; !ok {
				add[t] = append(add[t], sh)
			}
		}
		for sh := range cur {
			if _, ok := want[sh]; !ok {
				del = append(del, sh)
				delete(cur, sh)
			}
		}
	}
	c.disown(del)
	owned := map[int64]bool{}
	for t, shards := range add {
		owned[t] = c.own(s, shards, t)
	}
	for _, ut := range uts {
		if len(add[ut.token]) > 0 && !owned[ut.token] {
			continue // the session is over: nothing is ours
		}
		cur := c.st.unitShards[ut.unit]
		for _, sh := range c.st.byUnit[ut.unit] {
			if dt, ok := c.st.dropped[sh]; !ok || dt != ut.token {
				cur[sh] = struct{}{}
			}
		}
		c.st.synced[ut.unit] = c.st.catGen + 1
	}
}

// roundResult is one batch's outcome, applied by the loop goroutine.
type roundResult struct {
	acquired []unitToken // one transaction: one token
	released []int       // keys deleted (or no longer ours): stop tracking
	lost     int
}

// runRound acquires and releases in parallel batches and applies results as
// they arrive, so a slow Disown does not hold back acquisitions. Each batch
// is one etcd transaction and one call to the listener.
func (c *Coordinator) runRound(ctx context.Context, s *session, p plan) {
	if len(p.acquire)+len(p.release)+len(p.lost) == 0 {
		return
	}
	start := time.Now()
	results := make(chan roundResult)
	var wg sync.WaitGroup
	conc := c.cfg.AcquireConcurrency
	if len(p.lost) > 0 {
		// Lost units: disown only; the keys are not ours to delete.
		var shards []queue.Shard
		for _, ut := range p.lost {
			shards = append(shards, c.takeUnit(ut.unit)...)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.disown(shards)
			results <- roundResult{lost: len(p.lost)}
		}()
	}
	relBatches := batches(p.release, conc)
	relShards := make([][]queue.Shard, len(relBatches))
	for i, b := range relBatches {
		for _, ut := range b {
			relShards[i] = append(relShards[i], c.takeUnitShards(ut.unit)...)
		}
	}
	for _, ut := range p.release {
		// Until the release is confirmed, the unit is never owned again.
		c.st.releasing[ut.unit] = true
	}
	c.parallel(&wg, len(relBatches), conc, func(i int) {
		c.disown(relShards[i])
		done, err := c.release(ctx, relBatches[i])
		if err != nil && ctx.Err() == nil {
			c.log.Warn("release failed, will retry", "units", len(relBatches[i]), "err", err)
		}
		results <- roundResult{released: done}
	})
	acqBatches := batches(p.acquire, conc)
	c.parallel(&wg, len(acqBatches), conc, func(i int) {
		if !s.lease.Alive() {
			// Each try under a lease etcd dropped is still a raft
			// proposal: an overloaded etcd that expired our lease was
			// kept overloaded by thousands of them (14,477 in one
			// converge run of 20 keepers on 100,000 shards on a loaded
			// machine). The next session acquires these units.
			results <- roundResult{}
			return
		}
		got, err := c.acquire(ctx, s, acqBatches[i])
		if err != nil && ctx.Err() == nil {
			c.log.Warn("acquire failed", "units", len(acqBatches[i]), "err", err)
		}
		results <- roundResult{acquired: got}
	})
	go func() {
		wg.Wait()
		close(results)
	}()
	nAcq, nRel, nLost := 0, 0, 0
	for r := range results {
		for _, ut := range r.acquired {
			if c.st.held[ut.unit] == 0 {
				c.st.nheld++
			}
			c.st.held[ut.unit] = ut.token
			c.st.synced[ut.unit] = 0
		}
		c.syncUnits(s, r.acquired)
		nAcq += len(r.acquired)
		for _, u := range r.released {
			c.dropHeld(u)
			delete(c.st.releasing, u)
		}
		nRel += len(r.released)
		nLost += r.lost
	}
	if nAcq+nRel+nLost > 0 {
		c.log.Debug("round", "acquired", nAcq, "released", nRel, "lost", nLost, "held", c.st.nheld,
			"took", time.Since(start).Round(time.Millisecond))
	}
}

// parallel runs f(0..n-1) on up to conc goroutines counted in wg, and
// returns at once.
func (c *Coordinator) parallel(wg *sync.WaitGroup, n, conc int, f func(i int)) {
	next := make(chan int, n)
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	for w := 0; w < min(conc, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
}

func (c *Coordinator) dropHeld(u int) {
	if c.st.held[u] != 0 {
		c.st.held[u] = 0
		c.st.nheld--
	}
}

// takeUnitShards forgets a unit's shards (the caller disowns them) so a
// later sync starts from nothing.
func (c *Coordinator) takeUnitShards(u int) []queue.Shard {
	out := make([]queue.Shard, 0, len(c.st.unitShards[u]))
	for sh := range c.st.unitShards[u] {
		out = append(out, sh)
	}
	delete(c.st.unitShards, u)
	c.st.synced[u] = 0
	return out
}

// takeUnit stops holding a unit that is lost and returns its shards.
func (c *Coordinator) takeUnit(u int) []queue.Shard {
	shards := c.takeUnitShards(u)
	c.dropHeld(u)
	delete(c.st.releasing, u)
	return shards
}
