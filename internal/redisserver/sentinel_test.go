package redisserver

import (
	"context"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/redis/go-redis/v9"
)

// Three sentinels (quorum 2, their own password) over a primary and its
// replica, both with a password: every sentinel names the primary and
// knows the replica and the other sentinels; a forced failover makes every
// sentinel name the replica, and the old primary is turned into its
// replica; Stop ends each process by its pid.
func TestSentinelFailover(t *testing.T) {
	const pw, sentinelPW = "data-pw", "sentinel-pw"
	auth := []string{"--requirepass", pw, "--masterauth", pw}
	primary := StartConfigTB(t, Config{ExtraArgs: auth})
	replica := StartConfigTB(t, Config{ExtraArgs: append([]string{"--replicaof", "127.0.0.1", port(t, primary.Addr)}, auth...)})
	sentinels := StartSentinelsTB(t, 3, 1, SentinelConfig{Master: "queues", MasterAddr: primary.Addr, Quorum: 2,
		AuthPass: pw, RequirePass: sentinelPW})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	clients := make([]*redis.SentinelClient, len(sentinels))
	for i, s := range sentinels {
		clients[i] = redis.NewSentinelClient(&redis.Options{Addr: s.Addr, Password: sentinelPW})
		defer clients[i].Close()
	}
	names := func(want string) func() (bool, string) {
		return func() (bool, string) {
			var got []string
			for _, c := range clients {
				a, err := c.GetMasterAddrByName(ctx, "queues").Result()
				if err != nil {
					return false, err.Error()
				}
				got = append(got, net.JoinHostPort(a[0], a[1]))
			}
			for _, g := range got {
				if g != want {
					return false, fmt.Sprintf("sentinels name %v, want %s", got, want)
				}
			}
			return true, ""
		}
	}
	poll.For(t, 10*time.Second, "every sentinel names the primary", names(primary.Addr))
	// Without the sentinel's password, it refuses.
	anon := redis.NewSentinelClient(&redis.Options{Addr: sentinels[0].Addr})
	defer anon.Close()
	if err := anon.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("a sentinel with requirepass answered without it: %v", err)
	}

	if err := clients[1].Failover(ctx, "queues").Err(); err != nil {
		t.Fatal(err)
	}
	took := poll.For(t, 30*time.Second, "every sentinel names the replica", names(replica.Addr))
	t.Logf("failover: every sentinel names the replica after %s", took.Round(time.Millisecond))
	old := redis.NewClient(&redis.Options{Addr: primary.Addr, Password: pw})
	defer old.Close()
	took = poll.For(t, 60*time.Second, "the old primary a replica of the new one", func() (bool, string) {
		info, err := old.Info(ctx, "replication").Result()
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(info, "role:slave") && strings.Contains(info, "master_port:"+port(t, replica.Addr)) &&
			strings.Contains(info, "master_link_status:up"), info
	})
	t.Logf("the old primary was a replica again %s later", took.Round(time.Millisecond))

	for _, s := range sentinels {
		pid := s.Pid()
		if err := s.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, 0); err == nil {
			t.Fatalf("sentinel pid %d alive after Stop", pid)
		}
	}
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
