package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/election"
	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/redisserver"
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
	d := &daemon{cfg: cfg, log: newLogger(cfg.LogLevel)}
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

func newLogger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
	redis.SetLogger(redisLogger{log.With("component", "redis-client")})
	return log
}

// redisLogger sends go-redis's own messages (dial failures, pool trouble)
// through slog, so every line keeper prints is structured.
type redisLogger struct{ log *slog.Logger }

func (r redisLogger) Printf(ctx context.Context, format string, v ...any) {
	r.log.WarnContext(ctx, fmt.Sprintf(format, v...))
}

// daemon is one keeper process: the components of the design brief wired
// in the order data flows (etcd membership -> ring -> owned shards -> tasks
// -> Redis; tasks report to otel).
type daemon struct {
	cfg Config
	log *slog.Logger

	localRedis *redisserver.Server
	localEtcd  *etcdserver.Server
	rdb        redis.UniversalClient
	etcd       *clientv3.Client
	// sentinelWatch follows Sentinel's failovers for rdb (redis.sentinel).
	sentinelWatch *sentinelWatch

	metrics   *kotel.Provider
	inst      *kotel.Instruments
	keeper    *tasks.Keeper
	catalog   *queue.Catalog
	coord     *shard.Coordinator
	agg       *election.Aggregator
	publisher *election.Publisher
	health    *healthServer
}

// start brings the daemon up. ctx bounds the start (waiting for etcd, the
// first reads); it is the signal context, so it must not be what ends the
// running parts: they get life, which keeps ctx's values but not its
// cancellation, and end in shutdown, in handoff order.
func (d *daemon) start(ctx context.Context) error {
	life := context.WithoutCancel(ctx)
	var err error
	if err = d.startRedis(ctx); err != nil {
		return err
	}
	if err = d.startEtcd(ctx); err != nil {
		return err
	}
	ringCfg := shard.RingConfig{Partitions: d.cfg.Ring.Partitions,
		ReplicationFactor: d.cfg.Ring.ReplicationFactor, Load: d.cfg.Ring.Load}
	// The coordinator settles the member id (random when none is given);
	// everything else names this keeper the same way.
	d.coord = shard.NewCoordinator(d.etcd, shard.Config{Prefix: d.cfg.Etcd.Prefix, MemberID: d.cfg.MemberID,
		SessionTTL: d.cfg.Etcd.SessionTTL, FenceRetry: d.cfg.Etcd.FenceRetry, Ring: ringCfg, Logger: d.log}, ownership{d})
	memberID := d.coord.MemberID()
	d.applyQueues(ctx)

	d.metrics, err = kotel.Start(ctx, kotel.Config{MemberID: memberID, Endpoint: d.cfg.Metrics.Endpoint,
		ExportInterval: d.cfg.Metrics.ExportInterval, Disabled: d.cfg.Metrics.Disabled,
		PrometheusAddr: d.cfg.Metrics.PrometheusAddr, Logger: d.log})
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}

	// The fences know this process by its member id and a random nonce, so
	// that an equal token held by another keeper (etcd restored from a
	// backup) is refused.
	layout := queue.NewNative(d.rdb, d.cfg.Redis.Prefix).WithOwner(memberID + "/" + processNonce()).
		WithClaimWait(d.cfg.Redis.ReplicaWait)
	if d.cfg.Tasks.RecordHistory {
		layout = layout.WithHistory()
	}
	rec := &recorderProxy{}
	d.keeper = tasks.New(layout, tasks.Config{
		Workers: d.cfg.Tasks.Workers, Batch: d.cfg.Tasks.Batch,
		MeasureInterval: d.cfg.Tasks.MeasureInterval, SweepInterval: d.cfg.Tasks.SweepInterval,
		Recorder: rec, Logger: d.log,
		OnFenced: func(s queue.Shard, token int64) {
			if d.coord != nil {
				d.coord.Fenced(s.String(), token)
			}
		},
		OnConfigChanged: func() {
			if d.catalog != nil {
				d.catalog.Refresh()
			}
		},
	})
	d.catalog = queue.NewCatalog(queue.NewRegistry(d.rdb, d.cfg.Redis.Prefix),
		queue.CatalogConfig{Interval: d.cfg.Tasks.CatalogInterval, Logger: d.log}, d.onCatalog)
	d.agg = election.NewAggregator(d.etcd, election.Config{Prefix: d.cfg.Etcd.Prefix, MemberID: memberID,
		SessionTTL: d.cfg.Etcd.SessionTTL, Partitions: ringCfg.Partitions, Logger: d.log},
		d.catalogShardNames)
	d.publisher = election.NewPublisher(d.etcd, election.PublisherConfig{Prefix: d.cfg.Etcd.Prefix,
		MemberID: memberID, Interval: d.metrics.ExportInterval(), SessionTTL: d.cfg.Etcd.SessionTTL,
		Logger: d.log}, d.summary)
	d.inst, err = kotel.RegisterInstruments(d.metrics.Meter("github.com/keeperhq/keeper"),
		shardSource{d.keeper}, d.agg, selfSource{d})
	if err != nil {
		return fmt.Errorf("instruments: %w", err)
	}
	rec.set(d.inst)
	// The health endpoint comes up before the keeper joins the fleet: while
	// etcd or Redis is unreachable, /healthz keeps a liveness probe from
	// restarting a process that is only waiting, and /readyz says what it
	// waits for.
	if d.cfg.HealthAddr != "" {
		d.health, err = startHealth(d.cfg.HealthAddr, d)
		if err != nil {
			return err
		}
	}

	if err := d.keeper.Start(ctx); err != nil {
		return fmt.Errorf("tasks: %w", err)
	}
	if err := d.catalog.Start(life); err != nil {
		// Not fatal: the catalog retries, and shards are taken as soon as
		// queues become readable.
		d.log.Error("queue registry unreadable at start; retrying", "err", err)
	}
	if err := d.coord.Start(ctx); err != nil {
		return fmt.Errorf("join the fleet: %w", err)
	}
	d.onCatalog(d.catalog.Queues())
	if err := d.agg.Start(life); err != nil {
		return fmt.Errorf("aggregator: %w", err)
	}
	if err := d.publisher.Start(life); err != nil {
		return fmt.Errorf("summary publisher: %w", err)
	}
	d.log.Info("keeper running", "redis", d.redisAddr(), "etcd", strings.Join(d.etcd.Endpoints(), ","),
		"health", d.healthAddr())
	return nil
}

