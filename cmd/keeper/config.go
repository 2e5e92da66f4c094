package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/keeperhq/keeper/election"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
	"github.com/keeperhq/keeper/tasks"
	"gopkg.in/yaml.v3"
)

// Config is the daemon's configuration. It is read from a YAML file, then
// KEEPER_* environment variables, then flags: each later source overrides
// the earlier ones. Every leaf has an environment variable named after its
// YAML path (etcd.endpoints -> KEEPER_ETCD_ENDPOINTS) and a flag named after
// it (--etcd.endpoints). The defaults are in defaultConfig; `keeper run -h`
// lists them all.
type Config struct {
	// MemberID names this keeper in etcd and in metrics
	// (service.instance.id). Default: $POD_NAME, else a random id.
	MemberID string `yaml:"member_id" help:"member id (default $POD_NAME, else random)"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `yaml:"log_level" help:"log level: debug, info, warn, error"`
	// LogFormat is text, json, or auto: text when stderr is a terminal (a
	// person reads it), JSON otherwise (a log pipeline parses it).
	LogFormat string `yaml:"log_format" help:"log format: auto (text on a terminal, JSON otherwise), text, json"`
	// HealthAddr serves /healthz and /readyz; empty disables it.
	HealthAddr string `yaml:"health_addr" help:"health endpoint address (empty: off)"`
	// ShutdownTimeout bounds a graceful stop (SIGTERM, SIGINT): the running
	// passes finish, every shard is handed over, and the process exits
	// within it (see daemon.shutdown for how it is spent).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout" help:"a SIGTERM finishes the running passes, hands every shard over and exits within this; a pod's termination grace period must be longer"`

	Redis   RedisConfig   `yaml:"redis"`
	Deckard DeckardConfig `yaml:"deckard"`
	Etcd    EtcdConfig    `yaml:"etcd"`
	Ring    RingConfig    `yaml:"ring"`
	Tasks   TasksConfig   `yaml:"tasks"`
	Metrics MetricsConfig `yaml:"metrics"`

	// Queues are created at start when missing, and updated when their
	// stored config differs. A malformed entry is reported and skipped; the
	// others are served.
	Queues map[string]queue.Config `yaml:"queues" env:"-"`
}

// RedisConfig says where the queues live: redis.addr (one server, or a
// Redis Cluster), or the primary that Redis Sentinel names
// (redis.sentinel), or neither (a local redis-server).
type RedisConfig struct {
	Addr string `yaml:"addr" help:"redis address host:port; several, comma-separated, make a Redis Cluster client (empty, without redis.sentinel: start a local redis-server on a free loopback port)"`
	// Layout is whose keys keeper housekeeps: "native" (keeper's own queues)
	// or "deckard" (Deckard's, in place of its unlock and timeout tasks).
	Layout string `yaml:"layout" help:"native: keeper's own queues; deckard: Deckard's keys (unlock and timeout)"`
	// Prefix is the key prefix; empty takes the layout's default: keeper
	// (native) or deckard_v1 (deckard, trimmed of spaces and ':' as Deckard
	// trims DECKARD_CACHE_PREFIX).
	Prefix       string `yaml:"prefix" help:"key prefix (empty: keeper, or deckard_v1 with redis.layout deckard; a deckard prefix is trimmed like DECKARD_CACHE_PREFIX)"`
	Username     string `yaml:"username" help:"redis ACL user"`
	PasswordFile string `yaml:"password_file" help:"file holding the redis password (or set KEEPER_REDIS_PASSWORD)"`
	Password     string `yaml:"-" flag:"-" help:"redis password (environment only: KEEPER_REDIS_PASSWORD)"`
	TLS          bool   `yaml:"tls" help:"connect with TLS"`
	CAFile       string `yaml:"ca_file" help:"CA bundle for redis TLS (empty: the system roots)"`
	CertFile     string `yaml:"cert_file" help:"client certificate for redis TLS (redis-server's tls-auth-clients)"`
	KeyFile      string `yaml:"key_file" help:"client key for redis TLS"`
	DataDir      string `yaml:"data_dir" help:"data dir of the local redis-server started when addr is empty"`
	// AllowEviction is "no" (refuse a Redis whose maxmemory-policy is not
	// noeviction) or "warn" (log a warning at start and go on).
	AllowEviction string        `yaml:"allow_eviction" help:"no: refuse a redis whose maxmemory-policy may evict keys (checked at start and on every new connection); warn: log a warning instead"`
	ReplicaWait   time.Duration `yaml:"replica_wait" help:"how long a shard claim waits for a replica's acknowledgement (WAIT) when the redis primary has replicas; unacknowledged claims are made again"`

	// Sentinel, when set, names the primary instead of Addr.
	Sentinel SentinelConfig `yaml:"sentinel"`
}

