// Package etcdserver runs etcd on free loopback ports: a single member inside
// the current process (Start), which tests and benchmarks use so they need no
// etcd binary and `keeper run` uses when no etcd endpoints are configured (a
// given data directory is real and survives restarts); or a cluster of
// separate etcd processes (StartProcesses), which the chaos harness kills,
// pauses and restarts one member at a time.
package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keeperhq/keeper/internal/loopback"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Config describes the server to start. Zero values take the defaults below.
type Config struct {
	// Name is the etcd member name; default "keeper".
	Name string
	// Dir is the data directory. When set it is created if missing and kept
	// by Stop, so `keeper run` keeps its state across restarts; default a new
	// temporary directory that Stop removes.
	Dir string
	// ClientPort and PeerPort bind on 127.0.0.1; default free ports chosen
	// by the kernel.
	ClientPort, PeerPort int
	// LogLevel is etcd's zap level ("debug", "info", "warn", "error");
	// default "error", because etcd logs every request at info level.
	LogLevel string
	// StartTimeout bounds how long Start (and Restart) wait for the server
	// to be ready to serve; default 30s, generous for a loaded 2-core box.
	StartTimeout time.Duration
	// ClientTLS, when set, serves clients over https with these files
	// (ClientCertAuth on: clients must present a certificate signed by
	// TrustedCAFile); default plain http. Peers stay on http: the member is
	// alone and its peer port is on loopback.
	ClientTLS *transport.TLSInfo
}

// Server is a running embedded etcd.
type Server struct {
	mu         sync.Mutex
	cfg        Config // defaults applied, ports fixed after the first start
	dir        string
	ownsDir    bool
	etcd       *embed.Etcd
	stopped    bool
	clientURL  url.URL
	peerURL    url.URL
	endpoints  []string
	removedDir bool
	// closing silences the errors etcd logs about its own listeners closing
	// while we shut it down on purpose.
	closing atomic.Bool
}

// startAttempts bounds retries when a kernel-chosen port is taken by someone
// else between our probe and etcd's bind.
const startAttempts = 5

// Start launches an embedded etcd and waits until it serves requests.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Name == "" {
		cfg.Name = "keeper"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "error"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	s := &Server{cfg: cfg, dir: cfg.Dir}
	if s.dir == "" {
		d, err := os.MkdirTemp("", "keeper-etcd-")
		if err != nil {
			return nil, fmt.Errorf("etcd data dir: %w", err)
		}
		s.dir = d
		s.ownsDir = true
	} else if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcd data dir %s: %w", s.dir, err)
	}
	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		clientPort, peerPort := cfg.ClientPort, cfg.PeerPort
		if clientPort == 0 || peerPort == 0 {
			ports, err := loopback.Ports(2)
			if err != nil {
				lastErr = err
				break
			}
			if clientPort == 0 {
				clientPort = ports[0]
			}
			if peerPort == 0 {
				peerPort = ports[1]
			}
		}
		lastErr = s.launch(ctx, clientPort, peerPort)
		if lastErr == nil {
			return s, nil
		}
		if (cfg.ClientPort != 0 && cfg.PeerPort != 0) || ctx.Err() != nil {
			break
		}
	}
	if s.ownsDir {
		_ = os.RemoveAll(s.dir)
	}
	return nil, lastErr
}

func (s *Server) launch(ctx context.Context, clientPort, peerPort int) error {
	scheme := "http"
	if s.cfg.ClientTLS != nil {
		scheme = "https"
	}
	cu := url.URL{Scheme: scheme, Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(clientPort))}
	pu := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(peerPort))}
	ec := embed.NewConfig()
	ec.Name = s.cfg.Name
	ec.Dir = s.dir
	ec.ListenClientUrls = []url.URL{cu}
	ec.AdvertiseClientUrls = []url.URL{cu}
	ec.ListenPeerUrls = []url.URL{pu}
	ec.AdvertisePeerUrls = []url.URL{pu}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	if s.cfg.ClientTLS != nil {
		ec.ClientTLSInfo = *s.cfg.ClientTLS
	}
	ec.LogLevel = s.cfg.LogLevel
	ec.LogOutputs = []string{embed.StdErrLogOutput}
	lg, err := s.logger()
	if err != nil {
		return err
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	// Revision mode keeps the last 10000 revisions whatever the write rate:
	// ownership churn during a rebalance writes in bursts, and periodic mode
	// would let a burst-heavy hour grow the history unbounded until it ends.
	ec.AutoCompactionMode = "revision"
	ec.AutoCompactionRetention = "10000"

	s.closing.Store(false)
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("start embedded etcd on %s: %w", cu.Host, err)
	}
	timer := time.NewTimer(s.cfg.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		s.close(e)
		return fmt.Errorf("embedded etcd on %s failed: %w", cu.Host, err)
	case <-timer.C:
		s.close(e)
		return fmt.Errorf("embedded etcd on %s not ready within %s", cu.Host, s.cfg.StartTimeout)
	case <-ctx.Done():
		s.close(e)
		return fmt.Errorf("embedded etcd on %s: %w", cu.Host, ctx.Err())
	}
	s.etcd = e
	s.clientURL, s.peerURL = cu, pu
	s.cfg.ClientPort, s.cfg.PeerPort = clientPort, peerPort
	s.endpoints = []string{cu.String()}
	return nil
}

