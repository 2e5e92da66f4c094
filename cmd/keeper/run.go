package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/election"
	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/memberid"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/internal/service"
	kotel "github.com/keeperhq/keeper/otel"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
	"github.com/keeperhq/keeper/tasks"
	"github.com/redis/go-redis/v9"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// runCmd is `keeper run`: the daemon.
func runCmd(args []string) error {
	cfg, err := loadConfig("run", args, os.Environ())
	if err != nil {
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d := &daemon{cfg: cfg, log: newFormatLogger(cfg.LogLevel, cfg.LogFormat)}
	if err := d.start(ctx); err != nil {
		d.stopWithin()
		if ctx.Err() != nil {
			// SIGTERM while still waiting for etcd or Redis: a clean stop.
			d.log.Info("stopped before joining the fleet", "err", err)
			return nil
		}
		return err
	}
	<-ctx.Done()
	d.log.Info("shutting down: finishing running passes and handing shards over",
		"shutdown_timeout", d.cfg.ShutdownTimeout)
	d.stopWithin()
	return nil
}

// stopWithin is shutdown with its bound enforced on the process: if the
// shutdown is still running when shutdown_timeout has passed, the process
// exits anyway, with status 1. A keeper that does not exit on SIGTERM would
// hold a rollout until it is killed, and whatever it has not released by
// then expires with its lease like a crashed keeper's.
func (d *daemon) stopWithin() {
	exit := time.AfterFunc(d.shutdownTimeout(), func() {
		d.log.Error("shutdown still running after shutdown_timeout; exiting now, ownership keys not deleted yet expire with the lease",
			"shutdown_timeout", d.shutdownTimeout())
		os.Exit(1)
	})
	defer exit.Stop()
	d.shutdown()
}

func (d *daemon) shutdownTimeout() time.Duration {
	if d.cfg.ShutdownTimeout <= 0 {
		return defaultConfig().ShutdownTimeout
	}
	return d.cfg.ShutdownTimeout
}

// newLogger logs at level on stderr, in the format log_format's default
// (auto) picks; see newFormatLogger.
func newLogger(level string) *slog.Logger { return newFormatLogger(level, "auto") }

// redisLogger sends go-redis's own messages (dial failures, pool trouble)
// through slog, so every line keeper prints is structured.
type redisLogger struct{ log *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.log.WarnContext(ctx, fmt.Sprintf(format, v...))
}

// daemon is one keeper process: its parts wired in the order data flows
// (etcd membership -> ring -> owned shards -> tasks -> Redis; tasks report
// to otel), each built from parts built before it, started in dependency
// order and stopped in reverse.
type daemon struct {
	cfg Config
	log *slog.Logger

	localRedis *redisserver.Server
	localEtcd  *etcdserver.Server
	rdb        redis.UniversalClient
	redisCmds  commandCounter // what rdb sent
	etcd       *clientv3.Client
	// sentinelWatch follows Sentinel's failovers for rdb (redis.sentinel).
	sentinelWatch *sentinelWatch

	memberID string
	metrics  *kotel.Provider
	inst     *kotel.Instruments
	keeper   *tasks.Keeper
	catalog  *queue.Catalog
	// With the deckard layout: the layout, how it wakes, and the discovery
	// that stands in for the catalog.
	deckard   *queue.Deckard
	wake      queue.DeckardWakeConfig
	discovery *election.Discovery
	coord     *shard.Coordinator
	agg       *election.Aggregator
	publisher *election.Publisher
	health    *healthServer

	// started are the parts started so far, in start order.
	started []part
}

// part is one long-running part of the daemon, named for the logs.
type part struct {
	name string
	svc  service.Service
}

// start brings the daemon up. ctx bounds the start (waiting for etcd, the
// first reads); it is the signal context, so it must not be what ends the
// running parts, and it is not: a part's start context bounds its start
// only (internal/service), and the parts end in shutdown, in handoff order.
func (d *daemon) start(ctx context.Context) error {
	if err := d.startRedis(ctx); err != nil {
		return err
	}
	if err := d.startEtcd(ctx); err != nil {
		return err
	}
	d.memberID = d.cfg.MemberID
	if d.memberID == "" {
		d.memberID = memberid.New()
	}
	d.applyQueues(ctx)
	if err := d.prepareDeckard(ctx); err != nil {
		return err
	}

	// Metrics first: every other part records into them.
	d.metrics = kotel.NewProvider(kotel.Config{MemberID: d.memberID, Endpoint: d.cfg.Metrics.Endpoint,
		ExportInterval: d.cfg.Metrics.ExportInterval, Disabled: d.cfg.Metrics.Disabled,
		PrometheusAddr: d.cfg.Metrics.PrometheusAddr, OTLPOnlyIfConfigured: true, Logger: d.log})
	if err := d.startPart(ctx, "metrics", d.metrics); err != nil {
		return err
	}
	d.sayWhereMetricsAre()
	if err := d.build(); err != nil {
		return err
	}
	// The health endpoint comes up before the keeper joins the fleet: while
	// etcd or Redis is unreachable, /healthz keeps a liveness probe from
	// restarting a process that is only waiting, and /readyz says what it
	// waits for.
	if d.health != nil {
		if err := d.startPart(ctx, "health", d.health); err != nil {
			return err
		}
	}
	// Dependency order: the tasks before anyone owns shards, the catalog
	// (which tells the keeper the configs and the coordinator the shards)
	// before the coordinator joins the fleet, and the coordinator last: no
	// part depends on it, and stopped first it hands the shards over while
	// everything else still runs.
	queues := part{"catalog", d.catalog}
	if d.discovery != nil {
		queues = part{"discovery", d.discovery}
	}
	for _, p := range []part{{"tasks", d.keeper}, queues, {"summary publisher", d.publisher},
		{"aggregator", d.agg}, {"coordinator", d.coord}} {
		if err := d.startPart(ctx, p.name, p.svc); err != nil {
			return err
		}
	}
	d.log.Info("keeper running", "member", d.memberID, "redis", d.redisAddr(), "etcd", strings.Join(d.etcd.Endpoints(), ","),
		"health", d.healthAddr(), "layout", d.cfg.Redis.Layout, "prefix", d.cfg.Redis.Prefix)
	return nil
}

func (d *daemon) startPart(ctx context.Context, name string, svc service.Service) error {
	if err := svc.Start(ctx); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	d.started = append(d.started, part{name, svc})
	return nil
}

// build wires the parts, each from parts built before it. The one signal
// that flows back, a fence refusal from the tasks to the coordinator, goes
// through shard.Refusals, built first; the one notice the tasks hear for the
// catalog (a queue config changed) is the keeper's ConfigChanged channel,
// which the catalog, built after it, reads.
func (d *daemon) build() error {
	inst, err := kotel.NewInstruments(d.metrics.Meter(kotel.ScopeName))
	if err != nil {
		return fmt.Errorf("instruments: %w", err)
	}
	d.inst = inst
	refusals := shard.NewRefusals()
	// The fences know this process by its member id and a random nonce, so
	// that an equal token held by another keeper (etcd restored from a
	// backup) is refused.
	layout, err := d.newLayout(d.memberID + "/" + memberid.New())
	if err != nil {
		return err
	}
	keeper := tasks.New(layout, tasks.Config{
		Workers: d.cfg.Tasks.Workers, Batch: d.cfg.Tasks.Batch,
		MeasureInterval: d.cfg.Tasks.MeasureInterval, SweepInterval: d.cfg.Tasks.SweepInterval,
		Recorder: inst, OnFenced: refusals.Report, Logger: d.log,
	})
	ring := shard.RingConfig{Units: d.cfg.Ring.Units, ReplicationFactor: d.cfg.Ring.ReplicationFactor, Load: d.cfg.Ring.Load}
	coord := shard.NewCoordinator(d.etcd, shard.Config{Prefix: d.cfg.Etcd.Prefix, MemberID: d.memberID,
		SessionTTL: d.cfg.Etcd.SessionTTL, FenceRetry: d.cfg.Etcd.FenceRetry, Ring: ring, Refusals: refusals,
		Logger: d.log}, keeper)
	setQueues := func(queues map[string]queue.Config) {
		// Configs first: the keeper must know a queue before it is told
		// to own its shards.
		keeper.SetConfigs(queues)
		coord.SetShards(shardsOf(queues))
	}
	var (
		catalog  *queue.Catalog
		catShard func() []queue.Shard
	)
	if d.deckard == nil {
		catalog = queue.NewCatalog(queue.NewRegistry(d.rdb, d.cfg.Redis.Prefix),
			queue.CatalogConfig{Interval: d.cfg.Tasks.CatalogInterval, Refresh: keeper.ConfigChanged(), Logger: d.log},
			setQueues)
		catShard = catalog.Shards
	} else {
		// Set below, before anything starts.
		catShard = func() []queue.Shard { return d.discovery.Shards() }
	}
	agg := election.NewAggregator(d.etcd, election.Config{Prefix: d.cfg.Etcd.Prefix, MemberID: d.memberID,
		SessionTTL: d.cfg.Etcd.SessionTTL, Units: ring.Units, Logger: d.log}, catShard)
	if d.deckard != nil {
		d.discovery = d.newDiscovery(agg, setQueues)
	}
	source := shardSource{k: keeper, live: coord.Live, splitLocks: d.deckard != nil}
	publisher := election.NewPublisher(d.etcd, election.PublisherConfig{Prefix: d.cfg.Etcd.Prefix,
		MemberID: d.memberID, Interval: d.metrics.ExportInterval(), SessionTTL: d.cfg.Etcd.SessionTTL,
		Logger: d.log}, func() election.Summary {
		// The same snapshots the per-shard metrics report, plus the
		// shards owned but not measured yet.
		s := election.Summarize(d.memberID, source)
		s.OwnedShards = keeper.OwnedCount()
		return s
	})
	if err := inst.Observe(selfSource{keeper, agg}); err != nil {
		return fmt.Errorf("instruments: %w", err)
	}
	// The fleet series: the owned shards' and, while this keeper leads,
	// the global ones, under a resource that names no keeper.
	d.metrics.PublishFleet(source, agg)
	d.keeper, d.coord, d.catalog, d.agg, d.publisher = keeper, coord, catalog, agg, publisher
	if d.cfg.HealthAddr != "" {
		d.health = newHealth(d.cfg.HealthAddr, d)
	}
	return nil
}

// shutdown stops the started parts in reverse order, within one budget:
// the coordinator first (graceful handoff: running passes finish, the
// member key goes, then the lease and every ownership key bound to it, so
// successors take over at once), then the aggregator (resigns), the
// summary publisher, the catalog, the tasks, the health endpoint and the
// metrics (a last export). Safe after a partial start.
//
// It ends within shutdown_timeout (T). Passes take milliseconds, but one
// stuck on an unresponsive Redis would hold its shard's handoff: passes
// still running at T/4 are cancelled, and return within the Redis client's
// read timeout (3s) at most. The parts' stops end by 4/5 of T, each also
// bounded on its own, which leaves the last fifth for the final metrics
// export, closing the clients and stopping a local redis-server or embedded
// etcd.
func (d *daemon) shutdown() {
	budget := d.shutdownTimeout()
	start := time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(budget-budget/5))
	defer cancel()
	if d.keeper != nil {
		cut := time.AfterFunc(budget/4, func() {
			d.log.Warn("shutdown: cancelling passes still running", "after", budget/4)
			_ = d.keeper.Stop(ctx)
		})
		defer cut.Stop()
	}
	for i := len(d.started) - 1; i >= 0; i-- {
		p := d.started[i]
		stopCtx, stopCancel := ctx, context.CancelFunc(func() {})
		if p.svc == service.Service(d.metrics) {
			// The last export gets a short grace: a collector that is down
			// must not hold the shutdown for long.
			grace := min(2*time.Second, time.Until(start.Add(budget-budget/10)))
			stopCtx, stopCancel = context.WithTimeout(context.Background(), grace)
		}
		if err := p.svc.Stop(stopCtx); err != nil {
			d.log.Warn("stop "+p.name, "err", err)
		}
		stopCancel()
	}
	if d.etcd != nil {
		_ = d.etcd.Close()
	}
	if d.localEtcd != nil {
		_ = d.localEtcd.Stop()
	}
	if d.rdb != nil {
		_ = d.rdb.Close()
	}
	if d.sentinelWatch != nil {
		_ = d.sentinelWatch.Stop(ctx)
	}
	if d.localRedis != nil {
		_ = d.localRedis.Stop()
	}
	d.log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
}