// SentinelConfig finds the Redis primary through Redis Sentinel: keeper
// asks the sentinels for the master's address, and follows a failover to
// the replica they promote. The data nodes take redis.username, the redis
// password and redis's TLS settings; the sentinels take the same TLS
// settings and their own user and password (a sentinel's requirepass is
// its own, not the monitored servers').
type SentinelConfig struct {
	Master       string   `yaml:"master" help:"name of the master the sentinels monitor (sentinel monitor <name> ...); with redis.sentinel.addrs, instead of redis.addr"`
	Addrs        []string `yaml:"addrs" help:"sentinel addresses host:port, comma-separated; more are discovered from the ones given"`
	Username     string   `yaml:"username" help:"the sentinels' ACL user (empty: none)"`
	PasswordFile string   `yaml:"password_file" help:"file holding the sentinels' own password (their requirepass; or set KEEPER_REDIS_SENTINEL_PASSWORD; empty: none)"`
	Password     string   `yaml:"-" flag:"-" help:"sentinel password (environment only: KEEPER_REDIS_SENTINEL_PASSWORD)"`
}

// The layouts (redis.layout).
const (
	LayoutNative  = "native"
	LayoutDeckard = "deckard"
)

// DeckardConfig tunes the deckard layout; ignored with the native one.
type DeckardConfig struct {
	// KeyspaceEvents is how keeper hears the deadlines Deckard's clients
	// set: auto (set notify-keyspace-events when CONFIG is allowed, else
	// poll), on (trust they are set; never run CONFIG SET) or off (poll).
	KeyspaceEvents string `yaml:"keyspace_events" help:"auto: set notify-keyspace-events if CONFIG is allowed, else poll; on: the operator set them (Kz); off: poll each owned queue's deadlines"`
	// DiscoveryInterval is how often the fleet (its aggregator leader)
	// scans Redis for Deckard queues: a new queue is housekept within it.
	DiscoveryInterval time.Duration `yaml:"discovery_interval" help:"how often the aggregator leader scans redis for deckard queues (one SCAN of the keyspace per primary)"`
	// PollMin and PollMax bound the adaptive poll interval of an owned queue
	// when keyspace events are off.
	PollMin time.Duration `yaml:"poll_min" help:"without keyspace events: poll interval of a queue that changes"`
	PollMax time.Duration `yaml:"poll_max" help:"without keyspace events: poll interval of a queue that sits still"`
}

// EtcdConfig says where the coordination lives.
type EtcdConfig struct {
	Endpoints    []string      `yaml:"endpoints" help:"etcd endpoints, comma-separated (empty: run an embedded single-member etcd)"`
	Prefix       string        `yaml:"prefix" help:"etcd key prefix"`
	DataDir      string        `yaml:"data_dir" help:"data dir of the embedded etcd"`
	SessionTTL   time.Duration `yaml:"session_ttl" help:"membership lease TTL; a crashed keeper's shards move after it"`
	DialTimeout  time.Duration `yaml:"dial_timeout" help:"etcd dial timeout"`
	Username     string        `yaml:"username" help:"etcd user"`
	PasswordFile string        `yaml:"password_file" help:"file holding the etcd password (or set KEEPER_ETCD_PASSWORD)"`
	Password     string        `yaml:"-" flag:"-" help:"etcd password (environment only: KEEPER_ETCD_PASSWORD)"`
	CAFile       string        `yaml:"ca_file" help:"CA bundle for etcd TLS"`
	CertFile     string        `yaml:"cert_file" help:"client certificate for etcd TLS"`
	KeyFile      string        `yaml:"key_file" help:"client key for etcd TLS"`
	FenceRetry   time.Duration `yaml:"fence_retry" help:"how often a shard refused by a fence ahead of etcd (etcd data reset) is claimed again"`
}

