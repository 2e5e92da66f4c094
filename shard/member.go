package shard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// session is one registration of this keeper: a lease and the member key
// bound to it. Tokens acquired under a session are only used while that
// session is live; a new session starts with no units.
type session struct {
	lease clientv3.LeaseID
	epoch uint64
	ka    *keepalive
	// registered is the revision of our member key's last put.
	registered int64
}

// keepalive renews a lease and decides locally when it must be considered
// lost. etcd expires a lease TTL after the server processed the last renewal,
// which is after the client sent it; so once TTL has passed since the send
// time of the last acknowledged renewal, a successor may already hold our
// units. concurrency.Session would only notice when the client's keepalive
// stream fails, possibly much later, which is why the lease is renewed here
// with KeepAliveOnce and a known send time.
type keepalive struct {
	cli      *clientv3.Client
	lease    clientv3.LeaseID
	ttl      time.Duration
	margin   time.Duration
	deadline time.Time
	log      *slog.Logger
	// renewed is called after each acknowledged renewal; tests use it.
	renewed func()
	// gone is closed when another request learnt that etcd no longer has
	// the lease, so the session ends without waiting for the next renewal.
	gone     chan struct{}
	goneOnce sync.Once
}

func (k *keepalive) leaseGone() { k.goneOnce.Do(func() { close(k.gone) }) }

// errLeaseExpired reports that the lease is over, by etcd's word or by the
// local deadline.
var errLeaseExpired = errors.New("lease expired")

// run renews the lease every TTL/3 until ctx is done (returns nil) or the
// lease is lost (returns why).
func (k *keepalive) run(ctx context.Context) error {
	interval := k.ttl / 3
	retry := min(interval, 200*time.Millisecond)
	wait := interval
	for {
		remaining := time.Until(k.deadline)
		if remaining <= 0 {
			return fmt.Errorf("no renewal acknowledged within %s: %w", k.ttl, errLeaseExpired)
		}
		// Renew early when the deadline is near, e.g. after a slow Grant:
		// the deadline counts from when the grant was sent.
		timer := time.NewTimer(min(wait, remaining/2))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-k.gone:
			timer.Stop()
			return fmt.Errorf("etcd no longer knows lease %x: %w", int64(k.lease), errLeaseExpired)
		case <-timer.C:
		}
		if time.Until(k.deadline) <= 0 {
			continue
		}
		sent := time.Now()
		// A renewal that comes back after the deadline is of no use.
		rctx, cancel := context.WithDeadline(ctx, k.deadline)
		resp, err := k.cli.KeepAliveOnce(rctx, k.lease)
		cancel()
		switch {
		case err == nil:
			k.deadline = sent.Add(time.Duration(resp.TTL)*time.Second - k.margin)
			wait = interval
			if k.renewed != nil {
				k.renewed()
			}
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			return fmt.Errorf("etcd no longer knows lease %x: %w", int64(k.lease), errLeaseExpired)
		case ctx.Err() != nil:
			return nil
		default:
			k.log.Warn("lease renewal failed", "lease", fmt.Sprintf("%x", int64(k.lease)),
				"left", time.Until(k.deadline).Round(time.Millisecond), "err", err)
			wait = retry
		}
	}
}

// ttlSeconds is the lease TTL etcd is asked for: whole seconds, at least 2
// (etcd refuses shorter leases, roughly 1.5 × its election timeout).
func ttlSeconds(d time.Duration) int64 {
	s := int64((d + time.Second - 1) / time.Second)
	return max(s, 2)
}

