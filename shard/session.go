package shard

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/internal/service"
)

// RequestTimeout bounds one etcd request of a part whose session TTL is
// ttl: the TTL, and at least 2s.
func RequestTimeout(ttl time.Duration) time.Duration { return max(2*time.Second, ttl) }

// session is one registration of this keeper: a lease and the member key
// bound to it. Tokens acquired under a session are only used while that
// session is live; a new session starts with no units.
type session struct {
	lease *Lease
	epoch uint64
	// registered is the revision of our member key's last put; only the
	// coordinator's loop reads and writes it.
	registered int64
}

// sessionOwner is told about sessions, in order: opened (false: the owner
// is stopping, and the session is given back), then lost when it ends,
// before any other session is opened.
type sessionOwner interface {
	opened(s *session) bool
	lost(s *session)
}

// member keeps this keeper registered in etcd: it opens a session, renews
// its lease with the send-time guard (Lease), and when the session ends it
// tells its owner first (who stops all housekeeping), gives the old lease
// back in the background (so successors need not wait for it to expire) and
// registers again under a new session. Stop stops renewing and revokes the
// lease, which deletes the member key and every key bound to the session
// (the ownership keys) in one step.
type member struct {
	base  service.Base
	cli   *clientv3.Client
	keys  Keys
	id    string
	ttl   time.Duration
	log   *slog.Logger
	owner sessionOwner

	mu        sync.Mutex
	cur       *session
	epochSeq  uint64
	endRenew  context.CancelFunc
	renewDone chan struct{}
	// gaveUp are the leases of this keeper's ended sessions until a revoke
	// confirms them gone. A session ends when no renewal was confirmed in
	// time, which is not proof that etcd dropped the lease: after a quorum
	// loss the new leader extends every lease by a whole TTL. Our member
	// key on such a lease must not keep us out of the ring until it expires
	// (the chaos harness measured 5-6s to one owner per shard after a
	// quorum loss, the bound being TTL+1s).
	gaveUp map[clientv3.LeaseID]*Lease
}

func newMember(cli *clientv3.Client, keys Keys, id string, ttl time.Duration, log *slog.Logger, owner sessionOwner) *member {
	return &member{cli: cli, keys: keys, id: id, ttl: ttl, log: log, owner: owner,
		gaveUp: map[clientv3.LeaseID]*Lease{}}
}

func (m *member) timeout() time.Duration { return RequestTimeout(m.ttl) }

// Start registers this keeper; it returns once registered or when ctx ends.
func (m *member) Start(ctx context.Context) error {
	startCtx, err := m.base.StartInit(ctx)
	if err != nil {
		return err
	}
	s, err := m.openRetry(startCtx)
	if err != nil {
		return m.base.StartDone(err)
	}
	renewCtx, endRenew := context.WithCancel(m.base.Life())
	m.mu.Lock()
	m.cur, m.endRenew, m.renewDone = s, endRenew, make(chan struct{})
	m.mu.Unlock()
	if !m.owner.opened(s) {
		endRenew()
		close(m.renewDone)
		return m.base.StartDone(nil)
	}
	m.base.Go(func(context.Context) { m.renew(renewCtx, s) })
	return m.base.StartDone(nil)
}

// Stop stops renewing and revokes the current lease.
func (m *member) Stop(ctx context.Context) error {
	return m.base.Halt(ctx, func(ctx context.Context) error {
		m.mu.Lock()
		endRenew, done := m.endRenew, m.renewDone
		m.mu.Unlock()
		endRenew()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("stop renewing: %w", ctx.Err())
		}
		m.mu.Lock()
		s := m.cur
		m.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, m.timeout())
		defer cancel()
		return s.lease.Revoke(rctx)
	})
}

// renew keeps the current session alive and replaces it when it is lost,
// until ctx ends.
func (m *member) renew(ctx context.Context, s *session) {
	defer close(m.renewDone)
	for {
		err := s.lease.Keep(ctx)
		if ctx.Err() != nil {
			return
		}
		m.log.Warn("session lost", "lease", s.lease.String(), "epoch", s.epoch, "err", err)
		m.owner.lost(s)
		// If etcd still has the lease (we gave up on it first), revoking
		// it frees our units for successors now instead of at its expiry.
		old := s.lease
		m.mu.Lock()
		m.gaveUp[old.ID()] = old
		m.mu.Unlock()
		m.base.Go(func(life context.Context) { m.revokeGivenUp(life, old) })
		next, err := m.openRetry(ctx)
		if err != nil {
			return
		}
		m.mu.Lock()
		m.cur = next
		m.mu.Unlock()
		if !m.owner.opened(next) {
			return
		}
		s = next
	}
}

