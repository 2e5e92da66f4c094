// Package bench holds keeper's benchmark scenarios. Each scenario starts the
// real components it needs (redis-server, etcd) unless addresses are given,
// measures in one run whatever it compares, and returns one JSON-able result.
// `keeper bench <scenario> --json` prints them, one object per line.
package bench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// redisFor connects to addr, or starts a private redis-server on loopback
// when addr is empty. The returned stop closes the client and stops the
// server it started.
func redisFor(ctx context.Context, addr string) (*redis.Client, func(), error) {
	var srv *redisserver.Server
	if addr == "" {
		var err error
		srv, err = redisserver.Start(ctx, redisserver.Config{})
		if err != nil {
			return nil, nil, err
		}
		addr = srv.Addr
	}
	rdb := redis.NewClient(benchRedisOptions(addr))
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		if srv != nil {
			_ = srv.Stop()
		}
		return nil, nil, fmt.Errorf("redis at %s: %w", addr, err)
	}
	stop := func() {
		_ = rdb.Close()
		if srv != nil {
			_ = srv.Stop()
		}
	}
	return rdb, stop, nil
}

// benchRedisOptions are the options of the benchmarks' own clients. A
// seeding script call can take seconds on a loaded machine: past the
// default 3s read timeout, go-redis would send it again while the first
// still runs, and Redis answers BUSY.
func benchRedisOptions(addr string) *redis.Options {
	return &redis.Options{Addr: addr, PoolSize: 32, ReadTimeout: time.Minute}
}

// commandCalls is the total of calls over INFO commandstats.
func commandCalls(ctx context.Context, rdb *redis.Client) (int64, error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return 0, fmt.Errorf("info commandstats: %w", err)
	}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		_, rest, ok := strings.Cut(line, ":calls=")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.SplitN(rest, ",", 2)[0], 10, 64)
		total += n
	}
	return total, nil
}

// redisCPU is the CPU time (user+system, seconds) redis-server has used,
// from INFO cpu.
func redisCPU(ctx context.Context, rdb *redis.Client) (float64, error) {
	info, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0, fmt.Errorf("info cpu: %w", err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return total, nil
}

func round(v float64, digits int) float64 {
	p := 1.0
	for i := 0; i < digits; i++ {
		p *= 10
	}
	if v < 0 {
		return -float64(int64(-v*p+0.5)) / p
	}
	return float64(int64(v*p+0.5)) / p
}

// benchQueues creates queues name-0, name-1, ... of at most perQueue
// partitions each (a queue holds at most queue.MaxPartitions), n shards in
// all, replacing queues of those names. drop deletes them.
func benchQueues(ctx context.Context, rdb *redis.Client, name string, n, perQueue int) (shards []queue.Shard, cfgs map[string]queue.Config, drop func(), err error) {
	reg := queue.NewRegistry(rdb, "")
	cfgs = map[string]queue.Config{}
	drop = func() {
		for q := range cfgs {
			_ = reg.Delete(context.WithoutCancel(ctx), q)
		}
	}
	for q := 0; len(shards) < n; q++ {
		qn := fmt.Sprintf("%s-%d", name, q)
		parts := min(perQueue, n-len(shards))
		_ = reg.Delete(ctx, qn)
		if err := reg.Create(ctx, qn, queue.Config{Partitions: parts}); err != nil {
			drop()
			return nil, nil, nil, err
		}
		cfgs[qn] = queue.Config{Partitions: parts}.WithDefaults()
		for p := 0; p < parts; p++ {
			shards = append(shards, queue.Shard{Queue: qn, Partition: p})
		}
	}
	return shards, cfgs, drop, nil
}
