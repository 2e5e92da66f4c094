package redisserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/redis/go-redis/v9"
)

// Cluster is a Redis Cluster of primaries, one redis-server process each,
// all on loopback. It has no replicas: tests need the slot routing of a
// cluster (MOVED, CROSSSLOT, per-node scripts), not its failover.
type Cluster struct {
	Nodes []*Server
}

// clusterSlots is the fixed slot count of Redis Cluster.
const clusterSlots = 16384

// StartCluster starts n cluster-enabled servers (n ≥ 1), splits the slots
// evenly over them, joins them with CLUSTER MEET and waits until every node
// reports cluster_state:ok and knows all the others.
func StartCluster(ctx context.Context, n int, cfg Config) (_ *Cluster, err error) {
	if n < 1 {
		return nil, fmt.Errorf("a cluster needs at least one node, got %d", n)
	}
	c := &Cluster{}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	cfg.Cluster = true
	cfg.Port = 0
	cfg.Dir = "" // each node needs its own nodes.conf
	for i := 0; i < n; i++ {
		s, err := Start(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("cluster node %d: %w", i, err)
		}
		c.Nodes = append(c.Nodes, s)
	}
	clients := make([]*redis.Client, n)
	for i, s := range c.Nodes {
		clients[i] = redis.NewClient(&redis.Options{Addr: s.Addr})
		defer clients[i].Close()
	}
	for i, cl := range clients {
		lo, hi := i*clusterSlots/n, (i+1)*clusterSlots/n-1
		if err := cl.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			return nil, fmt.Errorf("cluster node %s: add slots %d-%d: %w", c.Nodes[i].Addr, lo, hi, err)
		}
		if i == 0 {
			continue
		}
		_, port, err := net.SplitHostPort(c.Nodes[0].Addr)
		if err != nil {
			return nil, fmt.Errorf("cluster node %s: %w", c.Nodes[0].Addr, err)
		}
		if err := cl.Do(ctx, "CLUSTER", "MEET", "127.0.0.1", port, c.Nodes[0].BusPort).Err(); err != nil {
			return nil, fmt.Errorf("cluster node %s: meet: %w", c.Nodes[i].Addr, err)
		}
	}
	// Gossip spreads the slot map in a second or two; ask every node, since
	// a client may land on any of them first.
	_, err = poll.Until(ctx, 50*time.Millisecond, func() (bool, string) {
		for i, cl := range clients {
			info, err := cl.ClusterInfo(ctx).Result()
			if err != nil {
				return false, err.Error()
			}
			if !strings.Contains(info, "cluster_state:ok") || !strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(n)+"\r") {
				return false, fmt.Sprintf("node %d: %s", i, strings.ReplaceAll(info, "\r\n", " "))
			}
		}
		return true, ""
	})
	if err != nil {
		return nil, fmt.Errorf("redis cluster of %d nodes did not settle: %w", n, err)
	}
	return c, nil
}

// Addrs are the nodes' host:port, for a cluster client's seed list.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		out[i] = s.Addr
	}
	return out
}

// Stop stops every node by its pid. It is safe to call more than once.
func (c *Cluster) Stop() error {
	var errs []error
	for _, s := range c.Nodes {
		errs = append(errs, s.Stop())
	}
	return errors.Join(errs...)
}

// StartClusterTB starts a cluster of n nodes for a test or benchmark and
// stops it in Cleanup.
func StartClusterTB(t TB, n int) *Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := StartCluster(ctx, n, Config{})
	if err != nil {
		t.Fatalf("start redis cluster: %v", err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	return c
}