func (d *daemon) startRedis(ctx context.Context) error {
	c := d.cfg.Redis
	addrs := splitList(c.Addr)
	if len(addrs) == 0 && c.Sentinel.Master == "" {
		if err := os.MkdirAll(c.DataDir, 0o755); err != nil {
			return fmt.Errorf("redis data dir: %w", err)
		}
		srv, err := redisserver.Start(ctx, redisserver.Config{Dir: c.DataDir,
			ExtraArgs: []string{"--appendonly", "yes"}})
		if err != nil {
			return fmt.Errorf("local redis-server (set redis.addr to use another): %w", err)
		}
		d.localRedis = srv
		addrs = []string{srv.Addr}
		if err := writeDiscovery(c.DataDir, "addr", srv.Addr); err != nil {
			d.log.Warn("cannot note the local redis address", "err", err)
		}
		d.log.Info("started a local redis-server", "addr", srv.Addr, "dir", c.DataDir)
	}
	opt, err := redisOptions(c, addrs)
	if err != nil {
		return err
	}
	// keeper needs maxmemory-policy noeviction: checked on every new
	// connection, so at start and on every reconnect.
	opt.OnConnect = (&evictionGuard{log: d.log, warnOnly: c.AllowEviction == "warn",
		sentinel: c.Sentinel.Master != ""}).onConnect
	if c.Sentinel.Master != "" {
		d.sentinelWatch = newSentinelWatch(opt, d.log)
		if err := d.sentinelWatch.Start(ctx); err != nil {
			return fmt.Errorf("sentinel watch: %w", err)
		}
	}
	opt.PoolSize = redisPoolSize(d.cfg.Tasks.Workers)
	d.rdb = redis.NewUniversalClient(opt)
	where := d.redisAddr()
	d.rdb.AddHook(&d.redisCmds)
	if err := d.rdb.Ping(ctx).Err(); errors.Is(err, queue.ErrEvictionPolicy) {
		return fmt.Errorf("redis %s: %w; set maxmemory-policy noeviction, or redis.allow_eviction: warn to run anyway",
			where, err)
	} else if err != nil {
		// Keep going: every component retries, and a keeper that cannot
		// reach Redis still holds its place in the fleet.
		d.log.Error("redis unreachable at start; retrying in the background", "addr", where, "err", err)
	}
	return nil
}

