package etcdserver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
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
	"go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ProcessConfig describes a cluster of etcd server processes (the chaos
// harness kills, pauses and restarts them one by one). Zero values take the
// defaults noted.
type ProcessConfig struct {
	// Members is the cluster size; default 3.
	Members int
	// Binary is the etcd server executable; default Binary().
	Binary string
	// Dir holds each member's data directory and log; default a new
	// temporary directory that Stop removes.
	Dir string
	// LogLevel is etcd's --log-level; default "warn".
	LogLevel string
	// StartTimeout bounds how long Start waits for the cluster to elect a
	// leader; default 60s, generous for a loaded 2-core machine.
	StartTimeout time.Duration
}

// ProcessCluster is a running cluster of etcd processes on loopback.
type ProcessCluster struct {
	cfg     ProcessConfig
	dir     string
	ownsDir bool
	members []*Member
}

// Member is one etcd process of a ProcessCluster. Its ports and data stay
// the same across Kill/Stop and Start.
type Member struct {
	Name      string
	ClientURL string
	PeerURL   string
	bin       string
	dir       string
	args      []string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	paused bool
}

// StartProcesses launches the members with kernel-chosen loopback ports and
// waits until the cluster has a leader and every member is healthy.
func StartProcesses(ctx context.Context, cfg ProcessConfig) (*ProcessCluster, error) {
	if cfg.Members <= 0 {
		cfg.Members = 3
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "warn"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	if cfg.Binary == "" {
		bin, err := Binary()
		if err != nil {
			return nil, err
		}
		cfg.Binary = bin
	}
	c := &ProcessCluster{cfg: cfg, dir: cfg.Dir}
	if c.dir == "" {
		d, err := os.MkdirTemp("", "keeper-etcd-cluster-")
		if err != nil {
			return nil, fmt.Errorf("etcd cluster dir: %w", err)
		}
		c.dir, c.ownsDir = d, true
	}
	// A kernel-chosen port can be taken by another process before etcd
	// binds it; a whole new set of ports is tried then.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if err = c.launch(ctx, attempt); err == nil {
			return c, nil
		}
		c.killAll()
		if ctx.Err() != nil {
			break
		}
	}
	if c.ownsDir {
		_ = os.RemoveAll(c.dir)
	}
	return nil, err
}

func (c *ProcessCluster) launch(ctx context.Context, attempt int) error {
	n := c.cfg.Members
	ports, err := loopback.Ports(2 * n)
	if err != nil {
		return err
	}
	tok := make([]byte, 6)
	_, _ = rand.Read(tok)
	c.members = make([]*Member, n)
	var initial []string
	for i := range c.members {
		m := &Member{Name: fmt.Sprintf("etcd%d", i+1), bin: c.cfg.Binary,
			ClientURL: "http://" + loopback.Addr(ports[2*i]), PeerURL: "http://" + loopback.Addr(ports[2*i+1])}
		m.dir = filepath.Join(c.dir, fmt.Sprintf("%s-%d", m.Name, attempt))
		c.members[i] = m
		initial = append(initial, m.Name+"="+m.PeerURL)
	}
	for _, m := range c.members {
		m.args = []string{
			"--name", m.Name,
			"--data-dir", filepath.Join(m.dir, "data"),
			"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-state", "new",
			"--initial-cluster-token", "keeper-" + hex.EncodeToString(tok),
			"--log-level", c.cfg.LogLevel, "--log-outputs", "stderr",
			// As the embedded server: bounded history whatever the write rate.
			"--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
		}
		if err := os.MkdirAll(m.dir, 0o700); err != nil {
			return fmt.Errorf("etcd member dir: %w", err)
		}
		if err := m.spawn(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	defer cancel()
	return c.WaitHealthy(ctx)
}

// Members lists the members in a fixed order.
func (c *ProcessCluster) Members() []*Member { return append([]*Member(nil), c.members...) }

// Endpoints are the client URLs of every member.
func (c *ProcessCluster) Endpoints() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.ClientURL
	}
	return out
}

// Dir holds the members' data and logs.
func (c *ProcessCluster) Dir() string { return c.dir }

