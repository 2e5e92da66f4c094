package redisserver

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/redis/go-redis/v9"
)

// SentinelConfig describes a redis-sentinel process that monitors one
// primary. Zero values take the defaults below.
type SentinelConfig struct {
	// Binary is the sentinel executable; default "redis-sentinel" from PATH
	// (Debian's redis-sentinel package).
	Binary string
	// Dir holds sentinel.conf (which Sentinel rewrites as it learns
	// replicas, other sentinels and failovers) and the log; default a new
	// temporary directory that Stop removes.
	Dir string
	// Master is the name the primary is monitored under; default "keeper".
	Master string
	// MasterAddr is the primary's address, ip:port (required): its TLS
	// address when TLS is set.
	MasterAddr string
	// Quorum is how many sentinels must agree that the primary is down;
	// default 1.
	Quorum int
	// DownAfter is how long the primary may not answer before this sentinel
	// thinks it down; default 1s.
	DownAfter time.Duration
	// FailoverTimeout is Sentinel's failover-timeout; default 10s.
	FailoverTimeout time.Duration
	// AuthPass is the password of the monitored servers (their
	// requirepass).
	AuthPass string
	// RequirePass is the sentinel's own password, which it also presents
	// to the other sentinels (all sentinels of a test share it).
	RequirePass string
	// TLS, when set, also serves TLS on a second free loopback port
	// (Server.TLSAddr) and talks TLS to the monitored servers and the
	// other sentinels (tls-replication). The plain port stays open on
	// loopback, where Start checks that the sentinel is up.
	TLS *TLS
	// StartTimeout bounds how long StartSentinel waits for the sentinel to
	// answer; default 10s.
	StartTimeout time.Duration
}

// StartSentinel launches a sentinel that monitors cfg.MasterAddr and waits
// until it answers PING. The returned Server's Addr (and TLSAddr) are the
// sentinel's; Stop, Kill and Restart work as for a redis-server.
func StartSentinel(ctx context.Context, cfg SentinelConfig) (*Server, error) {
	bin := cfg.Binary
	if bin == "" {
		bin = "redis-sentinel"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("redis-sentinel not found (install Debian's redis-sentinel package): %w", err)
	}
	host, port, err := net.SplitHostPort(cfg.MasterAddr)
	if err != nil {
		return nil, fmt.Errorf("sentinel: master address %q: %w", cfg.MasterAddr, err)
	}
	if cfg.Master == "" {
		cfg.Master = "keeper"
	}
	if cfg.Quorum <= 0 {
		cfg.Quorum = 1
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = time.Second
	}
	if cfg.FailoverTimeout <= 0 {
		cfg.FailoverTimeout = 10 * time.Second
	}
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	s, err := newServer(cfg.Dir, "keeper-sentinel-", "sentinel dir")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := loopback.Ports(2)
		if err != nil {
			return nil, err
		}
		conf := filepath.Join(s.dir, "sentinel.conf")
		if err := os.WriteFile(conf, []byte(sentinelConf(cfg, s.dir, host, port, ports[0], ports[1])), 0o600); err != nil {
			return nil, fmt.Errorf("sentinel.conf: %w", err)
		}
		launch := func(ctx context.Context) error {
			// The conf as Sentinel last rewrote it: what it learnt survives.
			return s.run(ctx, exec.Command(path, conf), ports[0], timeout, "redis-sentinel", "sentinel.log")
		}
		if lastErr = launch(ctx); lastErr == nil {
			s.restart = launch
			if cfg.TLS != nil {
				s.TLSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
			}
			return s, nil
		}
		s.done = make(chan struct{})
	}
	if s.ownsDir {
		_ = os.RemoveAll(s.dir)
	}
	return nil, lastErr
}

// sentinelConf is the sentinel's configuration file.
func sentinelConf(cfg SentinelConfig, dir, masterHost, masterPort string, port, tlsPort int) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	line("bind 127.0.0.1")
	line("port %d", port)
	line("daemonize no")
	line("dir %q", dir)
	line("logfile %q", filepath.Join(dir, "sentinel.log"))
	line("sentinel monitor %s %s %s %d", cfg.Master, masterHost, masterPort, cfg.Quorum)
	line("sentinel down-after-milliseconds %s %d", cfg.Master, cfg.DownAfter.Milliseconds())
	line("sentinel failover-timeout %s %d", cfg.Master, cfg.FailoverTimeout.Milliseconds())
	line("sentinel parallel-syncs %s 1", cfg.Master)
	if cfg.AuthPass != "" {
		line("sentinel auth-pass %s %s", cfg.Master, cfg.AuthPass)
	}
	if cfg.RequirePass != "" {
		line("requirepass %s", cfg.RequirePass)
		line("sentinel sentinel-pass %s", cfg.RequirePass)
	}
	if t := cfg.TLS; t != nil {
		line("tls-port %d", tlsPort)
		line("tls-cert-file %q", t.CertFile)
		line("tls-key-file %q", t.KeyFile)
		line("tls-ca-cert-file %q", t.CAFile)
		line("tls-auth-clients %s", t.authClients())
		line("tls-replication yes")
	}
	return b.String()
}

// StartSentinels starts n sentinels of cfg (each in its own directory) and
// waits until each has found the primary's replicas (at least replicas of
// them) and all the other sentinels, so that a failover can be asked of any
// of them. On error the ones started are stopped.
func StartSentinels(ctx context.Context, n, replicas int, cfg SentinelConfig) (_ []*Server, err error) {
	var out []*Server
	defer func() {
		if err != nil {
			for _, s := range out {
				_ = s.Stop()
			}
		}
	}()
	cfg.Dir = ""
	for i := 0; i < n; i++ {
		s, err := StartSentinel(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("sentinel %d: %w", i, err)
		}
		out = append(out, s)
	}
	master := cfg.Master
	if master == "" {
		master = "keeper"
	}
	for _, s := range out {
		sc := redis.NewSentinelClient(&redis.Options{Addr: s.Addr, Password: cfg.RequirePass})
		_, err := poll.Until(ctx, 50*time.Millisecond, func() (bool, string) {
			m, err := sc.Master(ctx, master).Result()
			if err != nil {
				return false, err.Error()
			}
			slaves, _ := strconv.Atoi(m["num-slaves"])
			others, _ := strconv.Atoi(m["num-other-sentinels"])
			return slaves >= replicas && others == n-1,
				fmt.Sprintf("%d replicas, %d other sentinels, flags %s", slaves, others, m["flags"])
		})
		_ = sc.Close()
		if err != nil {
			return nil, fmt.Errorf("sentinel %s did not learn the replicas and the other sentinels: %w", s.Addr, err)
		}
	}
	return out, nil
}

// StartSentinelsTB is StartSentinels for a test, the sentinels stopped in
// Cleanup.
func StartSentinelsTB(t TB, n, replicas int, cfg SentinelConfig) []*Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ss, err := StartSentinels(ctx, n, replicas, cfg)
	if err != nil {
		t.Fatalf("start sentinels: %v", err)
	}
	for _, s := range ss {
		t.Cleanup(func() { _ = s.Stop() })
	}
	return ss
}

// StartSentinelTB starts a sentinel for a test and stops it in Cleanup.
func StartSentinelTB(t TB, cfg SentinelConfig) *Server {
	t.Helper()
	s, err := StartSentinel(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start redis-sentinel: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}