// Endpoints are the client URLs to give clientv3.
func (s *Server) Endpoints() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.endpoints...)
}

// Ports are the client and peer ports, fixed for the server's life (Restart
// keeps them); a new server on the same Dir and Ports is the same etcd.
func (s *Server) Ports() (client, peer int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.ClientPort, s.cfg.PeerPort
}

// Dir is the data directory.
func (s *Server) Dir() string { return s.dir }

// Etcd exposes the embedded server, e.g. for its revision or its metrics.
// It changes on Restart and is nil while stopped.
func (s *Server) Etcd() *embed.Etcd {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd
}

// Stop shuts the server down and removes its data directory if Start created
// it. It is safe to call more than once.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = true
	s.closeLocked()
	if s.ownsDir && !s.removedDir {
		s.removedDir = true
		if err := os.RemoveAll(s.dir); err != nil {
			return fmt.Errorf("remove etcd data dir: %w", err)
		}
	}
	return nil
}

func (s *Server) closeLocked() {
	if s.etcd != nil {
		s.close(s.etcd)
		s.etcd = nil
	}
}

func (s *Server) close(e *embed.Etcd) {
	s.closing.Store(true)
	e.Close()
}

func (s *Server) logger() (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(s.cfg.LogLevel)
	if err != nil {
		return nil, fmt.Errorf("etcd log level %q: %w", s.cfg.LogLevel, err)
	}
	zc := zap.NewProductionConfig()
	zc.Level = zap.NewAtomicLevelAt(level)
	zc.Sampling = nil
	zc.OutputPaths = []string{"stderr"}
	zc.ErrorOutputPaths = []string{"stderr"}
	return zc.Build(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
		return quietCore{Core: c, closing: &s.closing}
	}))
}

// quietCore drops the "serving failed" errors etcd logs for every listener
// when it is closed deliberately; at level error they would otherwise be the
// only output of a clean Stop or Restart.
type quietCore struct {
	zapcore.Core
	closing *atomic.Bool
}

func (q quietCore) With(f []zapcore.Field) zapcore.Core {
	return quietCore{Core: q.Core.With(f), closing: q.closing}
}

func (q quietCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if q.closing.Load() && e.Message == "setting up serving from embedded etcd failed." {
		return ce
	}
	return q.Core.Check(e, ce)
}

// Restart stops the server and starts it again on the same ports with the
// same data, as an operator restarting etcd would; clients reconnect on their
// own.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("etcd server already stopped")
	}
	s.closeLocked()
	// The old listeners are closed, but the kernel may briefly refuse the
	// same port; retry instead of failing a test run on a busy machine.
	var err error
	for attempt := 0; attempt < startAttempts; attempt++ {
		if err = s.launch(ctx, s.cfg.ClientPort, s.cfg.PeerPort); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restart etcd: %w", err)
		case <-time.After(time.Duration(attempt+1) * 100 * time.Millisecond):
		}
	}
	return fmt.Errorf("restart etcd: %w", err)
}

// TB is the part of testing.TB that StartTB needs; it keeps the testing
// package out of the daemon's binary.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// StartTB starts a server for a test or benchmark and stops it in Cleanup.
func StartTB(t TB) *Server {
	t.Helper()
	return StartConfigTB(t, Config{})
}

// StartConfigTB is StartTB with a Config.
func StartConfigTB(t TB, cfg Config) *Server {
	t.Helper()
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}
