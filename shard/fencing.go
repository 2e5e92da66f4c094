package shard

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/queue"
)

// Refusals carries fence refusals from whoever writes to Redis (the task
// keeper, which has already dropped the refused shard) to the coordinator,
// which checks the unit's key in etcd. It is the one signal that flows
// against the data (tasks -> ownership), so it is a queue that both ends
// are given rather than a call from one into the other. Report never
// blocks.
type Refusals struct {
	mu     sync.Mutex
	list   []refusal
	notify chan struct{}
}

type refusal struct {
	shard queue.Shard
	token int64
}

// NewRefusals returns an empty queue of refusals.
func NewRefusals() *Refusals { return &Refusals{notify: make(chan struct{}, 1)} }

// Report says Redis refused token for s because a higher token wrote there;
// the caller has already stopped housekeeping s.
func (r *Refusals) Report(s queue.Shard, token int64) {
	r.mu.Lock()
	r.list = append(r.list, refusal{shard: s, token: token})
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *Refusals) take() []refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.list
	r.list = nil
	return l
}

func (r *Refusals) pending() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.list) > 0
}

func (r *Refusals) putBack(l []refusal) {
	r.mu.Lock()
	r.list = append(l, r.list...)
	r.mu.Unlock()
}

// aheadShard is a shard whose Redis fence is above the token etcd gave us
// for its unit: it is claimed again at retryAt (zero: retried already).
type aheadShard struct {
	token   int64
	retryAt time.Time
}

// handleRefusals checks each reported refusal against etcd. If the unit's
// key is no longer ours under that token, the whole unit is lost (its shards
// are disowned, its key left alone); if it still is (the fence is ahead of
// etcd, e.g. etcd's data was wiped), the shard stays dropped, is logged, and
// is claimed again after FenceRetry.
func (c *Coordinator) handleRefusals(ctx context.Context, s *session) {
	var retry []refusal
	for _, f := range c.refusals.take() {
		u := UnitOf(f.shard, c.ring.Units)
		t := c.st.held[u]
		if t == 0 || t != f.token {
			c.log.Info("fence report for a token no longer held, ignored", "shard", f.shard.String(), "queue", f.shard.Queue,
				"token", f.token, "unit", u, "held_token", t)
			continue
		}
		// The listener already dropped it; keep it dropped until we know.
		c.st.dropped[f.shard] = f.token
		delete(c.st.unitShards[u], f.shard)
		c.forget([]queue.Shard{f.shard})

		octx, cancel := context.WithTimeout(ctx, c.timeout())
		resp, err := c.cli.Get(octx, c.keys.Owner(u))
		cancel()
		if err != nil {
			c.log.Warn("cannot verify fence report, will retry", "shard", f.shard.String(), "queue", f.shard.Queue,
				"token", f.token, "err", err)
			retry = append(retry, f)
			continue
		}
		if len(resp.Kvs) > 0 && resp.Kvs[0].CreateRevision == t && clientv3.LeaseID(resp.Kvs[0].Lease) == s.lease.ID() {
			// Said once per shard and token at error level: after an etcd
			// reset every shard does this, every FenceRetry.
			log := c.log.Error
			if prev, ok := c.st.ahead[f.shard]; ok && prev.token == f.token {
				log = c.log.Debug
			}
			log("fence is ahead of etcd: Redis refused our token but etcd says the unit is ours (was etcd's data reset? see `keeper queue reset-fences`); shard dropped, retried later",
				"shard", f.shard.String(), "queue", f.shard.Queue, "token", f.token, "unit", u, "retry_in", c.cfg.FenceRetry.String())
			c.st.ahead[f.shard] = aheadShard{token: f.token, retryAt: time.Now().Add(c.cfg.FenceRetry)}
			continue
		}
		c.log.Warn("unit lost to a higher token", "shard", f.shard.String(), "queue", f.shard.Queue, "token", f.token, "unit", u)
		c.disown(c.takeUnit(u))
	}
	if len(retry) > 0 {
		c.refusals.putBack(retry)
	}
}

// retryPending reports whether a fence report waits to be verified again
// (etcd did not answer) or a dropped shard waits for its retry time: work
// that only the loop's tick gets done.
func (c *Coordinator) retryPending() bool {
	if c.refusals.pending() {
		return true
	}
	for _, a := range c.st.ahead {
		if !a.retryAt.IsZero() {
			return true
		}
	}
	return false
}

// retryAhead undrops the shards whose retry time has come, so the next sync
// of their unit owns them again under the same token; if the fence is still
// ahead, the claim is refused and reported once more.
func (c *Coordinator) retryAhead() {
	now := time.Now()
	for sh, a := range c.st.ahead {
		if a.retryAt.IsZero() || now.Before(a.retryAt) {
			continue
		}
		if c.st.dropped[sh] == a.token {
			delete(c.st.dropped, sh)
			c.st.synced[UnitOf(sh, c.ring.Units)] = 0
		}
		// The entry stays, without a retry time, so that a refusal of the
		// same token again is logged quietly.
		c.st.ahead[sh] = aheadShard{token: a.token}
	}
}
