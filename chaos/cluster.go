// Package chaos is keeper's chaos harness: it runs real keeper processes
// against a real etcd and redis-server, injects faults (SIGKILL, SIGSTOP and
// SIGCONT, etcd restarts, network faults through toxiproxy), drives a
// producer/consumer workload and checks the invariants of the design brief
// on what happened.
package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Config describes a cluster. Zero values take the defaults noted.
type Config struct {
	// KeeperBin is the keeper binary; default $KEEPER_BIN, else one built
	// from this module with `go build` into a temporary directory.
	KeeperBin string
	// SessionTTL of every keeper; default 3s.
	SessionTTL time.Duration
	// EtcdPrefix; default "/keeper/".
	EtcdPrefix string
	// Env is added to every keeper's environment (OTEL_* for metrics).
	Env []string
	// Args are added to every keeper's command line.
	Args []string
	// RecordHistory turns on the per-shard history the checker replays;
	// default on (set NoHistory to turn it off).
	NoHistory bool
	// LogDir keeps each keeper's log; default a temp dir removed by Stop.
	LogDir string
}

// Cluster is an etcd (in this process), a redis-server and keeper processes.
type Cluster struct {
	cfg   Config
	Etcd  *etcdserver.Server
	Redis *redisserver.Server
	RDB   *redis.Client
	EC    *clientv3.Client

	mu      sync.Mutex
	keepers map[string]*Keeper
	logDir  string
	ownLogs bool
}

// Start brings up etcd and redis-server on free loopback ports.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 3 * time.Second
	}
	if cfg.EtcdPrefix == "" {
		cfg.EtcdPrefix = "/keeper/"
	}
	if cfg.KeeperBin == "" {
		bin, err := KeeperBinary()
		if err != nil {
			return nil, err
		}
		cfg.KeeperBin = bin
	}
	c := &Cluster{cfg: cfg, keepers: map[string]*Keeper{}, logDir: cfg.LogDir}
	if c.logDir == "" {
		d, err := os.MkdirTemp("", "keeper-chaos-")
		if err != nil {
			return nil, err
		}
		c.logDir, c.ownLogs = d, true
	}
	var err error
	if c.Etcd, err = etcdserver.Start(ctx, etcdserver.Config{}); err != nil {
		c.Stop()
		return nil, fmt.Errorf("etcd: %w", err)
	}
	if c.Redis, err = redisserver.Start(ctx, redisserver.Config{}); err != nil {
		c.Stop()
		return nil, fmt.Errorf("redis: %w", err)
	}
	c.RDB = redis.NewClient(&redis.Options{Addr: c.Redis.Addr, PoolSize: 32})
	c.EC, err = clientv3.New(clientv3.Config{Endpoints: c.Etcd.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return c, nil
}

// Stop kills every keeper by its pid, then stops redis and etcd.
func (c *Cluster) Stop() {
	c.mu.Lock()
	ks := make([]*Keeper, 0, len(c.keepers))
	for _, k := range c.keepers {
		ks = append(ks, k)
	}
	c.mu.Unlock()
	for _, k := range ks {
		_ = k.Kill()
	}
	if c.EC != nil {
		_ = c.EC.Close()
	}
	if c.RDB != nil {
		_ = c.RDB.Close()
	}
	if c.Redis != nil {
		_ = c.Redis.Stop()
	}
	if c.Etcd != nil {
		_ = c.Etcd.Stop()
	}
	if c.ownLogs {
		_ = os.RemoveAll(c.logDir)
	}
}

// Keeper is one keeper process.
type Keeper struct {
	ID         string
	HealthAddr string
	cmd        *exec.Cmd
	logPath    string
	done       chan struct{}
	exitErr    error
	once       sync.Once
	paused     atomic.Bool
}

// AddKeeper starts a keeper process named id and waits until it answers
// on its health endpoint.
func (c *Cluster) AddKeeper(ctx context.Context, id string, extraArgs ...string) (*Keeper, error) {
	port, err := loopback.Port()
	if err != nil {
		return nil, err
	}
	k := &Keeper{ID: id, HealthAddr: "127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{}),
		logPath: filepath.Join(c.logDir, id+".log")}
	args := []string{"run",
		"--member_id", id,
		"--health_addr", k.HealthAddr,
		"--redis.addr", c.Redis.Addr,
		"--etcd.endpoints", strings.Join(c.Etcd.Endpoints(), ","),
		"--etcd.prefix", c.cfg.EtcdPrefix,
		"--etcd.session_ttl", c.cfg.SessionTTL.String(),
		"--tasks.record_history=" + strconv.FormatBool(!c.cfg.NoHistory),
	}
	args = append(append(args, c.cfg.Args...), extraArgs...)
	cmd := exec.Command(c.cfg.KeeperBin, args...)
	cmd.Env = append(os.Environ(), c.cfg.Env...)
	logf, err := os.OpenFile(k.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group, and killed with us if the harness dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start keeper %s: %w", id, err)
	}
	k.cmd = cmd
	go func() {
		k.exitErr = cmd.Wait()
		logf.Close()
		close(k.done)
	}()
	c.mu.Lock()
	c.keepers[id] = k
	c.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := k.Status(ctx); err == nil {
			return k, nil
		}
		select {
		case <-k.done:
			return nil, fmt.Errorf("keeper %s exited at start: %v; log:\n%s", id, k.exitErr, k.LogTail(20))
		case <-ctx.Done():
			_ = k.Kill()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = k.Kill()
			return nil, fmt.Errorf("keeper %s not healthy within 60s; log:\n%s", id, k.LogTail(20))
		}
	}
}