// openSession grants a lease and registers the member key on it. A member
// key for our id that is bound to another lease belongs to a previous
// incarnation (a restarted pod keeps its name) or to a second keeper with the
// same id; either way we wait for it to go rather than take it over.
func (c *Coordinator) openSession(ctx context.Context) (*session, *keepalive, error) {
	ttl := ttlSeconds(c.cfg.SessionTTL)
	sent := time.Now()
	// A member without a leader fails the request at once rather than
	// holding it until the timeout: a grant sent while etcd had no quorum
	// would otherwise delay registering by the whole timeout after the
	// quorum is back (the chaos harness measured 5s after etcd-quorum-loss).
	ctx = clientv3.WithRequireLeader(ctx)
	octx, cancel := context.WithTimeout(ctx, c.opTimeout())
	g, err := c.cli.Grant(octx, ttl)
	cancel()
	if err != nil {
		return nil, nil, fmt.Errorf("grant lease: %w", err)
	}
	key := c.memberKey(c.id)
	octx, cancel = context.WithTimeout(ctx, c.opTimeout())
	resp, err := c.cli.Txn(octx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, c.id, clientv3.WithLease(g.ID))).
		Else(clientv3.OpGet(key)).
		Commit()
	cancel()
	if err == nil && !resp.Succeeded {
		var other int64
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
			other = kvs[0].Lease
		}
		err = fmt.Errorf("member id %q is registered under lease %x (a previous incarnation or a duplicate id); waiting for it to expire", c.id, other)
	}
	if err != nil {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), c.opTimeout())
		_, _ = c.cli.Revoke(rctx, g.ID)
		rcancel()
		return nil, nil, fmt.Errorf("register member: %w", err)
	}
	ttlD := time.Duration(g.TTL) * time.Second
	k := &keepalive{
		cli:      c.cli,
		lease:    g.ID,
		ttl:      ttlD,
		margin:   ttlD / 10,
		deadline: sent.Add(ttlD - ttlD/10),
		log:      c.log,
		renewed:  c.renewedHook,
		gone:     make(chan struct{}),
	}
	c.epochSeq++
	s := &session{lease: g.ID, epoch: c.epochSeq, ka: k, registered: resp.Header.Revision}
	c.log.Info("registered", "lease", fmt.Sprintf("%x", int64(g.ID)), "ttl", ttlD, "epoch", s.epoch)
	return s, k, nil
}

// reregister puts our member key back on the session's lease. Someone
// deleted it (an operator, a tool): without it the others' rings leave us
// out while we keep our units, and nobody would move.
func (c *Coordinator) reregister(ctx context.Context, s *session) {
	key := c.memberKey(c.id)
	octx, cancel := context.WithTimeout(ctx, c.opTimeout())
	defer cancel()
	resp, err := c.cli.Txn(octx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, c.id, clientv3.WithLease(s.lease))).
		Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.ka.leaseGone()
	}
	if err != nil {
		c.log.Warn("cannot re-register member key", "err", err)
		return
	}
	if resp.Succeeded {
		s.registered = resp.Header.Revision
		c.log.Warn("member key was deleted while this keeper was alive; registered again")
	}
}

// openSessionRetry retries openSession until it succeeds or ctx is done.
func (c *Coordinator) openSessionRetry(ctx context.Context) (*session, *keepalive, error) {
	backoff := 100 * time.Millisecond
	for {
		s, k, err := c.openSession(ctx)
		if err == nil {
			return s, k, nil
		}
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("open session: %w (last error: %v)", ctx.Err(), err)
		}
		c.log.Warn("cannot open session, retrying", "in", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("open session: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, c.cfg.SessionTTL/2)
	}
}

// runSessions keeps this keeper registered: it renews the current session
// and, when it is lost, stops all housekeeping first (loseSession), then
// opens a new one.
func (c *Coordinator) runSessions(ctx context.Context, s *session, k *keepalive) {
	defer c.sessWG.Done()
	for {
		err := k.run(ctx)
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("session lost", "lease", fmt.Sprintf("%x", int64(s.lease)), "epoch", s.epoch, "err", err)
		c.loseSession(s)
		// If etcd still has the lease (we gave up on it first), revoking it
		// frees our units for successors now instead of at its expiry.
		old := s.lease
		c.sessWG.Add(1)
		go func() {
			defer c.sessWG.Done()
			rctx, cancel := context.WithTimeout(ctx, c.cfg.SessionTTL)
			defer cancel()
			if _, err := c.cli.Revoke(rctx, old); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) && ctx.Err() == nil {
				c.log.Debug("revoke of lost lease failed", "lease", fmt.Sprintf("%x", int64(old)), "err", err)
			}
		}()
		if c.isStopping() {
			return
		}
		s, k, err = c.openSessionRetry(ctx)
		if err != nil {
			return
		}
		if c.isStopping() {
			return
		}
		c.publish(s)
	}
}

func randomID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand does not fail on Linux; a fixed id would be worse
		// than a crash only if two keepers shared it.
		panic(fmt.Sprintf("random member id: %v", err))
	}
	return hex.EncodeToString(b[:])
}

