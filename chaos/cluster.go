// Package chaos is keeper's chaos harness: it runs real keeper processes
// against a three-member etcd cluster of real processes and a real
// redis-server (append-only file, and a replica for failovers), with every
// keeper's traffic to etcd and to Redis through its own fault proxy; it
// injects faults (signals to keepers, etcd members and Redis; partitions,
// latency and timeouts on the proxies; a replica promotion), drives a
// producer/consumer workload and checks the invariants of the design brief
// on what happened.
package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	"github.com/keeperhq/keeper/internal/faultproxy"
	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/proc"
	"github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Config describes a cluster. Zero values take the defaults noted.
type Config struct {
	// KeeperBin is the keeper binary; default $KEEPER_BIN, else one built
	// from this module with `go build` into a temporary directory.
	KeeperBin string
	// EtcdBin is the etcd server binary; default etcdserver.Binary()
	// ($ETCD_BIN, else built once into the user's cache).
	EtcdBin string
	// EtcdMembers is the etcd cluster size; default 3.
	EtcdMembers int
	// RedisReplica also starts a replica of the Redis primary, which a
	// failover promotes.
	RedisReplica bool
	// SessionTTL of every keeper; default 3s.
	SessionTTL time.Duration
	// EtcdPrefix; default "/keeper/".
	EtcdPrefix string
	// Env is added to every keeper's environment (OTEL_* for metrics).
	Env []string
	// Args are added to every keeper's command line.
	Args []string
	// NoHistory turns off the per-shard history the checker replays (on by
	// default).
	NoHistory bool
	// LogDir keeps each keeper's log (and, at Stop, each etcd member's);
	// default a temp dir removed by Stop.
	LogDir string
	// DataDir holds etcd's and Redis's data; default a new directory on
	// the tmpfs /dev/shm when there is one (else the temp dir), removed by
	// Stop. A tmpfs survives the process crashes the harness injects, as a
	// disk would, and keeps fsync (etcd's WAL, Redis's appendfsync always)
	// from stalling a busy machine's disk: what is tested is keeper under
	// process and network faults, not the machine losing power.
	DataDir string
}

// Cluster is an etcd cluster, a Redis primary (and replica), the fault
// proxies and the keeper processes.
type Cluster struct {
	cfg     Config
	Etcd    *etcdserver.ProcessCluster
	Redis   *RedisPair
	Proxies *faultproxy.Server
	// RDB reaches the current Redis primary through a proxy that follows
	// failovers and never carries a fault: the harness's own view.
	RDB *redis.Client
	// EC reaches every etcd member directly.
	EC *clientv3.Client

	clients *faultproxy.Proxy // RDB's and the workload's way to Redis

	mu      sync.Mutex
	keepers map[string]*Keeper
	logDir  string
	ownLogs bool
	dataDir string
	ownData bool
}

// Start brings up etcd, Redis and the proxies on free loopback ports.
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
	c := &Cluster{cfg: cfg, keepers: map[string]*Keeper{}, logDir: cfg.LogDir, Proxies: faultproxy.New()}
	if c.logDir == "" {
		d, err := os.MkdirTemp("", "keeper-chaos-")
		if err != nil {
			return nil, err
		}
		c.logDir, c.ownLogs = d, true
	} else if err := os.MkdirAll(c.logDir, 0o755); err != nil {
		return nil, err
	}
	c.dataDir = cfg.DataDir
	if c.dataDir == "" {
		base := ""
		if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
			base = "/dev/shm"
		}
		d, err := os.MkdirTemp(base, "keeper-chaos-data-")
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.dataDir, c.ownData = d, true
	}
	var err error
	if c.Etcd, err = etcdserver.StartProcesses(ctx, etcdserver.ProcessConfig{Members: cfg.EtcdMembers,
		Binary: cfg.EtcdBin, Dir: filepath.Join(c.dataDir, "etcd")}); err != nil {
		c.Stop()
		return nil, fmt.Errorf("etcd: %w", err)
	}
	if c.Redis, err = StartRedis(ctx, cfg.RedisReplica, c.dataDir); err != nil {
		c.Stop()
		return nil, fmt.Errorf("redis: %w", err)
	}
	if c.clients, err = c.Proxies.Add("clients-redis", c.Redis.PrimaryAddr()); err != nil {
		c.Stop()
		return nil, err
	}
	c.RDB = redis.NewClient(&redis.Options{Addr: c.clients.Addr(), PoolSize: 32})
	c.EC, err = clientv3.New(clientv3.Config{Endpoints: c.Etcd.Endpoints(), DialTimeout: 5 * time.Second,
		Logger: zap.NewNop()})
	if err != nil {
		c.Stop()
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return c, nil
}

