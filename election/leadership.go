package election

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/shard"
)

// errNotLeader ends a candidacy whose Campaign returned without the
// candidate actually holding the oldest election key.
var errNotLeader = errors.New("campaign returned but this candidate is not the leader")

// term is one confirmed leadership.
type term struct {
	// lease is the candidacy's lease. Past its deadline (shard.Lease:
	// counted from the send time of the last renewal etcd acknowledged) a
	// successor may already lead, so we claim nothing even if no one told
	// us yet.
	lease *shard.Lease
	key   string // our election key
	rev   int64  // its CreateRevision
	// from is the revision after the one leadership was confirmed at.
	from int64
	snap atomic.Pointer[otel.GlobalSnapshot]
}

// run campaigns, leads and campaigns again until Stop.
func (a *Aggregator) run(ctx context.Context) {
	defer close(a.done)
	backoff := minBackoff
	for !a.isStopping() && ctx.Err() == nil {
		if a.cli.Ctx().Err() != nil {
			a.log.Error("etcd client closed; aggregator no longer campaigns")
			return
		}
		err := a.candidacy(ctx)
		if err == nil || a.isStopping() || ctx.Err() != nil {
			backoff = minBackoff
			continue
		}
		a.log.Warn("aggregator candidacy failed, retrying", "in", backoff, "err", err)
		select {
		case <-ctx.Done():
		case <-a.stopping:
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, a.cfg.SessionTTL)
	}
}

// candidacy runs one session: campaign, confirm, lead until leadership is
// lost, then give the lease back. A new session is needed after any loss,
// because our old key, if it still exists, no longer proves anything.
func (a *Aggregator) candidacy(ctx context.Context) error {
	octx, cancel := context.WithTimeout(ctx, a.timeout())
	lease, err := shard.GrantLease(octx, a.cli, a.cfg.SessionTTL, a.log)
	cancel()
	if err != nil {
		return fmt.Errorf("election lease: %w", err)
	}
	sess, err := concurrency.NewSession(a.cli, concurrency.WithLease(lease.ID()),
		concurrency.WithTTL(int(lease.TTL()/time.Second)), concurrency.WithContext(ctx))
	if err != nil {
		a.revoke(ctx, lease)
		return fmt.Errorf("election session: %w", err)
	}
	defer func() {
		sess.Orphan()
		a.revoke(ctx, lease)
	}()
	el := concurrency.NewElection(sess, a.keys.Election())

	// Campaign keeps waiting after the session is gone, and on Stop it must
	// give up; so it runs under a context that ends with either.
	cctx, ccancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-sess.Done():
		case <-a.stopping:
		case <-cctx.Done():
		}
		ccancel()
	}()
	err = el.Campaign(cctx, a.cfg.MemberID)
	ccancel()
	if err != nil {
		select {
		case <-sess.Done():
			a.log.Info("election session ended while campaigning", "lease", lease.String())
			return nil
		default:
		}
		if a.isStopping() || ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("campaign: %w", err)
	}
	t, err := a.confirm(ctx, sess, el, lease)
	if err != nil {
		return err
	}
	a.lead(ctx, sess, el, t)
	return nil
}

// confirm checks that Campaign's return means leadership: our lease is alive
// (renewed now, which moves its deadline) and our key is the oldest
// candidate, at its own create revision.
func (a *Aggregator) confirm(ctx context.Context, sess *concurrency.Session, el *concurrency.Election, lease *shard.Lease) (*term, error) {
	octx, cancel := context.WithTimeout(ctx, a.timeout())
	defer cancel()
	if err := lease.Renew(octx); err != nil {
		return nil, fmt.Errorf("confirm leadership: %w", err)
	}
	resp, err := a.cli.Get(octx, a.keys.Election()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return nil, fmt.Errorf("confirm leadership: read leader key: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w: no candidate key at revision %d", errNotLeader, resp.Header.Revision)
	}
	kv := resp.Kvs[0]
	if string(kv.Key) != el.Key() || kv.CreateRevision != el.Rev() || kv.Lease != int64(lease.ID()) {
		return nil, fmt.Errorf("%w: leader key %s created at %d, ours %s at %d", errNotLeader,
			kv.Key, kv.CreateRevision, el.Key(), el.Rev())
	}
	select {
	case <-sess.Done():
		return nil, fmt.Errorf("%w: session ended", errNotLeader)
	default:
	}
	return &term{lease: lease, key: el.Key(), rev: el.Rev(), from: resp.Header.Revision + 1}, nil
}

// lead holds leadership until the session ends, our key goes, the lease
// cannot be shown alive, or Stop; then it clears the term first of all.
func (a *Aggregator) lead(ctx context.Context, sess *concurrency.Session, el *concurrency.Election, t *term) {
	lctx, cancel := context.WithCancel(ctx)
	lost := make(chan string, 2)
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := t.lease.Keep(lctx); err != nil {
			lost <- err.Error()
		}
	}()
	go func() {
		defer wg.Done()
		if r := a.watchKey(lctx, t); r != "" {
			lost <- r
		}
	}()
	go func() {
		defer wg.Done()
		a.follow(lctx, t)
	}()
	a.term.Store(t)
	a.log.Info("aggregator leader", "lease", t.lease.String(), "rev", t.rev)

	var reason string
	resign := false
	select {
	case <-sess.Done():
		reason = "session ended"
	case reason = <-lost:
	case <-a.stopping:
		reason, resign = "stopping", true
	case <-ctx.Done():
		reason = "context done"
	}
	a.term.CompareAndSwap(t, nil)
	cancel()
	wg.Wait()
	if resign {
		rctx, rcancel := context.WithTimeout(ctx, a.timeout())
		if err := el.Resign(rctx); err != nil {
			a.log.Warn("resign failed; the lease revoke that follows ends the term", "err", err)
		}
		rcancel()
	}
	a.log.Info("aggregator leadership ended", "reason", reason, "lease", t.lease.String())
}

// watchKey returns once our election key is deleted (lease revoked or
// expired, or removed by hand), or "" when ctx ends. A watch that ends
// otherwise (etcd lost its leader, a restart) is replaced after checking the
// key directly.
func (a *Aggregator) watchKey(ctx context.Context, t *term) string {
	from := t.from
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range a.cli.Watch(wctx, t.key, clientv3.WithRev(from)) {
			if wr.Err() != nil {
				break
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					cancel()
					return "election key deleted"
				}
				from = ev.Kv.ModRevision + 1
			}
		}
		cancel()
		for ctx.Err() == nil {
			gctx, gcancel := context.WithTimeout(ctx, a.timeout())
			resp, err := a.cli.Get(gctx, t.key)
			gcancel()
			if err == nil {
				if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != t.rev {
					return "election key gone"
				}
				from = resp.Header.Revision + 1
				break
			}
			// Meanwhile the lease deadline bounds how long we still claim
			// leadership.
			select {
			case <-ctx.Done():
			case <-time.After(minBackoff):
			}
		}
	}
	return ""
}

func (a *Aggregator) revoke(ctx context.Context, lease *shard.Lease) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.timeout())
	defer cancel()
	if err := lease.Revoke(rctx); err != nil {
		a.log.Debug("revoke election lease", "lease", lease.String(), "err", err)
	}
}