// WaitHealthy waits until every running member answers /health with a
// leader elected (etcd's own health check: a quorum and no alarm).
func (c *ProcessCluster) WaitHealthy(ctx context.Context) error {
	for {
		var bad []string
		for _, m := range c.members {
			if !m.Running() {
				continue
			}
			if err := m.health(ctx); err != nil {
				bad = append(bad, fmt.Sprintf("%s: %v", m.Name, err))
			}
		}
		if len(bad) == 0 {
			return nil
		}
		for _, m := range c.members {
			if m.Exited() && m.Running() {
				return fmt.Errorf("etcd %s exited; log:\n%s", m.Name, m.LogTail(15))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd cluster not healthy: %s: %w", strings.Join(bad, "; "), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Leader asks the running members which one leads; an error when none
// knows (no quorum).
func (c *ProcessCluster) Leader(ctx context.Context) (*Member, error) {
	ids := map[uint64]*Member{}
	var leader uint64
	for _, m := range c.members {
		if !m.Running() || m.Paused() {
			continue
		}
		id, lead, err := m.Status(ctx)
		if err != nil {
			continue
		}
		ids[id] = m
		if lead != 0 {
			leader = lead
		}
	}
	if m, ok := ids[leader]; ok && leader != 0 {
		return m, nil
	}
	return nil, errors.New("no etcd member reports a reachable leader")
}

// Restart stops every member with SIGTERM and starts them again on the same
// ports and data, as an operator restarting the whole cluster would.
func (c *ProcessCluster) Restart(ctx context.Context) error {
	for _, m := range c.members {
		if err := m.Stop(); err != nil {
			return err
		}
	}
	for _, m := range c.members {
		if err := m.Start(); err != nil {
			return err
		}
	}
	return c.WaitHealthy(ctx)
}

// Kill kills every member by its pid and keeps their data and logs.
func (c *ProcessCluster) Kill() error {
	c.killAll()
	return nil
}

// Stop kills every member by its pid and removes the directory if Start
// created it.
func (c *ProcessCluster) Stop() error {
	c.killAll()
	if c.ownsDir {
		if err := os.RemoveAll(c.dir); err != nil {
			return fmt.Errorf("remove etcd cluster dir: %w", err)
		}
	}
	return nil
}

func (c *ProcessCluster) killAll() {
	for _, m := range c.members {
		if m != nil {
			_ = m.Kill()
		}
	}
}

func (m *Member) spawn() error {
	logf, err := os.OpenFile(filepath.Join(m.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("etcd log: %w", err)
	}
	cmd := exec.Command(m.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = proc.Attr()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start etcd %s: %w", m.Name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(done)
	}()
	m.mu.Lock()
	m.cmd, m.done, m.paused = cmd, done, false
	m.mu.Unlock()
	return nil
}

// Start launches the member again (after Kill or Stop) on its ports and
// data. It does not wait: a lone member cannot be healthy without a quorum.
func (m *Member) Start() error {
	if m.Running() {
		return fmt.Errorf("etcd %s is running", m.Name)
	}
	return m.spawn()
}

// Running reports whether the member's process was started and not yet
// stopped or killed by this harness (it may have exited on its own; see
// Exited).
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

// Exited reports whether the last process started has ended.
func (m *Member) Exited() bool {
	m.mu.Lock()
	done := m.done
	m.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// Pid is the process id of the running member, 0 when it is not running.
func (m *Member) Pid() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Kill sends SIGKILL (a crash) and waits for the process to end.
func (m *Member) Kill() error { return m.signal(syscall.SIGKILL) }

// Stop sends SIGTERM (a clean shutdown) and waits for the process to end,
// killing it after 10s.
func (m *Member) Stop() error { return m.signal(syscall.SIGTERM) }

func (m *Member) signal(sig syscall.Signal) error {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.paused = false
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	return proc.Stop(cmd.Process, done, sig, 10*time.Second, "etcd "+m.Name)
}

// Pause freezes the member with SIGSTOP; Resume continues it.
func (m *Member) Pause() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return fmt.Errorf("etcd %s is not running", m.Name)
	}
	m.paused = true
	return m.cmd.Process.Signal(syscall.SIGSTOP)
}

// Resume sends SIGCONT.
func (m *Member) Resume() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return fmt.Errorf("etcd %s is not running", m.Name)
	}
	m.paused = false
	return m.cmd.Process.Signal(syscall.SIGCONT)
}

// Paused reports whether Pause froze the member.
func (m *Member) Paused() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.paused
}

// health is etcd's /health: ok only with a leader and no alarm.
func (m *Member) health(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.ClientURL+"/health", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/health: %s", resp.Status)
	}
	return nil
}

// Status is the member's own id and the leader it knows (0: none).
func (m *Member) Status(ctx context.Context) (id, leader uint64, err error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL}, DialTimeout: time.Second,
		Logger: zap.NewNop()})
	if err != nil {
		return 0, 0, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, m.ClientURL)
	if err != nil {
		return 0, 0, err
	}
	return st.Header.MemberId, st.Leader, nil
}

// LogTail is the last n lines of the member's log.
func (m *Member) LogTail(n int) string {
	return strings.Join(proc.LogTail(filepath.Join(m.dir, "etcd.log"), n), "\n")
}

var binary = proc.Binary{Env: "ETCD_BIN", Build: buildBinary}

// Binary is the etcd server executable for process clusters: $ETCD_BIN when
// set (`make bin/etcd` builds it), else one built once from this module
// (internal/etcdserver/cmd/etcd, the module's etcd version) into the user's
// cache directory (named for the etcd version, which the client, embedded
// server and this binary share), where later runs find it. Building needs the current
// directory to be inside this module, as it is for its tests and for `make`.
func Binary() (string, error) { return binary.Path() }

func buildBinary() (string, error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "keeper")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("etcd binary cache: %w", err)
	}
	path := filepath.Join(dir, "etcd-v"+version.Version)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	// Built under a temporary name and renamed, so that two test binaries
	// building at once never run a half-written file.
	tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
	cmd := exec.Command("go", "build", "-o", tmp, "github.com/keeperhq/keeper/internal/etcdserver/cmd/etcd")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build etcd (set ETCD_BIN, or run `make bin/etcd`): %v: %s", err, out)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("etcd binary cache: %w", err)
	}
	return path, nil
}
