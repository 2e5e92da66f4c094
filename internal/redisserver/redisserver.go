// Package redisserver starts and stops a real redis-server process on a free
// loopback port. Tests, benchmarks and `keeper run` (when no Redis address is
// given) use it so that nothing depends on port 6379 being free or taken.
package redisserver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/proc"
)

// Config describes the server to start. Zero values take the defaults below.
type Config struct {
	// Binary is the redis-server executable; default "redis-server" from PATH.
	Binary string
	// Dir is the working directory for the server's files; default a new
	// temporary directory that Stop removes.
	Dir string
	// Port to bind on 127.0.0.1; default a free port chosen by the kernel.
	Port int
	// StartTimeout bounds how long Start waits for the server to answer;
	// default 10s.
	StartTimeout time.Duration
	// ExtraArgs are appended to the command line ("--maxmemory", "1gb", ...).
	ExtraArgs []string
	// ClockOffset runs the server with its wall clock shifted by this much
	// (whole seconds, via an LD_PRELOAD shim built with gcc), so tests can
	// show that no deadline depends on the client's clock.
	ClockOffset time.Duration
	// ManualClock stops the server's wall clock (Redis TIME, hence every
	// script's clock) at the time last given to Server.SetClock, initially
	// the real time at start, through the same shim as ClockOffset (which
	// it overrides), so a test can compare time-dependent scripts with a
	// model exactly. Monotonic clocks run on, so Redis's timers still work.
	ManualClock bool
	// TLS, when set, also serves TLS on a second free loopback port
	// (Server.TLSAddr). The plain port stays open on loopback, where Start
	// checks that the server is up.
	TLS *TLS
	// Cluster starts the server as a Redis Cluster node (its bus on another
	// free loopback port, Server.BusPort) with no slots yet; StartCluster
	// joins such nodes into a cluster.
	Cluster bool
}

// TLS are the files of a TLS-serving redis-server.
type TLS struct {
	CertFile, KeyFile string
	// CAFile verifies client certificates.
	CAFile string
	// AuthClients requires a client certificate (redis-server's own default
	// once TLS is on); false sets tls-auth-clients no.
	AuthClients bool
}

// Server is a running redis-server.
type Server struct {
	Addr    string // host:port, always on 127.0.0.1
	TLSAddr string // host:port of the TLS listener when Config.TLS is set
	BusPort int    // cluster bus port when Config.Cluster is set

	cmd     *exec.Cmd
	clock   *os.File // the shim's clock file, with ManualClock
	dir     string
	ownsDir bool
	done    chan struct{}
	waitErr error
	once    sync.Once
	// restart is how to launch the same server again (Kill, Restart).
	restart func(ctx context.Context) error
}

// Start launches redis-server and waits until it answers PING.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	bin := cfg.Binary
	if bin == "" {
		bin = "redis-server"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("redis-server not found (install Debian's redis-server package): %w", err)
	}
	timeout := cfg.StartTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	s, err := newServer(cfg.Dir, "keeper-redis-", "redis data dir")
	if err != nil {
		return nil, err
	}
	// A port picked by the kernel can be taken by someone else before redis
	// binds it; retry a few times rather than failing a whole test run.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		ports, err := loopback.Ports(3)
		if err != nil {
			return nil, err
		}
		port := cfg.Port
		if port == 0 {
			port = ports[0]
		}
		lastErr = s.launch(ctx, path, port, ports[1], ports[2], timeout, cfg)
		if lastErr == nil {
			tlsPort, busPort := ports[1], ports[2]
			s.restart = func(ctx context.Context) error {
				return s.launch(ctx, path, port, tlsPort, busPort, timeout, cfg)
			}
			return s, nil
		}
		if cfg.Port != 0 {
			break
		}
		s.done = make(chan struct{})
	}
	if s.clock != nil {
		_ = s.clock.Close()
	}
	if s.ownsDir {
		_ = os.RemoveAll(s.dir)
	}
	return nil, lastErr
}

// newServer is a Server in dir, made absolute (redis-server and
// redis-sentinel change into their dir before opening the log file, so a
// relative path would be resolved twice), or in a fresh temporary directory
// named after pattern, which the server then owns and removes.
func newServer(dir, pattern, what string) (*Server, error) {
	s := &Server{dir: dir, done: make(chan struct{})}
	var err error
	if s.dir != "" {
		if s.dir, err = filepath.Abs(s.dir); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return s, nil
	}
	if s.dir, err = os.MkdirTemp("", pattern); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	s.ownsDir = true
	return s, nil
}

// authClients is the tls-auth-clients setting of t.
func (t *TLS) authClients() string {
	if t.AuthClients {
		return "yes"
	}
	return "no"
}

