// Package shard decides which keeper owns which shard: membership in etcd,
// the consistent-hash ring over the live members, and ownership of ring
// units with fencing tokens. It knows a shard by its identity (queue.Shard)
// and nothing of Redis.
//
// The Coordinator registers this keeper (member, session.go), mirrors the
// members and the ownership keys (mirror.go), computes the ring (ring.go),
// decides what to take and give (reconcile.go), writes ownership keys in
// unit transactions (units.go), checks fence refusals (fencing.go), and
// tells a Listener which shards this keeper houses. The etcd key layout is
// Keys (keys.go); a lease whose end is counted from the renewal's send time
// is Lease (lease.go), which package election uses too.
package shard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/keeperhq/keeper/internal/memberid"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/testsignal"
	"github.com/keeperhq/keeper/queue"
)

// Listener is told which shards this keeper houses, a unit (or a batch of
// units taken under one token) at a time. Own and Disown for different
// shards may be called concurrently; calls for one shard are never
// concurrent, and Own is never called for a shard while a Disown for it is
// in flight. DisownAll may be called while Disown calls are in flight (a
// session can be lost at any moment) and must not wait for them.
// tasks.Keeper implements it.
type Listener interface {
	// Own: this keeper now holds shards under token (the CreateRevision of
	// their unit's ownership key). May be called again for a shard with a
	// higher token after re-acquisition. Must not block: it runs under the
	// lock that orders it before DisownAll.
	Own(shards []queue.Shard, token int64)
	// Disown: stop housekeeping on shards; must return only once no pass
	// for any of them is running (graceful handoff waits for the running
	// passes).
	Disown(shards []queue.Shard)
	// DisownAll: session lost: stop everything at once, before anything
	// else happens.
	DisownAll()
}

// Defaults of Config.
const (
	SessionTTLDefault         = 3 * time.Second
	AcquireConcurrencyDefault = 4
	FenceRetryDefault         = 30 * time.Second
)

// Config configures a Coordinator. Zero values take the defaults above. All
// keepers sharing a Prefix must use the same Ring.
type Config struct {
	// Prefix is the etcd key prefix; default PrefixDefault. A missing
	// trailing '/' is added.
	Prefix string
	// MemberID identifies this keeper (the pod name); default a random
	// 16-hex-digit id. Printable ASCII without spaces or '/'.
	MemberID string
	// SessionTTL is the lease TTL, rounded up to whole seconds, at least 2s
	// (etcd's minimum). A crashed keeper's units are taken over within
	// about this long.
	SessionTTL time.Duration
	// Ring shapes the ring; zero values take its defaults.
	Ring RingConfig
	// AcquireConcurrency bounds the etcd transactions in flight for
	// acquisitions (and, separately, for releases). Each transaction
	// carries up to 128 keys (etcd's default --max-txn-ops), so 4 in flight
	// keep a single etcd busy without queueing behind one keeper's burst.
	AcquireConcurrency int
	// FenceRetry is how long a shard stays dropped when Redis refused its
	// token although etcd says the unit is ours — the fence is ahead of
	// etcd, as after etcd's data was reset — before it is claimed again.
	// Retrying is safe (a refused write changes nothing) and is what lets
	// the fleet resume by itself once an operator resets the fences
	// (`keeper queue reset-fences`).
	FenceRetry time.Duration
	// Refusals is where the listener's writer reports fence refusals;
	// default a queue nobody reports to.
	Refusals *Refusals
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.MemberID == "" {
		c.MemberID = memberid.New()
	}
	if c.SessionTTL <= 0 {
		c.SessionTTL = SessionTTLDefault
	}
	c.SessionTTL = LeaseTTL(c.SessionTTL)
	if c.AcquireConcurrency <= 0 {
		c.AcquireConcurrency = AcquireConcurrencyDefault
	}
	if c.FenceRetry <= 0 {
		c.FenceRetry = FenceRetryDefault
	}
	if c.Refusals == nil {
		c.Refusals = NewRefusals()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Ring = c.Ring.withDefaults()
	return c
}

// Coordinator registers this keeper in etcd, follows the member set, and
// acquires and releases the ownership keys of the units the ring assigns to
// it, telling its Listener which shards it holds.
type Coordinator struct {
	base     service.Base
	cli      *clientv3.Client
	cfg      Config
	keys     Keys
	l        Listener
	refusals *Refusals
	log      *slog.Logger
	id       string
	ring     RingConfig
	member   *member

	// lmu orders every Own against DisownAll, and guards the fields below.
	lmu      sync.Mutex
	sess     *session
	live     bool
	stopping bool
	owned    map[queue.Shard]int64 // as told to the listener

	catMu   sync.Mutex
	catalog []queue.Shard
	catGen  uint64

	kickCh  chan struct{}
	members *mirror
	owners  *mirror
	endLoop context.CancelFunc
	loopWG  sync.WaitGroup

	// st is the reconcile loop's own state (reconcile.go).
	st loopState

	TestSignals CoordinatorSignals
}

// CoordinatorSignals are events tests wait for.
type CoordinatorSignals struct {
	Round     testsignal.Signal[struct{}] // a reconcile round finished
	QuietTick testsignal.Signal[struct{}] // a quiet loop skipped a tick
}

// NewCoordinator returns a coordinator; Start registers it.
func NewCoordinator(cli *clientv3.Client, cfg Config, l Listener) *Coordinator {
	cfg = cfg.withDefaults()
	keys := NewKeys(cfg.Prefix)
	cfg.Prefix = keys.Prefix()
	c := &Coordinator{
		cli:      cli,
		cfg:      cfg,
		keys:     keys,
		l:        l,
		refusals: cfg.Refusals,
		id:       cfg.MemberID,
		ring:     cfg.Ring,
		log:      cfg.Logger.With("component", "shard", "member", cfg.MemberID),
		owned:    map[queue.Shard]int64{},
		kickCh:   make(chan struct{}, 1),
	}
	c.member = newMember(cli, keys, c.id, cfg.SessionTTL, c.log, c)
	c.members = &mirror{cli: cli, prefix: keys.Members(), log: c.log, kick: c.kick, store: &memberStore{keys: keys}}
	c.owners = &mirror{cli: cli, prefix: keys.Owners(), log: c.log, kick: c.kick, store: newOwnerStore(keys, c.ring.Units)}
	return c
}

// DialOptions are gRPC options for the etcd client that suit a coordinator:
// reconnect within a second once etcd is back. gRPC's default reconnect
// backoff grows to two minutes, which can outlast a session across an etcd
// restart.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
		MinConnectTimeout: time.Second,
	})}
}