// Keepers lists the keepers started and not removed, by id.
func (c *Cluster) Keepers() []*Keeper {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*Keeper, 0, len(c.keepers))
	for _, k := range c.keepers {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Remove forgets a keeper that was stopped or killed.
func (c *Cluster) Remove(k *Keeper) {
	c.mu.Lock()
	delete(c.keepers, k.ID)
	c.mu.Unlock()
}

// Pid is the keeper's process id.
func (k *Keeper) Pid() int { return k.cmd.Process.Pid }

// Kill sends SIGKILL (a crash) and waits for the process to be gone.
func (k *Keeper) Kill() error {
	var err error
	k.once.Do(func() {
		_ = k.cmd.Process.Signal(syscall.SIGCONT) // a stopped process must run to die cleanly
		_ = k.cmd.Process.Kill()
		select {
		case <-k.done:
		case <-time.After(10 * time.Second):
			err = fmt.Errorf("keeper %s (pid %d) did not die", k.ID, k.Pid())
		}
	})
	return err
}

// Term sends SIGTERM (a graceful stop) and waits up to timeout.
func (k *Keeper) Term(timeout time.Duration) error {
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-k.done:
		k.once.Do(func() {})
		if k.exitErr != nil {
			return fmt.Errorf("keeper %s exited with %v", k.ID, k.exitErr)
		}
		return nil
	case <-time.After(timeout):
		_ = k.Kill()
		return fmt.Errorf("keeper %s did not exit within %s of SIGTERM", k.ID, timeout)
	}
}

// Pause sends SIGSTOP: the process freezes, its session lease runs out.
// A paused keeper cannot answer, so the ownership checks leave it out.
func (k *Keeper) Pause() error {
	k.paused.Store(true)
	return k.cmd.Process.Signal(syscall.SIGSTOP)
}

// Resume sends SIGCONT.
func (k *Keeper) Resume() error {
	err := k.cmd.Process.Signal(syscall.SIGCONT)
	k.paused.Store(false)
	return err
}

// Paused reports whether the keeper is stopped by Pause.
func (k *Keeper) Paused() bool { return k.paused.Load() }

// Exited reports whether the process has ended.
func (k *Keeper) Exited() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

// Status is what a keeper says about itself on /status.
type Status struct {
	Member string           `json:"member"`
	Owned  map[string]int64 `json:"owned"`
	Leader bool             `json:"leader"`
}

// Status asks the keeper's health endpoint.
func (k *Keeper) Status(ctx context.Context) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+k.HealthAddr+"/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Status{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Status{}, fmt.Errorf("status %s", resp.Status)
	}
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return Status{}, err
	}
	return st, nil
}

// LogTail is the last n lines of the keeper's log.
func (k *Keeper) LogTail(n int) string {
	f, err := os.Open(k.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// LogContains reports whether the keeper's log has a line with s.
func (k *Keeper) LogContains(s string) bool {
	f, err := os.Open(k.logPath)
	if err != nil {
		return false
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	return strings.Contains(string(b), s)
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// KeeperBinary is $KEEPER_BIN, or a keeper built once per process from the
// module this package belongs to.
func KeeperBinary() (string, error) {
	if p := os.Getenv("KEEPER_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("KEEPER_BIN: %w", err)
		}
		return p, nil
	}
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "keeper-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "keeper")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/keeper")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build keeper: %v: %s", err, out)
		}
	})
	return buildPath, buildErr
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/keeperhq/keeper") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("keeper module root not found; set KEEPER_BIN")
		}
		dir = parent
	}
}