// RingConfig shapes the consistent-hash ring; every keeper of a fleet must
// use the same values. The unit count keeps its first name, ring.partitions
// (KEEPER_RING_PARTITIONS, --ring.partitions), which existing config files,
// manifests and the ring record in etcd use: renaming it would buy a word
// at the price of a second, deprecated spelling to accept.
type RingConfig struct {
	Units             int     `yaml:"partitions" help:"ownership units on the ring (0: built-in default)"`
	ReplicationFactor int     `yaml:"replication_factor" help:"virtual nodes per keeper (0: built-in default)"`
	Load              float64 `yaml:"load" help:"bounded-load factor (0: built-in default)"`
}

// TasksConfig tunes housekeeping.
type TasksConfig struct {
	Workers         int           `yaml:"workers" help:"round trips to Redis in flight, each carrying up to 128 due passes"`
	Batch           int           `yaml:"batch" help:"messages per pass"`
	MeasureInterval time.Duration `yaml:"measure_interval" help:"how often a changed shard is measured"`
	SweepInterval   time.Duration `yaml:"sweep_interval" help:"safety sweep period over all owned shards"`
	CatalogInterval time.Duration `yaml:"catalog_interval" help:"how often the queue registry is re-read (changes are also pushed)"`
	RecordHistory   bool          `yaml:"record_history" help:"record every housekeeping pass in a per-shard stream (for the chaos checker)"`
}

// MetricsConfig controls metrics export. The OTLP exporter also honours the
// standard OTEL_* variables (endpoint, headers, TLS, interval).
type MetricsConfig struct {
	Disabled       bool          `yaml:"disabled" help:"turn metrics off"`
	Endpoint       string        `yaml:"endpoint" help:"OTLP endpoint when OTEL_EXPORTER_OTLP_ENDPOINT is unset (http:// plaintext, https:// TLS); gRPC, or with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf the HTTP receiver's base URL; with neither, metrics are not pushed"`
	ExportInterval time.Duration `yaml:"export_interval" help:"export interval (0: OTEL_METRIC_EXPORT_INTERVAL, else 10s)"`
	PrometheusAddr string        `yaml:"prometheus_addr" help:"optional Prometheus pull endpoint host:port, serving /metrics (empty: off)"`
}

func defaultConfig() Config {
	return Config{
		LogLevel:        "info",
		LogFormat:       "auto",
		HealthAddr:      "127.0.0.1:8080",
		ShutdownTimeout: 30 * time.Second,
		Redis: RedisConfig{Layout: LayoutNative, DataDir: "keeper-data/redis", AllowEviction: "no",
			ReplicaWait: queue.DefaultClaimWait},
		Deckard: DeckardConfig{KeyspaceEvents: queue.KeyspaceAuto, DiscoveryInterval: election.DiscoveryIntervalDefault,
			PollMin: queue.DefaultPollMin, PollMax: queue.DefaultPollMax},
		Etcd: EtcdConfig{Prefix: shard.PrefixDefault, DataDir: "keeper-data/etcd", SessionTTL: shard.SessionTTLDefault,
			DialTimeout: 5 * time.Second, FenceRetry: shard.FenceRetryDefault},
		Tasks: TasksConfig{Workers: tasks.WorkersDefault, Batch: tasks.BatchDefault,
			MeasureInterval: tasks.MeasureIntervalDefault, SweepInterval: tasks.SweepIntervalDefault,
			CatalogInterval: queue.CatalogIntervalDefault},
	}
}

