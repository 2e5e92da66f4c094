package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// redisClient connects to the Redis of c: at addrs, where one address makes
// a plain client and several a cluster client, or, with c.Sentinel, to the
// primary the sentinels name (go-redis's failover client, which follows a
// failover; addrs is then empty). `keeper run`, `keeper status` and `keeper
// queue` all build their client here, so an operator command reaches every
// Redis the daemon can (ACL user, password, TLS, client certificate,
// Sentinel). It does not dial: the caller decides whether an unreachable
// server is fatal.
func redisClient(c RedisConfig, addrs []string) (redis.UniversalClient, error) {
	opt, err := redisOptions(c, addrs)
	if err != nil {
		return nil, err
	}
	return redis.NewUniversalClient(opt), nil
}

func redisOptions(c RedisConfig, addrs []string) (*redis.UniversalOptions, error) {
	opt := &redis.UniversalOptions{Addrs: addrs, Username: c.Username, Password: c.Password}
	if s := c.Sentinel; s.Master != "" {
		// The same TLS settings reach the sentinels and the data nodes
		// (go-redis dials both with one tls.Config); the password and user
		// above are the data nodes', these the sentinels'.
		opt.MasterName, opt.Addrs = s.Master, s.Addrs
		opt.SentinelUsername, opt.SentinelPassword = s.Username, s.Password
	}
	if c.TLS {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if c.CAFile != "" {
			pem, err := os.ReadFile(c.CAFile)
			if err != nil {
				return nil, fmt.Errorf("redis CA: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("redis CA %s holds no PEM certificate", c.CAFile)
			}
		}
		if c.CertFile != "" {
			pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
			if err != nil {
				return nil, fmt.Errorf("redis client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{pair}
		}
		opt.TLSConfig = tc
	}
	return opt, nil
}

// operatorRedis is the Redis an operator command talks to: redis.sentinel
// or redis.addr, else the local redis-server that `keeper run` noted in its
// data dir. ok is false when none is known.
func operatorRedis(c RedisConfig) (_ RedisConfig, ok bool) {
	if c.Sentinel.Master != "" || c.Addr != "" {
		return c, true
	}
	c.Addr = readDiscovery(c.DataDir, "addr")
	return c, c.Addr != ""
}

// describeRedis names the Redis of c for logs and /status.
func describeRedis(c RedisConfig) string {
	if s := c.Sentinel; s.Master != "" {
		return fmt.Sprintf("sentinel master %s via %s", s.Master, strings.Join(s.Addrs, ","))
	}
	return c.Addr
}

// evictionGuard checks every new connection of `keeper run` for a
// maxmemory-policy that may evict keys (queue.CheckEviction). Refusing the
// connection makes the command on it fail, so passes fail and are retried
// until Redis is set right; with warnOnly it logs instead.
type evictionGuard struct {
	log      *slog.Logger
	warnOnly bool
	// sentinel: connections to sentinels pass through the guard too
	// (go-redis gives them the same OnConnect); they hold no data.
	sentinel bool

	mu       sync.Mutex
	lastLog  time.Time
	lastSeen string // the last refusal or warning logged
}

func (g *evictionGuard) onConnect(ctx context.Context, cn *redis.Conn) error {
	err := queue.CheckEviction(ctx, cn)
	if err == nil || !errors.Is(err, queue.ErrEvictionPolicy) {
		return err
	}
	if g.sentinel && isSentinel(ctx, cn) {
		return nil
	}
	g.mu.Lock()
	// One line per change, and while refusing one every 10s: reconnects
	// repeat, the log should not.
	say := err.Error() != g.lastSeen || (!g.warnOnly && time.Since(g.lastLog) >= 10*time.Second)
	if say {
		g.lastSeen, g.lastLog = err.Error(), time.Now()
	}
	g.mu.Unlock()
	if g.warnOnly {
		if say {
			g.log.Warn("redis may evict keys; running anyway because redis.allow_eviction is warn", "err", err)
		}
		return nil
	}
	if say {
		g.log.Error("refusing a redis connection: set maxmemory-policy noeviction (or redis.allow_eviction: warn)", "err", err)
	}
	// go-redis hands the caller the error OnConnect returns unwrapped once:
	// wrapped here, the caller gets err itself, policy named.
	return fmt.Errorf("redis connection refused: %w", err)
}

// isSentinel reports whether cn is a connection to a sentinel (whose INFO
// has no memory section), asked only when the eviction check failed.
func isSentinel(ctx context.Context, cn *redis.Conn) bool {
	info, err := cn.Info(ctx, "server").Result()
	return err == nil && strings.Contains(info, "redis_mode:sentinel")
}

// commandCounter counts the commands this process sends to Redis: a script
// call is one, a pipeline counts each of its commands. /status shows it, so
// that `keeper bench scaleout` can tell each keeper's share of the Redis
// work (Redis 7.0 keeps no per-client counts).
type commandCounter struct{ n atomic.Int64 }

var _ redis.Hook = (*commandCounter)(nil)

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}
