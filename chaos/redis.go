package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

// redisArgs are the settings of both Redis servers. The append-only file is
// fsynced before every reply (appendfsync always), so a kill -9 loses no
// write that Redis acknowledged: the checker tolerates no loss after a
// Redis crash and restart. Replicas resync without a delay, so a restarted
// server is a replica again quickly.
var redisArgs = []string{
	"--appendonly", "yes", "--appendfsync", "always",
	"--maxmemory-policy", "noeviction",
	"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
}

// RedisPair is the Redis that keepers and clients use: a primary and, when
// asked for, a replica. A failover kills the primary, promotes the replica
// and turns the old primary, restarted, into the new one's replica, so that
// failovers can follow each other.
type RedisPair struct {
	mu      sync.Mutex
	nodes   []*redisserver.Server
	primary int
}

// StartRedis starts the primary and, with replica, its replica, with their
// files under dir, and waits until the replica is in sync.
func StartRedis(ctx context.Context, replica bool, dir string) (*RedisPair, error) {
	r := &RedisPair{}
	n := 1
	if replica {
		n = 2
	}
	for i := 0; i < n; i++ {
		d := filepath.Join(dir, fmt.Sprintf("redis%d", i+1))
		if err := os.MkdirAll(d, 0o755); err != nil {
			r.Stop()
			return nil, err
		}
		s, err := redisserver.Start(ctx, redisserver.Config{ExtraArgs: redisArgs, Dir: d})
		if err != nil {
			r.Stop()
			return nil, err
		}
		r.nodes = append(r.nodes, s)
	}
	if replica {
		if err := r.attach(ctx, r.nodes[1], r.nodes[0]); err != nil {
			r.Stop()
			return nil, err
		}
		if _, err := r.WaitReplicaSynced(ctx, time.Minute); err != nil {
			r.Stop()
			return nil, err
		}
	}
	return r, nil
}

// Primary is the server that takes writes.
func (r *RedisPair) Primary() *redisserver.Server {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nodes[r.primary]
}

// PrimaryAddr is the primary's address.
func (r *RedisPair) PrimaryAddr() string { return r.Primary().Addr }

// Replica is the replica, nil when there is none.
func (r *RedisPair) Replica() *redisserver.Server {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.nodes) < 2 {
		return nil
	}
	return r.nodes[1-r.primary]
}

// Stop stops every server.
func (r *RedisPair) Stop() {
	for _, s := range r.nodes {
		_ = s.Stop()
	}
}

func do(ctx context.Context, addr string, args ...any) (any, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 2 * time.Second,
		ReadTimeout: 5 * time.Second})
	defer c.Close()
	return c.Do(ctx, args...).Result()
}

func info(ctx context.Context, addr string) (map[string]string, error) {
	v, err := do(ctx, addr, "INFO", "replication")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(fmt.Sprint(v), "\n") {
		if k, val, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = val
		}
	}
	return out, nil
}

// attach makes replica replicate primary.
func (r *RedisPair) attach(ctx context.Context, replica, primary *redisserver.Server) error {
	host, port, _ := strings.Cut(primary.Addr, ":")
	if _, err := do(ctx, replica.Addr, "REPLICAOF", host, port); err != nil {
		return fmt.Errorf("replicaof: %w", err)
	}
	return nil
}

// WaitReplicaSynced waits until the replica's link is up and it has
// processed everything the primary had written when the wait began, and
// returns that moment: every write the primary acknowledged before it is on
// the replica.
func (r *RedisPair) WaitReplicaSynced(ctx context.Context, timeout time.Duration) (time.Time, error) {
	rep := r.Replica()
	if rep == nil {
		return time.Time{}, errors.New("no replica")
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last string
	for {
		at := time.Now()
		p, err := info(ctx, r.PrimaryAddr())
		if err == nil {
			var ri map[string]string
			if ri, err = info(ctx, rep.Addr); err == nil {
				want, _ := strconv.ParseInt(p["master_repl_offset"], 10, 64)
				got, _ := strconv.ParseInt(ri["slave_repl_offset"], 10, 64)
				if ri["master_link_status"] == "up" && got >= want {
					return at, nil
				}
				last = fmt.Sprintf("link %s, replica at offset %d of %d", ri["master_link_status"], got, want)
			}
		}
		if err != nil {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("replica not in sync: %s: %w", last, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// KillPrimary SIGKILLs the primary.
func (r *RedisPair) KillPrimary() error { return r.Primary().Kill() }

// RestartPrimary starts the killed primary again from its append-only file
// on the same port; a replica reconnects by itself.
func (r *RedisPair) RestartPrimary(ctx context.Context) error { return r.Primary().Restart(ctx) }

// Promote makes the replica the primary (REPLICAOF NO ONE) once the old
// primary is dead, and returns the new primary's address.
func (r *RedisPair) Promote(ctx context.Context) (string, error) {
	rep := r.Replica()
	if rep == nil {
		return "", errors.New("no replica to promote")
	}
	if _, err := do(ctx, rep.Addr, "REPLICAOF", "NO", "ONE"); err != nil {
		return "", fmt.Errorf("promote %s: %w", rep.Addr, err)
	}
	r.mu.Lock()
	r.primary = 1 - r.primary
	r.mu.Unlock()
	return rep.Addr, nil
}

// Reattach restarts the old primary (dead since the failover) from its own
// file and makes it the new primary's replica: it resyncs and drops whatever
// it had that the new primary has not.
func (r *RedisPair) Reattach(ctx context.Context) error {
	rep := r.Replica()
	if err := rep.Restart(ctx); err != nil {
		return err
	}
	return r.attach(ctx, rep, r.Primary())
}