// loadConfig builds the config from defaults, the YAML file (if any), the
// environment and the flags in args. It returns the remaining arguments.
func loadConfig(name string, args []string, environ []string) (Config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	file := fs.String("config", envOr(environ, "KEEPER_CONFIG", ""), "YAML config file (env KEEPER_CONFIG)")
	// Flags are bound to a scratch copy: they apply last, but the file
	// path must be known before the file is read.
	var flagged Config
	setFlags := map[string]bool{}
	bindFlags(fs, reflect.ValueOf(&flagged).Elem(), "", reflect.ValueOf(cfg))
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: keeper %s [flags]\n\nEvery flag also reads KEEPER_<NAME> (dots become underscores) and the YAML key of the same path.\n\n", name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	fs.Visit(func(f *flag.Flag) { setFlags[f.Name] = true })
	if *file != "" {
		data, err := os.ReadFile(*file)
		if err != nil {
			return Config{}, fmt.Errorf("config file: %w", err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
			return Config{}, fmt.Errorf("config file %s: %w", *file, err)
		}
	}
	if err := applyEnv(reflect.ValueOf(&cfg).Elem(), "KEEPER", environ); err != nil {
		return Config{}, err
	}
	copyFlags(reflect.ValueOf(&cfg).Elem(), reflect.ValueOf(flagged), "", setFlags)
	if cfg.MemberID == "" {
		cfg.MemberID = envOr(environ, "POD_NAME", "")
	}
	if err := cfg.readSecrets(); err != nil {
		return Config{}, err
	}
	cfg.applyLayoutDefaults()
	return cfg, cfg.validate()
}

// applyLayoutDefaults sets what depends on the layout: the prefix when none
// is configured, and a deckard prefix as Deckard trims it.
func (c *Config) applyLayoutDefaults() {
	switch c.Redis.Layout {
	case LayoutDeckard:
		c.Redis.Prefix = queue.DeckardPrefix(c.Redis.Prefix)
	case LayoutNative:
		if c.Redis.Prefix == "" {
			c.Redis.Prefix = queue.DefaultPrefix
		}
	}
}

func (c *Config) readSecrets() error {
	read := func(path string, into *string, what string) error {
		if path == "" || *into != "" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("%s password file: %w", what, err)
		}
		*into = strings.TrimRight(string(b), "\r\n")
		return nil
	}
	if err := read(c.Redis.PasswordFile, &c.Redis.Password, "redis"); err != nil {
		return err
	}
	if err := read(c.Redis.Sentinel.PasswordFile, &c.Redis.Sentinel.Password, "redis sentinel"); err != nil {
		return err
	}
	return read(c.Etcd.PasswordFile, &c.Etcd.Password, "etcd")
}

func (c *Config) validate() error {
	var problems []string
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		problems = append(problems, fmt.Sprintf("log_level %q is not debug, info, warn or error", c.LogLevel))
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		problems = append(problems, fmt.Sprintf("log_format %q is not auto, text or json", c.LogFormat))
	}
	for _, l := range limits {
		if p := l.check(c); p != "" {
			problems = append(problems, p)
		}
	}
	if c.Redis.AllowEviction != "no" && c.Redis.AllowEviction != "warn" {
		problems = append(problems, fmt.Sprintf("redis.allow_eviction %q is not no or warn", c.Redis.AllowEviction))
	}
	switch c.Redis.Layout {
	case LayoutNative:
		if c.Redis.Prefix == "" || strings.ContainsAny(c.Redis.Prefix, "{} ") {
			problems = append(problems, fmt.Sprintf("redis.prefix %q must be non-empty, without braces or spaces", c.Redis.Prefix))
		}
	case LayoutDeckard:
		problems = append(problems, c.validateDeckard()...)
	default:
		problems = append(problems, fmt.Sprintf("redis.layout %q is not native or deckard", c.Redis.Layout))
	}
	if !c.Redis.TLS && (c.Redis.CAFile != "" || c.Redis.CertFile != "" || c.Redis.KeyFile != "") {
		problems = append(problems, "redis.ca_file, redis.cert_file and redis.key_file need redis.tls: true")
	}
	if c.Redis.TLS && c.Redis.Addr == "" && c.Redis.Sentinel.Master == "" {
		problems = append(problems, "redis.tls needs redis.addr or redis.sentinel: the local redis-server started without them speaks plain TCP on loopback")
	}
	problems = append(problems, c.Redis.Sentinel.check(c.Redis.Addr)...)
	if (c.Redis.CertFile == "") != (c.Redis.KeyFile == "") {
		problems = append(problems, "redis.cert_file and redis.key_file go together")
	}
	if (c.Etcd.CertFile == "") != (c.Etcd.KeyFile == "") {
		problems = append(problems, "etcd.cert_file and etcd.key_file go together")
	}
	if !strings.HasSuffix(c.Etcd.Prefix, "/") {
		problems = append(problems, fmt.Sprintf("etcd.prefix %q must end with /", c.Etcd.Prefix))
	}
	if len(problems) > 0 {
		return fmt.Errorf("bad config: %s", strings.Join(problems, "; "))
	}
	return nil
}