func (c *Coordinator) timeout() time.Duration { return RequestTimeout(c.cfg.SessionTTL) }

// MemberID is this keeper's id.
func (c *Coordinator) MemberID() string { return c.id }

// Keys is the etcd key layout this coordinator uses.
func (c *Coordinator) Keys() Keys { return c.keys }

// Start checks the ring configuration against the deployment's, registers
// this keeper and starts following the ring. It returns once registered;
// ctx bounds only the registration.
func (c *Coordinator) Start(ctx context.Context) error {
	startCtx, err := c.base.StartInit(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	if err := memberid.Validate(c.id); err != nil {
		return c.base.StartDone(err)
	}
	if err := c.checkRingConfig(startCtx); err != nil {
		return c.base.StartDone(err)
	}
	if err := c.member.Start(startCtx); err != nil {
		return c.base.StartDone(err)
	}
	// The member is a part of its own; it stops in the handoff, and at the
	// latest when the coordinator's life ends (a Stop whose ctx ran out
	// before the handoff began).
	c.base.Go(func(life context.Context) {
		<-life.Done()
		sctx, cancel := context.WithTimeout(context.Background(), c.timeout())
		defer cancel()
		_ = c.member.Stop(sctx)
	})
	loopCtx, endLoop := context.WithCancel(c.base.Life())
	c.endLoop = endLoop
	c.loopWG.Add(3)
	for _, run := range []func(context.Context){c.members.run, c.owners.run, c.loop} {
		c.base.Go(func(context.Context) {
			defer c.loopWG.Done()
			run(loopCtx)
		})
	}
	return c.base.StartDone(nil)
}

// Stop hands everything over: it stops deciding, leaves the ring (deletes
// its member key, so the others compute the ring without it while its
// passes finish), then releases its units a batch at a time as in any
// round (the batch's shards disowned in one call, which waits for their
// running passes, then the batch's keys deleted in one transaction, so
// successors take the first units while later ones are still being
// released), and last revokes its lease. Bounded by ctx: what is not
// released by then expires with the lease.
//
// Why not only revoke the lease, which deletes every key bound to it in one
// request: etcd applies that as one step, and while it applies, every lease
// renewal waits (a renewal waits for the applied index). Revoking 30,000
// ownership keys took 0.2 s on an idle 2-core machine but over 3 s on a
// loaded one, long enough for the other keepers to lose their sessions.
// Transactions of at most 128 keys leave room for the renewals between them.
func (c *Coordinator) Stop(ctx context.Context) error {
	return c.base.Halt(ctx, c.handoff)
}

func (c *Coordinator) handoff(ctx context.Context) error {
	start := time.Now()
	c.lmu.Lock()
	c.stopping = true
	s, live := c.sess, c.live
	c.lmu.Unlock()
	c.endLoop()
	var errs []error
	loopDone := wait(ctx, &c.loopWG)
	if loopDone != nil {
		errs = append(errs, fmt.Errorf("reconcile loop: %w", loopDone))
	}
	if live {
		if err := c.member.leave(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	left := time.Now()
	units := 0
	if live && loopDone == nil && s.epoch == c.st.epoch {
		// The loop has returned: its state is ours now.
		var p plan
		for u, t := range c.st.held {
			if t != 0 {
				p.release = append(p.release, unitToken{u, t})
			}
		}
		units = len(p.release)
		c.runRound(ctx, s, p)
	}
	// Whatever is still owned (all of it when the loop did not return, or
	// shards kept outside any held unit) goes in one call.
	rest := c.ownedList()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.disown(rest)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("disown %d shards: %w", len(rest), ctx.Err()))
	}
	released := time.Now()
	if err := c.member.Stop(ctx); err != nil {
		errs = append(errs, fmt.Errorf("give the session back: %w", err))
	}
	c.lmu.Lock()
	c.live = false
	c.lmu.Unlock()
	c.log.Info("stopped", "units", units, "took", time.Since(start).Round(time.Millisecond),
		"left_ring_after", left.Sub(start).Round(time.Millisecond),
		"released_after", released.Sub(start).Round(time.Millisecond))
	return errors.Join(errs...)
}

// wait waits for wg within ctx.
func wait(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// checkRingConfig records the ring configuration in etcd on first use and
// refuses to start with a different one: keepers that disagree on the unit
// count would map one shard to different units and own it twice.
func (c *Coordinator) checkRingConfig(ctx context.Context) error {
	want, err := json.Marshal(c.ring)
	if err != nil {
		return fmt.Errorf("encode ring config: %w", err)
	}
	key := c.keys.Ring()
	for {
		octx, cancel := context.WithTimeout(ctx, c.timeout())
		resp, err := c.cli.Txn(octx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(want))).
			Else(clientv3.OpGet(key)).
			Commit()
		cancel()
		if err == nil {
			if resp.Succeeded {
				return nil
			}
			kvs := resp.Responses[0].GetResponseRange().Kvs
			if len(kvs) == 0 {
				continue // deleted in between
			}
			var have RingConfig
			if err := json.Unmarshal(kvs[0].Value, &have); err != nil {
				return fmt.Errorf("ring config at %s: %w", key, err)
			}
			if have != c.ring {
				return fmt.Errorf("ring config %+v differs from the deployment's %+v at %s; all keepers must agree (delete the key only when no keeper runs)", c.ring, have, key)
			}
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("check ring config: %w", err)
		}
		c.log.Warn("etcd unreachable: cannot check ring config, retrying", "etcd", strings.Join(c.cli.Endpoints(), ","), "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("check ring config: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Coordinator) kick() {
	select {
	case c.kickCh <- struct{}{}:
	default:
	}
}

// opened implements sessionOwner: s is this keeper's session now.
func (c *Coordinator) opened(s *session) bool {
	c.lmu.Lock()
	if c.stopping {
		c.lmu.Unlock()
		return false
	}
	c.sess = s
	c.live = true
	c.lmu.Unlock()
	c.kick()
	return true
}

// lost implements sessionOwner: it stops all housekeeping at once. It holds
// lmu so that no Own of the lost session can follow it.
func (c *Coordinator) lost(s *session) {
	c.lmu.Lock()
	if c.sess == s && c.live {
		c.live = false
		c.l.DisownAll()
		clear(c.owned)
	}
	c.lmu.Unlock()
	c.kick()
}

// Live reports whether this keeper's session certainly still holds: its
// lease's deadline (counted from the last renewal's send time) has not
// passed and nothing learnt that etcd dropped it. Whatever is reported for
// owned shards must check it: a keeper resumed after a pause past its TTL
// still lists its old shards until its renewal loop notices, while their
// new owner reports them too (the metrics test saw a counter go backwards
// in one scrape, 510 -> 491, from the resumed keeper's stale points).
func (c *Coordinator) Live() bool {
	_, live := c.currentSession()
	return live
}

func (c *Coordinator) currentSession() (*session, bool) {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	// A lease etcd dropped (or whose deadline passed) ends the session
	// before its renewal loop notices: nothing more is tried under it.
	return c.sess, c.live && !c.stopping && c.sess != nil && c.sess.lease.Alive()
}

// own tells the listener about shards of units just acquired (or added to
// the catalog) under token, unless the session they were acquired under is
// over.
func (c *Coordinator) own(s *session, shards []queue.Shard, token int64) bool {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	if c.sess != s || !c.live || c.stopping {
		return false
	}
	c.l.Own(shards, token)
	for _, sh := range shards {
		c.owned[sh] = token
	}
	return true
}

// disown tells the listener to stop shards, and returns once their passes
// ended.
func (c *Coordinator) disown(shards []queue.Shard) {
	if len(shards) == 0 {
		return
	}
	c.l.Disown(shards)
	c.forget(shards)
}

func (c *Coordinator) forget(shards []queue.Shard) {
	c.lmu.Lock()
	for _, sh := range shards {
		delete(c.owned, sh)
	}
	c.lmu.Unlock()
}

func (c *Coordinator) ownedList() []queue.Shard {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	return slices.Collect(maps.Keys(c.owned))
}

// SetShards replaces the catalog of all shards. It only changes what this
// keeper houses within the units it holds; it never writes to etcd.
func (c *Coordinator) SetShards(shards []queue.Shard) {
	cp := slices.Clone(shards)
	c.catMu.Lock()
	c.catalog = cp
	c.catGen++
	c.catMu.Unlock()
	c.kick()
}

// OwnedShards is a snapshot of the shards the listener was told to own,
// with their tokens.
func (c *Coordinator) OwnedShards() map[queue.Shard]int64 {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	return maps.Clone(c.owned)
}