// ClientAddr is where clients (the workload, the checker) reach the current
// Redis primary: a proxy that follows failovers.
func (c *Cluster) ClientAddr() string { return c.clients.Addr() }

// LogDir holds the keepers' logs and the etcd members' data and logs.
func (c *Cluster) LogDir() string { return c.logDir }

// Stop kills every keeper by its pid, then stops the proxies, Redis and etcd.
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
	c.Proxies.Close()
	if c.Redis != nil {
		c.Redis.Stop()
	}
	if c.Etcd != nil {
		_ = c.Etcd.Kill()
		if !c.ownLogs {
			for _, m := range c.Etcd.Members() {
				_ = os.WriteFile(filepath.Join(c.logDir, m.Name+".log"), []byte(m.LogTail(1<<30)), 0o644)
			}
		}
		_ = c.Etcd.Stop()
	}
	if c.ownData {
		_ = os.RemoveAll(c.dataDir)
	}
	if c.ownLogs {
		_ = os.RemoveAll(c.logDir)
	}
}

// SwitchRedis points every keeper's Redis proxy and the clients' proxy at
// addr, as a Sentinel or DNS switch after a failover would; connections to
// the old primary are closed.
func (c *Cluster) SwitchRedis(addr string) error {
	ps := []*faultproxy.Proxy{c.clients}
	for _, k := range c.Keepers() {
		ps = append(ps, k.RedisProxy)
	}
	for _, p := range ps {
		if err := p.SetUpstream(addr); err != nil {
			return err
		}
	}
	return nil
}

// Keeper is one keeper process and its proxies.
type Keeper struct {
	ID         string
	HealthAddr string
	// Args are the command-line settings it was started with beyond the
	// cluster's own.
	Args []string
	// EtcdProxies carry its traffic to each etcd member, RedisProxy to the
	// Redis primary.
	EtcdProxies []*faultproxy.Proxy
	RedisProxy  *faultproxy.Proxy

	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	exitErr error
	once    sync.Once
	paused  atomic.Bool
	stopped atomic.Bool // the harness killed or stopped it
}

// AddKeeper starts a keeper process named id, with its own proxies to every
// etcd member and to Redis, and waits until it answers on its health
// endpoint. The health port is free when picked, but the kernel may hand it
// to an outgoing connection before the keeper binds it (both come from the
// ephemeral range): a keeper that exits for that reason is started again on
// another port.
func (c *Cluster) AddKeeper(ctx context.Context, id string, extraArgs ...string) (*Keeper, error) {
	for attempt := 1; ; attempt++ {
		k, err := c.startKeeper(ctx, id, extraArgs)
		if err == nil || attempt == 3 || !errors.Is(err, errHealthPortTaken) {
			return k, err
		}
	}
}

// errHealthPortTaken: a keeper exited at start because its health port was
// taken in the meantime.
var errHealthPortTaken = errors.New("health port taken before the keeper bound it")