// validMemberID keeps ids usable as one etcd key segment and as ring member
// names (printable, no '/', no NUL; see ringHasher).
func validMemberID(id string) error {
	if id == "" || len(id) > 253 {
		return fmt.Errorf("member id %q: length must be 1..253", id)
	}
	for _, r := range id {
		if r <= ' ' || r > '~' || r == '/' {
			return fmt.Errorf("member id %q: only printable ASCII without spaces or '/' is allowed", id)
		}
	}
	return nil
}

// mirror keeps a local copy of every key under a prefix: a Get, then a Watch
// from the Get's revision; when the watch is compacted, cancelled or fails it
// lists again. The copy keeps serving while etcd is unreachable.
type mirror struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger
	kick   func()
	store  mirrorStore

	mu      sync.Mutex
	rev     int64 // the copy reflects every change up to rev
	synced  bool
	changed time.Time // last change of the key set
}

type mirrorStore interface {
	reset(kvs []*mvccpb.KeyValue)
	put(kv *mvccpb.KeyValue) (keySetChanged bool)
	del(key string) (keySetChanged bool)
}

func (m *mirror) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := m.cli.Get(gctx, m.prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.log.Warn("list failed", "prefix", m.prefix, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		m.mu.Lock()
		m.store.reset(resp.Kvs)
		m.rev = resp.Header.Revision
		m.synced = true
		m.changed = time.Now()
		m.mu.Unlock()
		m.kick()
		m.watch(ctx, resp.Header.Revision+1)
	}
}

func (m *mirror) watch(ctx context.Context, from int64) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := m.cli.Watch(wctx, m.prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
	for wr := range wch {
		if err := wr.Err(); err != nil {
			if ctx.Err() == nil {
				m.log.Info("watch ended, listing again", "prefix", m.prefix, "err", err)
			}
			return
		}
		m.mu.Lock()
		changed := false
		for _, ev := range wr.Events {
			switch ev.Type {
			case mvccpb.PUT:
				changed = m.store.put(ev.Kv) || changed
			case mvccpb.DELETE:
				changed = m.store.del(string(ev.Kv.Key)) || changed
			}
			m.rev = max(m.rev, ev.Kv.ModRevision)
		}
		if wr.IsProgressNotify() {
			m.rev = max(m.rev, wr.Header.Revision)
		}
		if changed {
			m.changed = time.Now()
		}
		m.mu.Unlock()
		if len(wr.Events) > 0 {
			m.kick()
		}
	}
}

// memberStore is the set of live member ids.
type memberStore struct {
	prefix string
	ids    map[string]struct{}
}

func (s *memberStore) reset(kvs []*mvccpb.KeyValue) {
	s.ids = make(map[string]struct{}, len(kvs))
	for _, kv := range kvs {
		s.ids[strings.TrimPrefix(string(kv.Key), s.prefix)] = struct{}{}
	}
}

func (s *memberStore) put(kv *mvccpb.KeyValue) bool {
	id := strings.TrimPrefix(string(kv.Key), s.prefix)
	if _, ok := s.ids[id]; ok {
		return false
	}
	s.ids[id] = struct{}{}
	return true
}

func (s *memberStore) del(key string) bool {
	id := strings.TrimPrefix(key, s.prefix)
	if _, ok := s.ids[id]; !ok {
		return false
	}
	delete(s.ids, id)
	return true
}

// ownerEntry is one unit's ownership key as last seen.
type ownerEntry struct {
	member string
	create int64 // the token
	lease  int64
}

// ownerStore holds the ownership keys, indexed by unit.
type ownerStore struct {
	prefix string
	units  []ownerEntry // create == 0: no key
}

func (s *ownerStore) unit(key string) (int, bool) {
	u, err := strconv.Atoi(strings.TrimPrefix(key, s.prefix))
	if err != nil || u < 0 || u >= len(s.units) {
		return 0, false
	}
	return u, true
}

func (s *ownerStore) reset(kvs []*mvccpb.KeyValue) {
	clear(s.units)
	for _, kv := range kvs {
		s.put(kv)
	}
}

func (s *ownerStore) put(kv *mvccpb.KeyValue) bool {
	if u, ok := s.unit(string(kv.Key)); ok {
		s.units[u] = ownerEntry{member: string(kv.Value), create: kv.CreateRevision, lease: kv.Lease}
	}
	return true
}

func (s *ownerStore) del(key string) bool {
	if u, ok := s.unit(key); ok {
		s.units[u] = ownerEntry{}
	}
	return true
}