// shutdown hands shards over first (graceful handoff: running passes finish,
// ownership keys are deleted so successors take over at once), then resigns
// leadership, then stops everything else. Safe after a partial start.
//
// It ends within shutdown_timeout (T). Passes take milliseconds, but one
// stuck on an unresponsive Redis would hold its shard's handoff: passes
// still running at T/4 are cancelled, and return within the Redis client's
// read timeout (3s) at most. The etcd steps (leave, delete the ownership
// keys, resign, revoke) end by 4/5 of T, each also bounded on its own, which
// leaves the last fifth for the final metrics export, closing the clients
// and stopping a local redis-server or embedded etcd. The catalog is of no
// use to a keeper that is leaving: it stops at once, alongside the handoff.
func (d *daemon) shutdown() {
	budget := d.shutdownTimeout()
	start := time.Now()
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(budget-budget/5))
	defer cancel()
	if d.keeper != nil {
		cut := time.AfterFunc(budget/4, func() {
			d.log.Warn("shutdown: cancelling passes still running", "after", budget/4)
			d.keeper.Stop()
		})
		defer cut.Stop()
	}
	catalogStopped := make(chan struct{})
	go func() {
		defer close(catalogStopped)
		if d.catalog != nil {
			d.catalog.Stop()
		}
	}()
	if d.health != nil {
		d.health.stop(ctx)
	}
	if d.coord != nil {
		if err := d.coord.Stop(ctx); err != nil {
			d.log.Warn("handoff", "err", err)
		}
	}
	if d.agg != nil {
		if err := d.agg.Stop(ctx); err != nil {
			d.log.Warn("resign", "err", err)
		}
	}
	if d.publisher != nil {
		d.publisher.Stop(ctx)
	}
	if d.keeper != nil {
		d.keeper.Stop()
	}
	<-catalogStopped
	if d.metrics != nil {
		// The last export gets a short grace: a collector that is down must
		// not hold the shutdown for long.
		grace := min(2*time.Second, time.Until(start.Add(budget-budget/10)))
		mctx, mcancel := context.WithTimeout(context.Background(), grace)
		_ = d.metrics.Shutdown(mctx)
		mcancel()
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
		d.sentinelWatch.Stop()
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
		d.sentinelWatch.Start(ctx)
	}
	d.rdb = redis.NewUniversalClient(opt)
	where := d.redisAddr()
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