// validateDeckard checks what the deckard layout needs.
func (c *Config) validateDeckard() []string {
	var problems []string
	if strings.ContainsAny(c.Redis.Prefix, "{}") {
		problems = append(problems, fmt.Sprintf("redis.prefix %q has a brace: Deckard's keys would lose their hash tag", c.Redis.Prefix))
	}
	switch c.Deckard.KeyspaceEvents {
	case queue.KeyspaceAuto, queue.KeyspaceOn, queue.KeyspaceOff:
	default:
		problems = append(problems, fmt.Sprintf("deckard.keyspace_events %q is not auto, on or off", c.Deckard.KeyspaceEvents))
	}
	if c.Deckard.PollMax < c.Deckard.PollMin {
		problems = append(problems, fmt.Sprintf("deckard.poll_max %s is below deckard.poll_min %s",
			c.Deckard.PollMax, c.Deckard.PollMin))
	}
	if len(c.Queues) > 0 {
		// Declared queues are native ones: written under a Deckard prefix
		// they would be keys Deckard does not know.
		problems = append(problems, "queues declares native queues; with redis.layout deckard the queues are Deckard's, found by discovery: remove queues")
	}
	return problems
}

// check validates the sentinel settings; addr is redis.addr.
func (s SentinelConfig) check(addr string) []string {
	var problems []string
	switch {
	case s.Master == "" && len(s.Addrs) > 0:
		problems = append(problems, "redis.sentinel.addrs needs redis.sentinel.master (the name the sentinels monitor the primary under)")
	case s.Master != "" && len(s.Addrs) == 0:
		problems = append(problems, "redis.sentinel.master needs redis.sentinel.addrs (at least one sentinel's host:port)")
	case s.Master == "" && (s.Username != "" || s.PasswordFile != "" || s.Password != ""):
		problems = append(problems, "redis.sentinel.username and the sentinel password need redis.sentinel.master and redis.sentinel.addrs")
	}
	if s.Master != "" && addr != "" {
		problems = append(problems, "redis.addr and redis.sentinel are exclusive: with Sentinel, keeper asks the sentinels where the primary is")
	}
	if strings.ContainsAny(s.Master, " \t\r\n") {
		problems = append(problems, fmt.Sprintf("redis.sentinel.master %q has white space (Sentinel names are single words)", s.Master))
	}
	for _, a := range s.Addrs {
		host, port, err := net.SplitHostPort(a)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			problems = append(problems, fmt.Sprintf("redis.sentinel.addrs: %q is not host:port", a))
		}
	}
	return problems
}

// limit is the accepted range of one numeric setting. Too small an
// interval turns a loop into a busy one, too large a count an unbounded
// allocation; both are refused at load, naming the setting and its bound.
// `keeper run -h` prints each range after the setting's help, and
// configs/keeper.yaml states it next to the setting (a test checks both).
type limit struct {
	path     string // the YAML path
	get      func(*Config) int64
	min, max int64 // max 0: no upper bound
	// zeroDefault: 0 is accepted and means the built-in default.
	zeroDefault bool
	duration    bool
}