func (c *Cluster) startKeeper(ctx context.Context, id string, extraArgs []string) (*Keeper, error) {
	port, err := loopback.Port()
	if err != nil {
		return nil, err
	}
	k := &Keeper{ID: id, HealthAddr: loopback.Addr(port), done: make(chan struct{}),
		logPath: filepath.Join(c.logDir, id+".log"), Args: extraArgs}
	var endpoints []string
	for i, ep := range c.Etcd.Endpoints() {
		p, err := c.Proxies.Add(fmt.Sprintf("%s-etcd%d", id, i+1), strings.TrimPrefix(ep, "http://"))
		if err != nil {
			k.closeProxies()
			return nil, err
		}
		k.EtcdProxies = append(k.EtcdProxies, p)
		endpoints = append(endpoints, "http://"+p.Addr())
	}
	if k.RedisProxy, err = c.Proxies.Add(id+"-redis", c.Redis.PrimaryAddr()); err != nil {
		k.closeProxies()
		return nil, err
	}
	args := []string{"run",
		"--member_id", id,
		"--health_addr", k.HealthAddr,
		"--redis.addr", k.RedisProxy.Addr(),
		"--etcd.endpoints", strings.Join(endpoints, ","),
		"--etcd.prefix", c.cfg.EtcdPrefix,
		"--etcd.session_ttl", c.cfg.SessionTTL.String(),
		"--tasks.record_history=" + strconv.FormatBool(!c.cfg.NoHistory),
	}
	args = append(append(args, c.cfg.Args...), extraArgs...)
	cmd := exec.Command(c.cfg.KeeperBin, args...)
	cmd.Env = append(os.Environ(), c.cfg.Env...)
	logf, err := os.OpenFile(k.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		k.closeProxies()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = proc.Attr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		k.closeProxies()
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
			c.Remove(k)
			tail := k.LogTail(20)
			if strings.Contains(tail, "health endpoint") && strings.Contains(tail, "address already in use") {
				return nil, fmt.Errorf("keeper %s: %w", id, errHealthPortTaken)
			}
			return nil, fmt.Errorf("keeper %s exited at start: %v; log:\n%s", id, k.exitErr, tail)
		case <-ctx.Done():
			_ = k.Kill()
			c.Remove(k)
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = k.Kill()
			c.Remove(k)
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

// Remove forgets a keeper that was stopped or killed, and closes its
// proxies.
func (c *Cluster) Remove(k *Keeper) {
	c.mu.Lock()
	delete(c.keepers, k.ID)
	c.mu.Unlock()
	k.closeProxies()
}

func (k *Keeper) closeProxies() {
	for _, p := range k.EtcdProxies {
		p.Close()
	}
	if k.RedisProxy != nil {
		k.RedisProxy.Close()
	}
}

// Pid is the keeper's process id.
func (k *Keeper) Pid() int { return k.cmd.Process.Pid }

// Kill sends SIGKILL (a crash) and waits for the process to be gone.
func (k *Keeper) Kill() error {
	var err error
	k.once.Do(func() {
		k.stopped.Store(true)
		err = proc.Stop(k.cmd.Process, k.done, syscall.SIGKILL, 0, "keeper "+k.ID)
	})
	return err
}

// Term sends SIGTERM (a graceful stop) and waits up to timeout.
func (k *Keeper) Term(timeout time.Duration) error {
	k.stopped.Store(true)
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
		return fmt.Errorf("keeper %s did not exit within %s of SIGTERM; log:\n%s", k.ID, timeout, k.LogTail(10))
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

// Crashed reports whether the process ended without the harness stopping
// it, and how.
func (k *Keeper) Crashed() (bool, error) {
	if !k.Exited() || k.stopped.Load() {
		return false, nil
	}
	return true, k.exitErr
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
	return strings.Join(proc.LogTail(k.logPath, n), "\n")
}

var keeperBinary = proc.Binary{Env: "KEEPER_BIN", Build: buildKeeper}

// KeeperBinary is $KEEPER_BIN, or a keeper built once per process from the
// module this package belongs to.
func KeeperBinary() (string, error) { return keeperBinary.Path() }

func buildKeeper() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "keeper-bin-")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "keeper")
	cmd := exec.Command("go", "build", "-o", path, "./cmd/keeper")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build keeper: %v: %s", err, out)
	}
	return path, nil
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