// open grants a lease and registers the member key on it. A member key for
// our id that is bound to another lease belongs to a previous incarnation (a
// restarted pod keeps its name) or to a second keeper with the same id;
// either way we wait for it to go rather than take it over.
func (m *member) open(ctx context.Context) (*session, error) {
	// A member without a leader fails the request at once rather than
	// holding it until the timeout: a grant sent while etcd had no quorum
	// would otherwise delay registering by the whole timeout after the
	// quorum is back (the chaos harness measured 5s after etcd-quorum-loss).
	ctx = clientv3.WithRequireLeader(ctx)
	octx, cancel := context.WithTimeout(ctx, m.timeout())
	lease, err := GrantLease(octx, m.cli, m.ttl, m.log)
	cancel()
	if err != nil {
		return nil, err
	}
	key := m.keys.Member(m.id)
	octx, cancel = context.WithTimeout(ctx, m.timeout())
	resp, err := m.cli.Txn(octx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, m.id, clientv3.WithLease(lease.ID()))).
		Else(clientv3.OpGet(key)).
		Commit()
	cancel()
	if err == nil && !resp.Succeeded {
		var other int64
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			other = kvs[0].Lease
		}
		m.mu.Lock()
		mine := m.gaveUp[clientv3.LeaseID(other)]
		m.mu.Unlock()
		if mine != nil {
			// Our own lease from before the outage: give it back now
			// (our housekeeping under it has stopped) and register.
			err = m.revokeOnce(ctx, mine)
			if err == nil {
				octx, cancel = context.WithTimeout(ctx, m.timeout())
				resp, err = m.cli.Txn(octx).
					If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
					Then(clientv3.OpPut(key, m.id, clientv3.WithLease(lease.ID()))).
					Else(clientv3.OpGet(key)).
					Commit()
				cancel()
			}
		}
		if err == nil && !resp.Succeeded {
			err = fmt.Errorf("member id %q is registered under lease %x (a previous incarnation or a duplicate id); waiting for it to expire", m.id, other)
		}
	}
	if err != nil {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), m.timeout())
		_ = lease.Revoke(rctx)
		rcancel()
		return nil, fmt.Errorf("register member: %w", err)
	}
	m.mu.Lock()
	m.epochSeq++
	s := &session{lease: lease, epoch: m.epochSeq, registered: resp.Header.Revision}
	m.mu.Unlock()
	m.log.Info("registered", "lease", lease.String(), "ttl", lease.TTL(), "epoch", s.epoch)
	return s, nil
}

// openRetry retries open until it succeeds or ctx is done.
func (m *member) openRetry(ctx context.Context) (*session, error) {
	backoff := 100 * time.Millisecond
	for {
		s, err := m.open(ctx)
		if err == nil {
			return s, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("open session: %w (last error: %v)", ctx.Err(), err)
		}
		m.log.Warn("cannot open session, retrying", "in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("open session: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxOpenBackoff(m.ttl))
	}
}

// maxOpenBackoff bounds the wait between two tries to open a session. A try
// without an etcd leader fails at once and costs etcd nothing, so the wait
// stays short: each millisecond of it after the quorum is back is a
// millisecond without housekeeping.
func maxOpenBackoff(ttl time.Duration) time.Duration { return min(ttl/2, 500*time.Millisecond) }

// revokeOnce revokes a given-up lease and forgets it once etcd confirms.
func (m *member) revokeOnce(ctx context.Context, l *Lease) error {
	rctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), m.timeout())
	defer cancel()
	if err := l.Revoke(rctx); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.gaveUp, l.ID())
	m.mu.Unlock()
	return nil
}

// revokeGivenUp revokes a lease of an ended session until etcd confirms it
// gone or the member stops: during an etcd outage a single try fails, and
// the lease would then outlive the outage.
func (m *member) revokeGivenUp(life context.Context, l *Lease) {
	backoff := 100 * time.Millisecond
	for {
		err := m.revokeOnce(life, l)
		if err == nil || life.Err() != nil {
			return
		}
		m.log.Debug("revoke of a given-up lease failed, retrying", "lease", l.String(), "in", backoff, "err", err)
		select {
		case <-life.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, maxOpenBackoff(m.ttl))
	}
}

// reregister puts our member key back on the session's lease. Someone
// deleted it (an operator, a tool): without it the others' rings leave us
// out while we keep our units, and nobody would move.
func (m *member) reregister(ctx context.Context, s *session) {
	key := m.keys.Member(m.id)
	octx, cancel := context.WithTimeout(ctx, m.timeout())
	defer cancel()
	resp, err := m.cli.Txn(octx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, m.id, clientv3.WithLease(s.lease.ID()))).
		Commit()
	s.lease.CheckLost(err)
	if err != nil {
		m.log.Warn("cannot re-register member key", "err", err)
		return
	}
	if resp.Succeeded {
		s.registered = resp.Header.Revision
		m.log.Warn("member key was deleted while this keeper was alive; registered again")
	}
}

// leave deletes the member key, so that the others compute the ring without
// us while our work ends; the lease is revoked by Stop.
func (m *member) leave(ctx context.Context) error {
	octx, cancel := context.WithTimeout(ctx, m.timeout())
	defer cancel()
	if _, err := m.cli.Delete(octx, m.keys.Member(m.id)); err != nil {
		return fmt.Errorf("leave the ring: %w", err)
	}
	return nil
}