// The bounds, with the reason for each.
var limits = []limit{
	// A graceful stop needs a few etcd round trips (leave, delete the
	// ownership keys, revoke) after the passes, and a pass stuck on an
	// unresponsive Redis returns only at the client's read timeout (3s)
	// after it is cancelled at a quarter of the budget: 10s leaves room for
	// both. Past 10 minutes it is no longer a bound an orchestrator would
	// wait for.
	{path: "shutdown_timeout", get: func(c *Config) int64 { return int64(c.ShutdownTimeout) },
		min: int64(10 * time.Second), max: int64(10 * time.Minute), duration: true},
	// etcd refuses leases shorter than 2s.
	{path: "etcd.session_ttl", get: func(c *Config) int64 { return int64(c.Etcd.SessionTTL) },
		min: int64(2 * time.Second), duration: true},
	// Each retry is a claim probe of every refused shard.
	{path: "etcd.fence_retry", get: func(c *Config) int64 { return int64(c.Etcd.FenceRetry) },
		min: int64(time.Second), duration: true},
	// Ownership units: see shard.MaxUnits.
	{path: "ring.partitions", get: func(c *Config) int64 { return int64(c.Ring.Units) },
		min: 1, max: shard.MaxUnits, zeroDefault: true},
	{path: "ring.replication_factor", get: func(c *Config) int64 { return int64(c.Ring.ReplicationFactor) },
		min: 1, zeroDefault: true},
	// Each worker runs one script at a time on a single-threaded Redis and
	// holds a pooled connection: beyond a few hundred, workers only queue.
	{path: "tasks.workers", get: func(c *Config) int64 { return int64(c.Tasks.Workers) }, min: 1, max: 256},
	{path: "tasks.batch", get: func(c *Config) int64 { return int64(c.Tasks.Batch) }, min: 1, max: queue.MaxBatch},
	// How long a fence claim waits for a replica's acknowledgement: long
	// enough for a replica across a zone, short enough that a dead replica
	// delays a takeover by less than the session TTL would.
	{path: "redis.replica_wait", get: func(c *Config) int64 { return int64(c.Redis.ReplicaWait) },
		min: int64(10 * time.Millisecond), max: int64(time.Minute), duration: true},
	// A changed shard costs about 10 Redis commands per measurement.
	{path: "tasks.measure_interval", get: func(c *Config) int64 { return int64(c.Tasks.MeasureInterval) },
		min: int64(100 * time.Millisecond), duration: true},
	// The sweep ticks once a second; a shorter period would probe every
	// owned shard on every tick.
	{path: "tasks.sweep_interval", get: func(c *Config) int64 { return int64(c.Tasks.SweepInterval) },
		min: int64(time.Second), duration: true},
	// A full read of the queue registry; changes are pushed anyway.
	{path: "tasks.catalog_interval", get: func(c *Config) int64 { return int64(c.Tasks.CatalogInterval) },
		min: int64(time.Second), duration: true},
	// One SCAN of the whole keyspace per primary: Deckard's own
	// housekeeper runs three a second per replica; keeper's fleet one per
	// interval. Past an hour a new queue waits too long for housekeeping.
	{path: "deckard.discovery_interval", get: func(c *Config) int64 { return int64(c.Deckard.DiscoveryInterval) },
		min: int64(time.Second), max: int64(time.Hour), duration: true},
	// One probe per owned queue per interval: below 10ms a fleet of idle
	// queues would cost Redis more than Deckard's own housekeeper.
	{path: "deckard.poll_min", get: func(c *Config) int64 { return int64(c.Deckard.PollMin) },
		min: int64(10 * time.Millisecond), max: int64(time.Minute), duration: true},
	{path: "deckard.poll_max", get: func(c *Config) int64 { return int64(c.Deckard.PollMax) },
		min: int64(10 * time.Millisecond), max: int64(time.Minute), duration: true},
	// Each export may also write this keeper's summary to etcd.
	{path: "metrics.export_interval", get: func(c *Config) int64 { return int64(c.Metrics.ExportInterval) },
		min: int64(100 * time.Millisecond), zeroDefault: true, duration: true},
}

func (l limit) format(v int64) string {
	if l.duration {
		return shortDuration(time.Duration(v))
	}
	return strconv.FormatInt(v, 10)
}

// text is the range as `keeper run -h` and configs/keeper.yaml state it.
func (l limit) text() string {
	var r string
	switch {
	case l.max == 0:
		r = "≥ " + l.format(l.min)
	default:
		r = l.format(l.min) + "–" + l.format(l.max)
	}
	if l.zeroDefault {
		r = "0 or " + r
	}
	return r
}

func (l limit) check(c *Config) string {
	v := l.get(c)
	switch {
	case v == 0 && l.zeroDefault:
		return ""
	case v < l.min:
		return fmt.Sprintf("%s %s is below its minimum %s (accepted: %s)", l.path, l.format(v), l.format(l.min), l.text())
	case l.max != 0 && v > l.max:
		return fmt.Sprintf("%s %s is above its maximum %s (accepted: %s)", l.path, l.format(v), l.format(l.max), l.text())
	}
	return ""
}

func limitOf(path string) (limit, bool) {
	for _, l := range limits {
		if l.path == path {
			return l, true
		}
	}
	return limit{}, false
}

// shortDuration is d without the zero units time.Duration.String adds
// ("10m", not "10m0s").
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