func (s *Server) launch(ctx context.Context, path string, port, tlsPort, busPort int, timeout time.Duration, cfg Config) error {
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(port),
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--protected-mode", "yes",
		"--daemonize", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}
	if t := cfg.TLS; t != nil {
		args = append(args, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", t.CertFile,
			"--tls-key-file", t.KeyFile, "--tls-ca-cert-file", t.CAFile, "--tls-auth-clients", t.authClients())
		s.TLSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(tlsPort))
	}
	if cfg.Cluster {
		// The bus port is explicit: the default, port+10000, may be taken or
		// past 65535 for a kernel-chosen port.
		args = append(args, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(busPort))
		s.BusPort = busPort
	}
	args = append(args, cfg.ExtraArgs...)
	cmd := exec.Command(path, args...)
	if cfg.ClockOffset != 0 || cfg.ManualClock {
		lib, err := clockShiftLib()
		if err != nil {
			return err
		}
		cmd.Env = append(os.Environ(), "LD_PRELOAD="+lib,
			fmt.Sprintf("KEEPER_CLOCK_OFFSET_S=%d", int64(cfg.ClockOffset/time.Second)))
		if cfg.ManualClock {
			if err := s.openClock(); err != nil {
				return err
			}
			cmd.Env = append(cmd.Env, "KEEPER_CLOCK_FILE="+s.clock.Name())
		}
	}
	return s.run(ctx, cmd, port, timeout, "redis-server", "redis.log")
}

// run starts cmd (what, listening on port, logging to logName in its dir)
// and waits until it answers PING, or kills it if it does not in time.
func (s *Server) run(ctx context.Context, cmd *exec.Cmd, port int, timeout time.Duration, what, logName string) error {
	cmd.SysProcAttr = proc.Attr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", what, err)
	}
	s.cmd = cmd
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	deadline := time.Now().Add(timeout)
	for {
		if err := ping(s.Addr); err == nil {
			return nil
		}
		select {
		case <-s.done:
			tail := proc.LogTail(filepath.Join(s.dir, logName), 5)
			return fmt.Errorf("%s on %s exited: %v: %s", what, s.Addr, s.waitErr, strings.Join(tail, " | "))
		case <-ctx.Done():
			_ = s.kill()
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = s.kill()
			return fmt.Errorf("%s on %s did not answer within %s", what, s.Addr, timeout)
		}
	}
}

// openClock creates the clock file of a ManualClock server, holding the
// real time until SetClock changes it.
func (s *Server) openClock() error {
	if s.clock != nil {
		return s.SetClock(time.Now())
	}
	f, err := os.OpenFile(filepath.Join(s.dir, "clock"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("redis clock file: %w", err)
	}
	s.clock = f
	return s.SetClock(time.Now())
}

// SetClock moves the wall clock of a server started with ManualClock to t,
// where it stays until the next call. It takes effect for the next command
// the server runs. t must be after 1970.
func (s *Server) SetClock(t time.Time) error {
	if s.clock == nil {
		return errors.New("redis-server was not started with ManualClock")
	}
	us := t.UnixMicro()
	if us <= 0 {
		return fmt.Errorf("redis clock %s is not after 1970", t)
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(us))
	// Never truncate: the server has the file mapped.
	if _, err := s.clock.WriteAt(b[:], 0); err != nil {
		return fmt.Errorf("set redis clock: %w", err)
	}
	return nil
}

// Pid is the server's process id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Dir is the server's working directory.
func (s *Server) Dir() string { return s.dir }

// Stop terminates the server by its pid and removes its temporary directory.
// It is safe to call more than once.
func (s *Server) Stop() error {
	var err error
	s.once.Do(func() {
		err = s.kill()
		if s.clock != nil {
			_ = s.clock.Close()
		}
		if s.ownsDir {
			_ = os.RemoveAll(s.dir)
		}
	})
	return err
}

func (s *Server) kill() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	return proc.Stop(s.cmd.Process, s.done, syscall.SIGTERM, 5*time.Second, "redis-server")
}

// Kill sends SIGKILL, as a crash would: the server keeps only what its
// persistence settings had written (with --appendonly yes and --appendfsync
// always, every write it acknowledged). Its directory is kept for Restart.
func (s *Server) Kill() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	return proc.Stop(s.cmd.Process, s.done, syscall.SIGKILL, 0, "redis-server")
}

// Restart starts the server again on the same port and directory with the
// same settings, after Kill (or a crash), and waits until it answers PING
// (after loading its data).
func (s *Server) Restart(ctx context.Context) error {
	if err := s.Kill(); err != nil {
		return err
	}
	s.done = make(chan struct{})
	if err := s.restart(ctx); err != nil {
		return fmt.Errorf("restart redis-server: %w", err)
	}
	return nil
}

// ping speaks just enough RESP to know the server is accepting commands,
// so this package needs no Redis client.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	// NOAUTH is an answer too: the server is up and wants a password
	// (--requirepass among ExtraArgs).
	if r := string(buf[:n]); !strings.HasPrefix(r, "+PONG") && !strings.HasPrefix(r, "-NOAUTH") {
		return fmt.Errorf("unexpected reply %q", buf[:n])
	}
	return nil
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

// StartConfigTB is StartTB with a config.
func StartConfigTB(t TB, cfg Config) *Server {
	t.Helper()
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	return s
}
