package shard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Listener is told which shards this keeper houses. Own and Disown for
// different shards may be called concurrently; calls for one shard are never
// concurrent, and Own is never called for a shard while a Disown for it is in
// flight. DisownAll may be called while Disown calls are in flight (a session
// can be lost at any moment) and must not wait for them.
type Listener interface {
	// Own: this keeper now holds shard under token (the CreateRevision of
	// its unit's ownership key). May be called again for the same shard
	// with a higher token after re-acquisition. Must not block: it runs
	// under the lock that orders it before DisownAll.
	Own(shard string, token int64)
	// Disown: stop housekeeping on shard; must return only once no pass for
	// it is running (graceful handoff waits for the running pass).
	Disown(shard string)
	// DisownAll: session lost: stop everything at once, before anything
	// else happens.
	DisownAll()
}

// Config configures a Coordinator. Zero values take the defaults below. All
// keepers sharing a Prefix must use the same Ring.
type Config struct {
	// Prefix is the etcd key prefix; default "/keeper/". A missing trailing
	// '/' is added.
	Prefix string
	// MemberID identifies this keeper (the pod name); default a random
	// 16-hex-digit id. Printable ASCII without spaces or '/'.
	MemberID string
	// SessionTTL is the lease TTL, rounded up to whole seconds, at least 2s
	// (etcd's minimum); default 3s. A crashed keeper's units are taken over
	// within about this long.
	SessionTTL time.Duration
	// Ring shapes the ring; zero values take shard's defaults.
	Ring RingConfig
	// AcquireConcurrency bounds the etcd transactions in flight for
	// acquisitions (and, separately, for releases); default 4. Each
	// transaction carries up to 128 keys (etcd's default --max-txn-ops), so
	// 4 in flight keep a single etcd busy without queueing behind one
	// keeper's burst.
	AcquireConcurrency int
	// FenceRetry is how long a shard stays dropped when Redis refused its
	// token although etcd says the unit is ours — the fence is ahead of
	// etcd, as after etcd's data was reset — before it is claimed again;
	// default 30s. Retrying is safe (a refused write changes nothing) and is
	// what lets the fleet resume by itself once an operator resets the
	// fences (`keeper queue reset-fences`).
	FenceRetry time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

const (
	defaultPrefix             = "/keeper/"
	defaultSessionTTL         = 3 * time.Second
	defaultAcquireConcurrency = 4
	defaultFenceRetry         = 30 * time.Second
	// maxTxnOps is etcd's default limit of operations per transaction.
	maxTxnOps = 128
	// settle is how long the member set must stay unchanged before the ring
	// is recomputed, so that keepers starting together do not hand units
	// around once per arrival; maxSettle bounds the wait under churn.
	settle    = 50 * time.Millisecond
	maxSettle = time.Second
)

// Coordinator registers this keeper in etcd, follows the member set, and
// acquires and releases the ownership keys of the units the ring assigns to
// it, telling its Listener which shards it holds.
type Coordinator struct {
	cli  *clientv3.Client
	cfg  Config
	l    Listener
	log  *slog.Logger
	id   string
	ring RingConfig

	// lmu orders every Own against DisownAll, and guards the fields below.
	lmu      sync.Mutex
	sess     *session
	live     bool
	stopping bool
	owned    map[string]int64 // shard -> token, as told to the listener

	catMu    sync.Mutex
	catalog  []string
	catGen   uint64
	fencedMu sync.Mutex
	fenced   []fenceReport

	kickCh  chan struct{}
	members *mirror
	owners  *mirror

	startMu  sync.Mutex
	started  bool
	stopped  bool
	cancel   context.CancelFunc // main loop and mirrors
	loopWG   sync.WaitGroup
	sessStop context.CancelFunc
	sessWG   sync.WaitGroup
	epochSeq uint64
	// renewedHook is called after each lease renewal (tests).
	renewedHook func()
	// rounds counts finished reconcile rounds (tests).
	rounds atomic.Int64

	// Main-loop state.
	st loopState
}

type loopState struct {
	epoch      uint64
	held       []int64 // unit -> token (0: not held), this session
	nheld      int
	unitShards map[int]map[string]struct{} // shards told Own, per unit
	synced     map[int]uint64              // catalog generation a unit's shards match
	dropped    map[string]int64            // fenced shards kept dropped, with the token
	ahead      map[string]aheadShard       // dropped because the fence is ahead of etcd
	ring       *Ring
	catGen     uint64
	byUnit     map[int][]string
	catSize    int
}

// aheadShard is a shard whose Redis fence is above the token etcd gave us
// for its unit: it is claimed again at retryAt (zero: retried already).
type aheadShard struct {
	token   int64
	retryAt time.Time
}

type fenceReport struct {
	shard string
	token int64
}

// NewCoordinator returns a coordinator; Start registers it.
func NewCoordinator(cli *clientv3.Client, cfg Config, l Listener) *Coordinator {
	if cfg.Prefix == "" {
		cfg.Prefix = defaultPrefix
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	if cfg.MemberID == "" {
		cfg.MemberID = randomID()
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = defaultSessionTTL
	}
	cfg.SessionTTL = time.Duration(ttlSeconds(cfg.SessionTTL)) * time.Second
	if cfg.AcquireConcurrency <= 0 {
		cfg.AcquireConcurrency = defaultAcquireConcurrency
	}
	if cfg.FenceRetry <= 0 {
		cfg.FenceRetry = defaultFenceRetry
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Ring = cfg.Ring.withDefaults()
	c := &Coordinator{
		cli:    cli,
		cfg:    cfg,
		l:      l,
		id:     cfg.MemberID,
		ring:   cfg.Ring,
		log:    cfg.Logger.With("component", "shard", "member", cfg.MemberID),
		owned:  map[string]int64{},
		kickCh: make(chan struct{}, 1),
	}
	c.members = &mirror{cli: cli, prefix: c.membersPrefix(), log: c.log, kick: c.kick,
		store: &memberStore{prefix: c.membersPrefix()}}
	c.owners = &mirror{cli: cli, prefix: c.ownersPrefix(), log: c.log, kick: c.kick,
		store: &ownerStore{prefix: c.ownersPrefix(), units: make([]ownerEntry, c.ring.Partitions)}}
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

func (c *Coordinator) membersPrefix() string      { return c.cfg.Prefix + "members/" }
func (c *Coordinator) ownersPrefix() string       { return c.cfg.Prefix + "owners/" }
func (c *Coordinator) memberKey(id string) string { return c.membersPrefix() + id }
func (c *Coordinator) ownerKey(unit int) string {
	return c.ownersPrefix() + strconv.Itoa(unit)
}
func (c *Coordinator) ringKey() string { return c.cfg.Prefix + "ring" }

func (c *Coordinator) opTimeout() time.Duration { return max(2*time.Second, c.cfg.SessionTTL) }

// MemberID is this keeper's id.
func (c *Coordinator) MemberID() string { return c.id }

// Start checks the ring configuration against the deployment's, registers
// this keeper and starts following the ring. It returns once registered;
// ctx bounds only the registration.
func (c *Coordinator) Start(ctx context.Context) error {
	c.startMu.Lock()
	defer c.startMu.Unlock()
	if c.started {
		return errors.New("coordinator already started")
	}
	if err := validMemberID(c.id); err != nil {
		return err
	}
	if err := c.checkRingConfig(ctx); err != nil {
		return err
	}
	s, k, err := c.openSessionRetry(ctx)
	if err != nil {
		return err
	}
	c.started = true
	c.publish(s)
	base := context.WithoutCancel(ctx)
	loopCtx, cancel := context.WithCancel(base)
	c.cancel = cancel
	sessCtx, sessStop := context.WithCancel(base)
	c.sessStop = sessStop
	c.loopWG.Add(3)
	go func() { defer c.loopWG.Done(); c.members.run(loopCtx) }()
	go func() { defer c.loopWG.Done(); c.owners.run(loopCtx) }()
	go func() { defer c.loopWG.Done(); c.loop(loopCtx) }()
	c.sessWG.Add(1)
	go c.runSessions(sessCtx, s, k)
	return nil
}

// checkRingConfig records the ring configuration in etcd on first use and
// refuses to start with a different one: keepers that disagree on the
// partition count would map one shard to different units and own it twice.
func (c *Coordinator) checkRingConfig(ctx context.Context) error {
	want, err := json.Marshal(c.ring)
	if err != nil {
		return fmt.Errorf("encode ring config: %w", err)
	}
	for {
		octx, cancel := context.WithTimeout(ctx, c.opTimeout())
		resp, err := c.cli.Txn(octx).
			If(clientv3.Compare(clientv3.CreateRevision(c.ringKey()), "=", 0)).
			Then(clientv3.OpPut(c.ringKey(), string(want))).
			Else(clientv3.OpGet(c.ringKey())).
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
				return fmt.Errorf("ring config at %s: %w", c.ringKey(), err)
			}
			if have != c.ring {
				return fmt.Errorf("ring config %+v differs from the deployment's %+v at %s; all keepers must agree (delete the key only when no keeper runs)", c.ring, have, c.ringKey())
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

func (c *Coordinator) publish(s *session) {
	c.lmu.Lock()
	c.sess = s
	c.live = true
	c.lmu.Unlock()
	c.kick()
}

// loseSession stops all housekeeping at once. It holds lmu so that no Own
// of the lost session can follow it.
func (c *Coordinator) loseSession(s *session) {
	c.lmu.Lock()
	if c.sess == s && c.live {
		c.live = false
		c.l.DisownAll()
		clear(c.owned)
	}
	c.lmu.Unlock()
	c.kick()
}

func (c *Coordinator) isStopping() bool {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	return c.stopping
}

func (c *Coordinator) currentSession() (*session, bool) {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	return c.sess, c.live && !c.stopping
}

// own tells the listener about shards of a unit just acquired (or added to
// the catalog), unless the session they were acquired under is over.
func (c *Coordinator) own(s *session, shards []string, token int64) bool {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	if c.sess != s || !c.live || c.stopping {
		return false
	}
	for _, sh := range shards {
		c.l.Own(sh, token)
		c.owned[sh] = token
	}
	return true
}

func (c *Coordinator) disown(shards []string) {
	for _, sh := range shards {
		c.l.Disown(sh)
		c.lmu.Lock()
		delete(c.owned, sh)
		c.lmu.Unlock()
	}
}

// SetShards replaces the catalog of all shards. It only changes what this
// keeper houses within the units it holds; it never writes to etcd.
func (c *Coordinator) SetShards(shards []string) {
	cp := slices.Clone(shards)
	c.catMu.Lock()
	c.catalog = cp
	c.catGen++
	c.catMu.Unlock()
	c.kick()
}

// Fenced reports that Redis refused token for shard because a higher token
// wrote there; the listener has already dropped the shard. The coordinator
// checks the unit's key: if it is no longer ours under that token, the whole
// unit is lost (its shards are disowned, its key left alone); if it still is
// (the fence is ahead of etcd, e.g. etcd's data was wiped), the shard stays
// dropped and an error is logged.
func (c *Coordinator) Fenced(shard string, token int64) {
	c.fencedMu.Lock()
	c.fenced = append(c.fenced, fenceReport{shard: shard, token: token})
	c.fencedMu.Unlock()
	c.kick()
}

// OwnedShards is a snapshot of the shards the listener was told to own, with
// their tokens.
func (c *Coordinator) OwnedShards() map[string]int64 {
	c.lmu.Lock()
	defer c.lmu.Unlock()
	return maps.Clone(c.owned)
}

// Stop hands everything over: it disowns every shard (waiting for running
// passes), deletes its ownership keys (each guarded by its token) and
// revokes its lease, which removes its member key, so successors take over
// at once.
func (c *Coordinator) Stop(ctx context.Context) error {
	c.startMu.Lock()
	defer c.startMu.Unlock()
	if !c.started || c.stopped {
		return nil
	}
	c.stopped = true
	start := time.Now()
	c.lmu.Lock()
	c.stopping = true
	live := c.live
	c.lmu.Unlock()
	c.cancel()
	c.loopWG.Wait()

	var errs []error
	if live {
		// Leave the ring first: the successors compute the ring without us
		// while our passes finish, and take each unit the moment its key
		// is deleted below, instead of only after our lease is revoked.
		dctx, cancel := context.WithTimeout(ctx, c.opTimeout())
		if _, err := c.cli.Delete(dctx, c.memberKey(c.id)); err != nil {
			errs = append(errs, fmt.Errorf("leave the ring: %w", err))
		}
		cancel()
	}

	var shards []string
	c.lmu.Lock()
	for sh := range c.owned {
		shards = append(shards, sh)
	}
	c.lmu.Unlock()
	c.parallel(len(shards), func(i int) { c.disown(shards[i : i+1]) })

	if live {
		var rel []unitToken
		for u, t := range c.st.held {
			if t != 0 {
				rel = append(rel, unitToken{u, t})
			}
		}
		for _, b := range batches(rel, c.cfg.AcquireConcurrency) {
			if _, err := c.deleteKeys(ctx, b); err != nil {
				errs = append(errs, err)
			}
		}
	}
	c.sessStop()
	c.sessWG.Wait()
	c.lmu.Lock()
	s := c.sess
	c.live = false
	c.lmu.Unlock()
	if s != nil {
		rctx, cancel := context.WithTimeout(ctx, c.opTimeout())
		if _, err := c.cli.Revoke(rctx, s.lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			errs = append(errs, fmt.Errorf("revoke lease: %w", err))
		}
		cancel()
	}
	c.log.Info("stopped", "shards", len(shards), "units", c.st.nheld, "took", time.Since(start).Round(time.Millisecond))
	return errors.Join(errs...)
}

// parallel runs f(0..n-1) on up to 16 goroutines: Disown waits for a running
// pass, and a handoff should not wait for them one after another.
func (c *Coordinator) parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < min(n, 16); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
}

type unitToken struct {
	unit  int
	token int64
}

// batches splits items into at most maxTxnOps per batch, and into at least
// `spread` batches when there are enough items, so small changes still use
// the allowed concurrency.
func batches[T any](items []T, spread int) [][]T {
	if len(items) == 0 {
		return nil
	}
	size := min(maxTxnOps, max(1, (len(items)+spread-1)/spread))
	var out [][]T
	for len(items) > 0 {
		n := min(size, len(items))
		out = append(out, items[:n])
		items = items[n:]
	}
	return out
}

// loop reconciles whenever a watch, the catalog, the session or a fence
// report changes something, and every second in case etcd was unreachable.
func (c *Coordinator) loop(ctx context.Context) {
	tick := time.NewTicker(max(c.cfg.SessionTTL/3, 500*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kickCh:
		case <-tick.C:
		}
		c.waitSettled(ctx)
		if ctx.Err() != nil {
			return
		}
		c.reconcile(ctx)
		c.rounds.Add(1)
	}
}

func (c *Coordinator) waitSettled(ctx context.Context) {
	start := time.Now()
	for {
		c.members.mu.Lock()
		since := time.Since(c.members.changed)
		c.members.mu.Unlock()
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
	c.st.held = make([]int64, c.ring.Partitions)
	c.st.nheld = 0
	c.st.unitShards = map[int]map[string]struct{}{}
	c.st.synced = map[int]uint64{}
	c.st.dropped = map[string]int64{}
	c.st.ahead = map[string]aheadShard{}
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
	by := make(map[int][]string)
	for _, sh := range cat {
		u := UnitOf(sh, c.ring.Partitions)
		by[u] = append(by[u], sh)
	}
	c.st.byUnit, c.st.catGen, c.st.catSize = by, gen, len(cat)
}

// reconcile moves this keeper towards what the ring says: acquire units it
// should own whose keys are free, release units the ring moved away, drop
// units whose keys are gone, and keep each held unit's shards in line with
// the catalog.
func (c *Coordinator) reconcile(ctx context.Context) {
	s, live := c.currentSession()
	if s == nil {
		return
	}
	if s.epoch != c.st.epoch {
		c.resetEpoch(s.epoch)
	}
	if !live {
		return
	}
	members, mrev, ok := c.memberSnapshot()
	if !ok {
		return
	}
	if !slices.Contains(members, c.id) {
		if mrev >= s.registered {
			c.reregister(ctx, s)
		}
		// Until the watch shows it, count ourselves in anyway.
		members = append(members, c.id)
	}
	if c.st.ring == nil {
		c.st.ring = NewRing(members, c.ring)
	} else if ms := normalize(members); !slices.Equal(ms, c.st.ring.members) {
		prev := c.st.ring
		c.st.ring = prev.Next(ms)
		c.log.Info("ring changed", "members", len(ms), "moved_units", prev.Moved(c.st.ring),
			"my_units", len(c.st.ring.units[c.id]))
	}
	ring := c.st.ring
	c.refreshCatalog()
	c.handleFenced(ctx, s)
	c.retryAhead()

	// Decide under the mirror's lock, act after: copying the whole table
	// every round cost more than everything else at 98304 units.
	var acquire []int
	var release, lost, sync []unitToken
	var lostTo []ownerEntry
	c.owners.mu.Lock()
	if !c.owners.synced {
		c.owners.mu.Unlock()
		return
	}
	owners := c.owners.store.(*ownerStore).units
	orev := c.owners.rev
	for u := range owners {
		e := &owners[u]
		// Only units that hold shards are owned: etcd keys, handoffs and
		// takeovers then scale with the shards a fleet has, never with
		// the ring's partition count.
		mine := ring.owner[u] == c.id && len(c.st.byUnit[u]) > 0
		t := c.st.held[u]
		if t == 0 && e.create != 0 && clientv3.LeaseID(e.lease) == s.lease {
			// Acquired under this session but the reply was lost.
			t = e.create
			c.st.held[u] = t
			c.st.nheld++
		}
		held := t != 0
		switch {
		case held && orev >= t && (e.create != t || clientv3.LeaseID(e.lease) != s.lease):
			lost = append(lost, unitToken{u, t})
			lostTo = append(lostTo, *e)
		case held && !mine:
			release = append(release, unitToken{u, t})
		case held:
			if g, ok := c.st.synced[u]; !ok || g != c.st.catGen {
				sync = append(sync, unitToken{u, t})
			}
		case mine && e.create == 0:
			acquire = append(acquire, u)
		}
	}
	c.owners.mu.Unlock()
	for _, ut := range sync {
		c.syncUnit(s, ut.unit, ut.token)
	}
	for i, ut := range lost {
		c.log.Warn("unit lost: its key is gone or replaced", "unit", ut.unit, "token", ut.token,
			"now", lostTo[i].member, "now_token", lostTo[i].create)
	}
	c.runRound(ctx, s, acquire, release, lost)
}

// syncUnit makes the shards told Own for a held unit match the catalog.
func (c *Coordinator) syncUnit(s *session, u int, t int64) {
	if g, ok := c.st.synced[u]; ok && g == c.st.catGen {
		return
	}
	cur := c.st.unitShards[u]
	if cur == nil {
		cur = map[string]struct{}{}
		c.st.unitShards[u] = cur
	}
	var add []string
	want := map[string]struct{}{}
	for _, sh := range c.st.byUnit[u] {
		if dt, ok := c.st.dropped[sh]; ok && dt == t {
			continue
		}
		want[sh] = struct{}{}
		if _, ok := cur[sh]; !ok {
			add = append(add, sh)
		}
	}
	var del []string
	for sh := range cur {
		if _, ok := want[sh]; !ok {
			del = append(del, sh)
		}
	}
	if len(del) > 0 {
		c.disown(del)
		for _, sh := range del {
			delete(cur, sh)
		}
	}
	if len(add) > 0 {
		if !c.own(s, add, t) {
			return
		}
		for _, sh := range add {
			cur[sh] = struct{}{}
		}
	}
	c.st.synced[u] = c.st.catGen
}

type roundResult struct {
	acquired []unitToken
	released []int // keys deleted (or no longer ours); stop tracking
	lost     []int
}

// runRound acquires and releases in parallel batches and applies results as
// they arrive, so a slow Disown does not hold back acquisitions.
func (c *Coordinator) runRound(ctx context.Context, s *session, acquire []int, release, lost []unitToken) {
	if len(acquire)+len(release)+len(lost) == 0 {
		return
	}
	results := make(chan roundResult)
	var wg sync.WaitGroup
	conc := c.cfg.AcquireConcurrency
	// Lost units: disown only; the key is not ours to delete.
	for _, ut := range lost {
		shards := c.takeUnitShards(ut.unit)
		c.dropHeld(ut.unit)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.disown(shards)
			results <- roundResult{lost: []int{ut.unit}}
		}()
	}
	relBatches := batches(release, conc)
	acqBatches := batches(acquire, conc)
	relQ := make(chan []unitToken, len(relBatches))
	for _, b := range relBatches {
		relQ <- b
	}
	close(relQ)
	acqQ := make(chan []int, len(acqBatches))
	for _, b := range acqBatches {
		acqQ <- b
	}
	close(acqQ)
	relShards := map[int][]string{}
	for _, ut := range release {
		relShards[ut.unit] = c.takeUnitShards(ut.unit)
	}
	for w := 0; w < min(conc, len(relBatches)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range relQ {
				var shards []string
				for _, ut := range b {
					shards = append(shards, relShards[ut.unit]...)
				}
				c.disown(shards)
				done, err := c.deleteKeys(ctx, b)
				if err != nil && ctx.Err() == nil {
					c.log.Warn("release failed, will retry", "units", len(b), "err", err)
				}
				results <- roundResult{released: done}
			}
		}()
	}
	for w := 0; w < min(conc, len(acqBatches)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range acqQ {
				got, err := c.acquire(ctx, s, b)
				if err != nil && ctx.Err() == nil {
					c.log.Warn("acquire failed", "units", len(b), "err", err)
				}
				results <- roundResult{acquired: got}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(results)
	}()
	nAcq, nRel := 0, 0
	for r := range results {
		for _, ut := range r.acquired {
			if c.st.held[ut.unit] == 0 {
				c.st.nheld++
			}
			c.st.held[ut.unit] = ut.token
			delete(c.st.synced, ut.unit)
			c.syncUnit(s, ut.unit, ut.token)
			nAcq++
		}
		for _, u := range r.released {
			c.dropHeld(u)
			nRel++
		}
	}
	if nAcq+nRel+len(lost) > 0 {
		c.log.Debug("round", "acquired", nAcq, "released", nRel, "lost", len(lost), "held", c.st.nheld)
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
func (c *Coordinator) takeUnitShards(u int) []string {
	var out []string
	for sh := range c.st.unitShards[u] {
		out = append(out, sh)
	}
	delete(c.st.unitShards, u)
	delete(c.st.synced, u)
	return out
}

// acquire creates the ownership keys of units in one transaction that
// requires all of them absent. If some exist (our view was stale), the
// transaction's else branch reads them and the absent rest is retried.
func (c *Coordinator) acquire(ctx context.Context, s *session, units []int) ([]unitToken, error) {
	var got []unitToken
	for len(units) > 0 {
		cmps := make([]clientv3.Cmp, len(units))
		puts := make([]clientv3.Op, len(units))
		gets := make([]clientv3.Op, len(units))
		for i, u := range units {
			k := c.ownerKey(u)
			cmps[i] = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
			puts[i] = clientv3.OpPut(k, c.id, clientv3.WithLease(s.lease))
			gets[i] = clientv3.OpGet(k, clientv3.WithKeysOnly())
		}
		octx, cancel := context.WithTimeout(ctx, c.opTimeout())
		resp, err := c.cli.Txn(octx).If(cmps...).Then(puts...).Else(gets...).Commit()
		cancel()
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.ka.leaseGone()
		}
		if err != nil {
			// The transaction may have committed; the next round adopts
			// keys bound to our lease.
			return got, fmt.Errorf("acquire %d units: %w", len(units), err)
		}
		if resp.Succeeded {
			for _, u := range units {
				got = append(got, unitToken{u, resp.Header.Revision})
			}
			return got, nil
		}
		var absent []int
		for i, u := range units {
			if len(resp.Responses[i].GetResponseRange().Kvs) == 0 {
				absent = append(absent, u)
			}
		}
		if len(absent) == len(units) {
			return got, errors.New("acquire: compare failed but every key is absent")
		}
		units = absent
	}
	return got, nil
}

// deleteKeys deletes ownership keys, each only if it still carries our token.
// It returns the units whose keys are gone or no longer ours.
func (c *Coordinator) deleteKeys(ctx context.Context, uts []unitToken) ([]int, error) {
	var done []int
	for len(uts) > 0 {
		cmps := make([]clientv3.Cmp, len(uts))
		dels := make([]clientv3.Op, len(uts))
		gets := make([]clientv3.Op, len(uts))
		for i, ut := range uts {
			k := c.ownerKey(ut.unit)
			cmps[i] = clientv3.Compare(clientv3.CreateRevision(k), "=", ut.token)
			dels[i] = clientv3.OpDelete(k)
			gets[i] = clientv3.OpGet(k, clientv3.WithKeysOnly())
		}
		octx, cancel := context.WithTimeout(ctx, c.opTimeout())
		resp, err := c.cli.Txn(octx).If(cmps...).Then(dels...).Else(gets...).Commit()
		cancel()
		if err != nil {
			return done, fmt.Errorf("release %d units: %w", len(uts), err)
		}
		if resp.Succeeded {
			for _, ut := range uts {
				done = append(done, ut.unit)
			}
			return done, nil
		}
		var ours []unitToken
		for i, ut := range uts {
			kvs := resp.Responses[i].GetResponseRange().Kvs
			if len(kvs) > 0 && kvs[0].CreateRevision == ut.token {
				ours = append(ours, ut)
			} else {
				done = append(done, ut.unit)
			}
		}
		if len(ours) == len(uts) {
			return done, errors.New("release: compare failed but every key is still ours")
		}
		uts = ours
	}
	return done, nil
}

// handleFenced checks each reported fence refusal against etcd.
func (c *Coordinator) handleFenced(ctx context.Context, s *session) {
	c.fencedMu.Lock()
	reports := c.fenced
	c.fenced = nil
	c.fencedMu.Unlock()
	var retry []fenceReport
	for _, f := range reports {
		u := UnitOf(f.shard, c.ring.Partitions)
		t := c.st.held[u]
		if t == 0 || t != f.token {
			c.log.Info("fence report for a token no longer held, ignored", "shard", f.shard, "token", f.token, "unit", u, "held_token", t)
			continue
		}
		// The listener already dropped it; keep it dropped until we know.
		c.st.dropped[f.shard] = f.token
		if cur := c.st.unitShards[u]; cur != nil {
			delete(cur, f.shard)
		}
		c.lmu.Lock()
		delete(c.owned, f.shard)
		c.lmu.Unlock()

		octx, cancel := context.WithTimeout(ctx, c.opTimeout())
		resp, err := c.cli.Get(octx, c.ownerKey(u))
		cancel()
		if err != nil {
			c.log.Warn("cannot verify fence report, will retry", "shard", f.shard, "token", f.token, "err", err)
			retry = append(retry, f)
			continue
		}
		if len(resp.Kvs) > 0 && resp.Kvs[0].CreateRevision == t && clientv3.LeaseID(resp.Kvs[0].Lease) == s.lease {
			// Said once per shard and token at error level: after an etcd
			// reset every shard does this, every FenceRetry.
			log := c.log.Error
			if prev, ok := c.st.ahead[f.shard]; ok && prev.token == f.token {
				log = c.log.Debug
			}
			log("fence is ahead of etcd: Redis refused our token but etcd says the unit is ours (was etcd's data reset? see `keeper queue reset-fences`); shard dropped, retried later",
				"shard", f.shard, "token", f.token, "unit", u, "retry_in", c.cfg.FenceRetry.String())
			c.st.ahead[f.shard] = aheadShard{token: f.token, retryAt: time.Now().Add(c.cfg.FenceRetry)}
			continue
		}
		c.log.Warn("unit lost to a higher token", "shard", f.shard, "token", f.token, "unit", u)
		shards := c.takeUnitShards(u)
		c.dropHeld(u)
		c.disown(shards)
	}
	if len(retry) > 0 {
		c.fencedMu.Lock()
		c.fenced = append(retry, c.fenced...)
		c.fencedMu.Unlock()
	}
}

// retryAhead undrops the shards whose retry time has come, so the next
// syncUnit of their unit owns them again under the same token; if the fence
// is still ahead, the claim is refused and reported once more.
func (c *Coordinator) retryAhead() {
	now := time.Now()
	for sh, a := range c.st.ahead {
		if a.retryAt.IsZero() || now.Before(a.retryAt) {
			continue
		}
		if c.st.dropped[sh] == a.token {
			delete(c.st.dropped, sh)
			delete(c.st.synced, UnitOf(sh, c.ring.Partitions))
		}
		// The entry stays, without a retry time, so that a refusal of the
		// same token again is logged quietly.
		c.st.ahead[sh] = aheadShard{token: a.token}
	}
}

// Status is the deployment's ownership as etcd has it, used by
// `keeper status`. Shards are those of this coordinator's catalog.
type Status struct {
	Prefix        string            `json:"prefix"`
	Revision      int64             `json:"revision"`
	Self          string            `json:"self"`
	Ring          RingConfig        `json:"ring"`
	Shards        int               `json:"shards"`
	Members       []MemberStatus    `json:"members"`
	UnownedUnits  []int             `json:"unowned_units"` // units holding shards that no one owns
	UnownedShards []string          `json:"unowned_shards"`
	Misplaced     int               `json:"misplaced_units"` // held by another member than the ring names (handoff in progress)
	Tokens        map[int]int64     `json:"tokens"`          // unit -> token
	Owners        map[int]string    `json:"-"`               // unit -> member, for callers in Go
	Stale         []string          `json:"stale_owners,omitempty"`
	ShardOwners   map[string]string `json:"-"`
}

// MemberStatus is one member's share.
type MemberStatus struct {
	ID        string   `json:"id"`
	RingUnits int      `json:"ring_units"`
	Units     []int    `json:"units"`
	Shards    []string `json:"shards"`
}

// Status reads members and ownership keys from etcd at one revision. It
// works on a coordinator that was never started.
func (c *Coordinator) Status(ctx context.Context) (Status, error) {
	mresp, err := c.cli.Get(ctx, c.membersPrefix(), clientv3.WithPrefix())
	if err != nil {
		return Status{}, fmt.Errorf("list members: %w", err)
	}
	oresp, err := c.cli.Get(ctx, c.ownersPrefix(), clientv3.WithPrefix(), clientv3.WithRev(mresp.Header.Revision))
	if err != nil {
		return Status{}, fmt.Errorf("list owners: %w", err)
	}
	st := Status{
		Prefix:      c.cfg.Prefix,
		Revision:    mresp.Header.Revision,
		Self:        c.id,
		Ring:        c.ring,
		Tokens:      map[int]int64{},
		Owners:      map[int]string{},
		ShardOwners: map[string]string{},
	}
	var ids []string
	for _, kv := range mresp.Kvs {
		ids = append(ids, strings.TrimPrefix(string(kv.Key), c.membersPrefix()))
	}
	ring := NewRing(ids, c.ring)
	store := &ownerStore{prefix: c.ownersPrefix(), units: make([]ownerEntry, c.ring.Partitions)}
	store.reset(oresp.Kvs)
	byMember := map[string]*MemberStatus{}
	for _, id := range ring.Members() {
		byMember[id] = &MemberStatus{ID: id, RingUnits: len(ring.units[id]), Units: []int{}, Shards: []string{}}
	}
	stale := map[string]bool{}
	c.catMu.Lock()
	cat := slices.Clone(c.catalog)
	c.catMu.Unlock()
	used := make(map[int]bool, len(cat))
	for _, sh := range cat {
		used[UnitOf(sh, c.ring.Partitions)] = true
	}
	for u, e := range store.units {
		if e.create == 0 {
			// Units without shards are not owned on purpose.
			if used[u] {
				st.UnownedUnits = append(st.UnownedUnits, u)
			}
			continue
		}
		st.Tokens[u] = e.create
		st.Owners[u] = e.member
		if e.member != ring.Owner(u) {
			st.Misplaced++
		}
		m := byMember[e.member]
		if m == nil {
			// Keys of a member whose key is gone: its lease has not
			// expired yet, or it was a previous incarnation.
			stale[e.member] = true
			m = &MemberStatus{ID: e.member, Units: []int{}, Shards: []string{}}
			byMember[e.member] = m
		}
		m.Units = append(m.Units, u)
	}
	sort.Strings(cat)
	st.Shards = len(cat)
	for _, sh := range cat {
		u := UnitOf(sh, c.ring.Partitions)
		e := store.units[u]
		if e.create == 0 {
			st.UnownedShards = append(st.UnownedShards, sh)
			continue
		}
		st.ShardOwners[sh] = e.member
		byMember[e.member].Shards = append(byMember[e.member].Shards, sh)
	}
	for _, m := range byMember {
		st.Members = append(st.Members, *m)
	}
	sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].ID < st.Members[j].ID })
	for id := range stale {
		st.Stale = append(st.Stale, id)
	}
	sort.Strings(st.Stale)
	return st, nil
}