// onCatalog hands the current queues to the tasks (configs) and to the
// coordinator (the shard list it assigns).
func (d *daemon) onCatalog(queues map[string]queue.Config) {
	if d.keeper == nil || d.coord == nil {
		return
	}
	for name, cfg := range queues {
		d.keeper.SetConfig(name, cfg)
	}
	d.coord.SetShards(d.catalogShardNames())
}

func (d *daemon) catalogShardNames() []string {
	shards := d.catalog.Shards()
	names := make([]string, len(shards))
	for i, s := range shards {
		names[i] = s.String()
	}
	return names
}

// summary is what this keeper publishes for the aggregator: the same
// snapshots its per-shard metrics report, plus the shards it owns but has
// not measured yet.
func (d *daemon) summary() election.Summary {
	s := election.Summarize(d.coord.MemberID(), shardSource{d.keeper})
	s.OwnedShards = len(d.keeper.Owned())
	return s
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

// processNonce tells this process from an earlier or later one with the
// same member id.
func processNonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
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

// ownership adapts the coordinator's string shard names to the keeper.
type ownership struct{ d *daemon }

func (o ownership) Own(name string, token int64) {
	s, err := queue.ParseShard(name)
	if err != nil {
		o.d.log.Error("coordinator named a bad shard", "shard", name, "err", err)
		return
	}
	cfg, ok := o.d.catalog.Config(s.Queue)
	if !ok {
		return
	}
	o.d.keeper.Own(s, cfg, token)
}

func (o ownership) Disown(name string) {
	if s, err := queue.ParseShard(name); err == nil {
		o.d.keeper.Disown(s)
	}
}

func (o ownership) DisownAll() { o.d.keeper.DisownAll() }

// shardSource feeds the per-shard instruments from the keeper's last
// measurements: collection costs Redis nothing. It lists the owned shards
// too, measured or not, so that the lags of a takeover are kept.
type shardSource struct{ k *tasks.Keeper }

var _ kotel.OwnedSource = shardSource{}

func (s shardSource) EachOwned(fn func(q, shard string)) {
	s.k.EachOwned(func(sh queue.Shard) { fn(sh.Queue, sh.String()) })
}

func (s shardSource) EachShard(fn func(kotel.ShardSnapshot)) {
	s.k.EachMeasurement(func(m tasks.ShardMeasurement) {
		fn(kotel.ShardSnapshot{Queue: m.Shard.Queue, Shard: m.Shard.String(),
			Ready: m.Ready, Inflight: m.Inflight, Locked: m.Locked, Dead: m.Dead,
			OldestReadyAge: m.OldestReadyAge, Counters: m.Counters})
	})
}

type selfSource struct{ d *daemon }

func (s selfSource) OwnedShards() int { return len(s.d.keeper.Owned()) }
func (s selfSource) IsLeader() bool   { return s.d.agg != nil && s.d.agg.IsLeader() }

// recorderProxy lets the keeper be built before the instruments, which need
// the keeper as their shard source.
type recorderProxy struct{ r tasks.Recorder }

func (p *recorderProxy) set(r tasks.Recorder) { p.r = r }
func (p *recorderProxy) RecordUnlockLag(ctx context.Context, q, s string, lag time.Duration) {
	if p.r != nil {
		p.r.RecordUnlockLag(ctx, q, s, lag)
	}
}
func (p *recorderProxy) RecordPass(ctx context.Context, task string, d time.Duration, err error) {
	if p.r != nil {
		p.r.RecordPass(ctx, task, d, err)
	}
}
func (p *recorderProxy) RecordError(ctx context.Context, kind string) {
	if p.r != nil {
		p.r.RecordError(ctx, kind)
	}
}
func (p *recorderProxy) RecordFenceRefusal(ctx context.Context, q, s string) {
	if p.r != nil {
		p.r.RecordFenceRefusal(ctx, q, s)
	}
}
