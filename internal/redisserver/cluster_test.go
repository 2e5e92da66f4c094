package redisserver

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Three nodes split the slots: a cluster client writes keys that land on
// every node, a multi-key command over two slots is refused with CROSSSLOT,
// and Stop ends every node's process.
func TestCluster(t *testing.T) {
	c := StartClusterTB(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	defer cc.Close()
	for i := 0; i < 100; i++ {
		if err := cc.Set(ctx, fmt.Sprintf("k%d", i), i, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range c.Nodes {
		node := redis.NewClient(&redis.Options{Addr: s.Addr})
		n, err := node.DBSize(ctx).Result()
		_ = node.Close()
		if err != nil || n == 0 {
			t.Fatalf("node %s holds %d keys (%v); the slots are not spread", s.Addr, n, err)
		}
	}
	if err := cc.Do(ctx, "MSET", "{a}x", 1, "{b}y", 2).Err(); err == nil {
		t.Fatal("MSET over two slots succeeded")
	}
	pids := []int{}
	for _, s := range c.Nodes {
		pids = append(pids, s.Pid())
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if syscall.Kill(pid, 0) == nil {
			t.Fatalf("cluster node pid %d alive after Stop", pid)
		}
	}
}