func (d *daemon) startEtcd(ctx context.Context) error {
	c := d.cfg.Etcd
	endpoints := c.Endpoints
	if len(endpoints) == 0 {
		srv, err := etcdserver.Start(ctx, etcdserver.Config{Dir: c.DataDir, Name: "keeper-embedded"})
		if err != nil {
			return fmt.Errorf("embedded etcd (set etcd.endpoints to join a cluster): %w", err)
		}
		d.localEtcd = srv
		endpoints = srv.Endpoints()
		if err := writeDiscovery(c.DataDir, "endpoints", strings.Join(endpoints, ",")); err != nil {
			d.log.Warn("cannot note the embedded etcd endpoints", "err", err)
		}
		d.log.Info("started an embedded etcd", "endpoints", strings.Join(endpoints, ","), "dir", c.DataDir)
	}
	cc := clientv3.Config{Endpoints: endpoints, DialTimeout: c.DialTimeout, Username: c.Username,
		Password: c.Password, Logger: quietEtcdLogger()}
	if c.CAFile != "" || c.CertFile != "" {
		info := transport.TLSInfo{TrustedCAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile}
		tc, err := info.ClientConfig()
		if err != nil {
			return fmt.Errorf("etcd TLS: %w", err)
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return fmt.Errorf("etcd client: %w", err)
	}
	d.etcd = cli
	return nil
}

// applyQueues creates or updates the queues declared in the config file.
// A bad entry is logged and skipped; the others are applied.
func (d *daemon) applyQueues(ctx context.Context) {
	reg := queue.NewRegistry(d.rdb, d.cfg.Redis.Prefix)
	for name, qc := range d.cfg.Queues {
		err := reg.Create(ctx, name, qc)
		if errors.Is(err, queue.ErrQueueExists) {
			var cur queue.Config
			if cur, err = reg.Get(ctx, name); err == nil && cur != qc.WithDefaults() {
				err = reg.Update(ctx, name, qc)
			}
		}
		if err != nil {
			d.log.Error("declared queue not applied", "queue", name, "err", err)
		}
	}
}

// shardsOf lists every shard of the queues.
func shardsOf(queues map[string]queue.Config) []queue.Shard {
	var out []queue.Shard
	for name, cfg := range queues {
		for p := 0; p < cfg.Partitions; p++ {
			out = append(out, queue.Shard{Queue: name, Partition: p})
		}
	}
	return out
}

func (d *daemon) redisAddr() string {
	if d.localRedis != nil {
		return d.localRedis.Addr
	}
	return describeRedis(d.cfg.Redis)
}

func (d *daemon) healthAddr() string {
	if d.health == nil {
		return ""
	}
	return d.health.addr
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// shardSource feeds the per-shard series from the keeper's last
// measurements of the shards it owns: collection costs Redis nothing, and a
// shard it disowned is not listed from that moment.
type shardSource struct {
	k *tasks.Keeper
	// live: the session under which the shards are owned still holds
	// (shard.Coordinator.Live); while it does not, nothing is listed.
	live func() bool
	// splitLocks: the layout has two lock pools (Deckard's).
	splitLocks bool
}

func (s shardSource) EachShard(fn func(kotel.ShardSnapshot)) {
	if !s.live() {
		return
	}
	s.k.EachMeasurement(func(m tasks.ShardMeasurement) {
		fn(kotel.ShardSnapshot{Queue: m.Shard.Queue, Shard: m.Shard.String(),
			Ready: m.Ready, Inflight: m.Inflight, Locked: m.Locked, Dead: m.Dead,
			SplitLocks: s.splitLocks, LockedAck: m.LockedAck, LockedNack: m.LockedNack,
			OldestReadyAge: m.OldestReadyAge, Counters: m.Counters, Lag: m.Lag})
	})
}

// selfSource describes this keeper for its self metrics.
type selfSource struct {
	k   *tasks.Keeper
	agg *election.Aggregator
}

func (s selfSource) OwnedShards() int { return s.k.OwnedCount() }
func (s selfSource) IsLeader() bool   { return s.agg.IsLeader() }

// redisPoolHeadroom is the connections the daemon uses beside its passes
// and claims: the sweep's reads, the catalog, the aggregator's and the
// status endpoint's reads.
const redisPoolHeadroom = 8

// redisPoolSize is the connections the daemon's Redis client may open (per
// node on a cluster): go-redis's default (10 per CPU) unless the passes'
// round trips (workers) and the claims' pipelines (tasks.ProbePipelines),
// each holding a connection for its whole round trip, need more. With
// fewer, a pass waits for a connection, up to go-redis's pool timeout, while
// a takeover's claims hold them. Connections are opened only when used.
func redisPoolSize(workers int) int {
	return max(10*runtime.GOMAXPROCS(0), workers+tasks.ProbePipelines+redisPoolHeadroom)
}
