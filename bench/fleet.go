package bench

// The keeper processes of a fleet benchmark (scaleout): each a real
// `keeper run`, started on loopback ports, read through its /status
// endpoint and /proc, and stopped by its pid.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/internal/loopback"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/proc"
	"github.com/keeperhq/keeper/queue"
)

// fleetKeeper is one `keeper run` process of the bench.
type fleetKeeper struct {
	id      string
	health  string // its /status
	metrics string // its Prometheus endpoint
	cmd     *exec.Cmd
	done    chan struct{}
	log     string
}

// startKeeper starts a keeper process and waits for its health endpoint.
func (e scaleoutEnv) startKeeper(ctx context.Context, id string) (*fleetKeeper, error) {
	hp, err := loopback.Port()
	if err != nil {
		return nil, err
	}
	mp, err := loopback.Port()
	if err != nil {
		return nil, err
	}
	k := &fleetKeeper{id: id, health: loopback.Addr(hp), metrics: loopback.Addr(mp), done: make(chan struct{}),
		log: filepath.Join(e.logDir, id+".log")}
	// Metrics on, as in production, read through the Prometheus endpoint;
	// OTLP export is put off beyond the run (there is no collector).
	k.cmd = exec.Command(e.o.KeeperBin, "run",
		"--member_id", id,
		"--health_addr", k.health,
		"--redis.addr", e.redisAddr,
		"--etcd.endpoints", e.etcd,
		"--etcd.prefix", "/bench-scaleout/",
		"--metrics.prometheus_addr", k.metrics,
		"--metrics.export_interval", "1h",
	)
	logf, err := os.Create(k.log)
	if err != nil {
		return nil, err
	}
	k.cmd.Stdout, k.cmd.Stderr = logf, logf
	k.cmd.SysProcAttr = proc.Attr()
	if err := k.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start keeper %s: %w", id, err)
	}
	go func() {
		_ = k.cmd.Wait()
		logf.Close()
		close(k.done)
	}()
	_, err = poll.Until(ctx, 50*time.Millisecond, func() (bool, string) {
		select {
		case <-k.done:
			return true, ""
		default:
		}
		_, err := k.status(ctx)
		return err == nil, fmt.Sprint(err)
	})
	select {
	case <-k.done:
		return nil, fmt.Errorf("keeper %s exited at start; see %s", id, k.log)
	default:
	}
	if err != nil {
		k.stop()
		return nil, err
	}
	return k, nil
}

// stop ends the process with SIGTERM (its graceful handoff), then SIGKILL
// if it has not exited within a minute.
func (k *fleetKeeper) stop() {
	_ = proc.Stop(k.cmd.Process, k.done, syscall.SIGTERM, time.Minute, "keeper "+k.id)
}

// keeperStatus is the part of /status the bench reads.
type keeperStatus struct {
	Owned    map[string]int64 `json:"owned"`
	Commands int64            `json:"redis_commands"`
}

func (k *fleetKeeper) status(ctx context.Context) (keeperStatus, error) {
	var st keeperStatus
	err := getJSON(ctx, "http://"+k.health+"/status", &st)
	return st, err
}

func getJSON(ctx context.Context, url string, into any) error {
	return get(ctx, url, func(r io.Reader) error { return json.NewDecoder(r).Decode(into) })
}

// get reads url's body with read, within 30s.
func get(ctx context.Context, url string, read func(io.Reader) error) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return read(resp.Body)
}

// waitOwned waits until every shard has exactly one owner and every keeper
// owns some.
func waitOwned(ctx context.Context, fleet []*fleetKeeper, shards []queue.Shard, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	_, err := poll.Until(ctx, 100*time.Millisecond, func() (bool, string) {
		owners := map[string]int{}
		idle := 0
		for _, k := range fleet {
			st, err := k.status(ctx)
			if err != nil {
				return false, err.Error()
			}
			if len(st.Owned) == 0 {
				idle++
			}
			for s := range st.Owned {
				owners[s]++
			}
		}
		for _, s := range shards {
			if owners[s.String()] != 1 {
				return false, fmt.Sprintf("%s has %d owners", s, owners[s.String()])
			}
		}
		return idle == 0, fmt.Sprintf("%d keepers own nothing", idle)
	})
	return err
}

// processCPU is a process's user+system CPU time, from /proc.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	rest := string(b[strings.LastIndexByte(string(b), ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// utime and stime are fields 14 and 15, in clock ticks (100 a second
	// on Linux).
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}
