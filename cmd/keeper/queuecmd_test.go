package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/internal/testpki"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// queueRun runs `keeper queue args...` with environ and returns its output.
func queueRun(environ []string, args ...string) (string, error) {
	var out bytes.Buffer
	err := queueCmd(args, environ, &out)
	return out.String(), err
}

// The operator commands against a real Redis: what they print matches what
// Redis holds, and each bad input is a clear error that changes nothing.
func TestQueueCommand(t *testing.T) {
	srv := redisserver.StartTB(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The address comes from the environment, as in a pod.
	env := []string{"KEEPER_REDIS_ADDR=" + srv.Addr}
	must := func(args ...string) string {
		t.Helper()
		out, err := queueRun(env, args...)
		if err != nil {
			t.Fatalf("keeper queue %s: %v", strings.Join(args, " "), err)
		}
		return out
	}
	refused := func(want error, wantText string, args ...string) {
		t.Helper()
		before, _ := rdb.Keys(ctx, "*").Result()
		_, err := queueRun(env, args...)
		if err == nil || (want != nil && !errors.Is(err, want)) || !strings.Contains(err.Error(), wantText) {
			t.Fatalf("keeper queue %s: err %v; want %v mentioning %q", strings.Join(args, " "), err, want, wantText)
		}
		after, _ := rdb.Keys(ctx, "*").Result()
		if len(after) != len(before) {
			t.Fatalf("keeper queue %s changed Redis: %d keys before, %d after", strings.Join(args, " "), len(before), len(after))
		}
		t.Logf("keeper queue %s: %v", strings.Join(args, " "), err)
	}

	if out := must("create", "orders", "--partitions", "3", "--max-deliveries", "5", "--ttl", "1h"); !strings.Contains(out, "created queue orders") {
		t.Fatalf("create printed %q", out)
	}
	refused(queue.ErrQueueExists, "orders", "create", "orders")
	refused(queue.ErrBadName, "bad name", "create", "bad name")
	refused(queue.ErrBadConfig, "", "create", "neg", "--partitions", "-1")
	refused(queue.ErrBadConfig, "", "update", "orders", "--partitions", "2")
	refused(nil, "takes 1 argument", "stats")
	refused(nil, "unknown queue command", "frobnicate", "orders")
	refused(queue.ErrUnknownQueue, "nope", "stats", "nope")
	refused(queue.ErrUnknownQueue, "nope", "reset-fences", "nope")

	var list []struct {
		Name   string        `json:"name"`
		Config *queue.Config `json:"config"`
	}
	if err := json.Unmarshal([]byte(must("list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "orders" || list[0].Config.Partitions != 3 || list[0].Config.MaxDeliveries != 5 ||
		list[0].Config.TTL.D() != time.Hour {
		t.Fatalf("list = %+v", list)
	}
	if out := must("list"); !strings.Contains(out, "orders") || !strings.Contains(out, "PARTITIONS") {
		t.Fatalf("list table:\n%s", out)
	}

	client := queue.NewClient(rdb, queue.ClientOptions{})
	var ids []string
	for i := 0; i < 7; i++ {
		res, err := client.Enqueue(ctx, "orders", queue.Message{Payload: []byte("hello")})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID)
	}
	if _, err := client.Pull(ctx, "orders", 2, time.Minute); err != nil {
		t.Fatal(err)
	}
	var st queue.QueueStats
	if err := json.Unmarshal([]byte(must("stats", "orders", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Ready != 5 || st.Inflight != 2 || len(st.Shards) != 3 {
		t.Fatalf("stats = ready %d inflight %d shards %d; want 5, 2, 3", st.Ready, st.Inflight, len(st.Shards))
	}
	var info queue.MessageInfo
	if err := json.Unmarshal([]byte(must("inspect", "orders", ids[0], "--json")), &info); err != nil {
		t.Fatal(err)
	}
	if info.ID != ids[0] || info.PayloadBytes != 5 || (info.State != "ready" && info.State != "inflight") {
		t.Fatalf("inspect = %+v", info)
	}
	refused(queue.ErrNotFound, "", "inspect", "orders", "no-such-id")
	if out := must("audit", "orders"); !regexp.MustCompile(`(?m)^problems\s+0$`).MatchString(out) {
		t.Fatalf("audit:\n%s", out)
	}
	// An id stored in a second shard (by hand) is reported by the audit.
	other := queue.Shard{Queue: "orders", Partition: (queue.PartitionOf(ids[0], 3) + 1) % 3}
	otherKey := queue.DefaultPrefix + ":{" + other.String() + "}:"
	rdb.ZAdd(ctx, otherKey+"ready", redis.Z{Score: 1, Member: ids[0]})
	rdb.HSet(ctx, otherKey+"body", ids[0], "hello")
	rdb.HSet(ctx, otherKey+"meta", ids[0], "1|0")
	out, err := queueRun(env, "audit", "orders")
	if err == nil || !strings.Contains(out, ids[0]+" is in shard") || !strings.Contains(out, "and in shard") {
		t.Fatalf("audit of a cross-shard duplicate: %v\n%s", err, out)
	}
	t.Logf("audit of a cross-shard duplicate:\n%s", out)

	// A key of the queue holding another type is refused by name, not
	// overwritten.
	if err := client.Registry().Create(ctx, "typed", queue.Config{}); err != nil {
		t.Fatal(err)
	}
	readyKey := queue.DefaultPrefix + ":{typed#0}:ready"
	if err := rdb.Set(ctx, readyKey, "not a zset", 0).Err(); err != nil {
		t.Fatal(err)
	}
	refused(queue.ErrWrongType, "typed#0", "stats", "typed")
	if v, _ := rdb.Get(ctx, readyKey).Result(); v != "not a zset" {
		t.Fatalf("the wrong-typed key now holds %q", v)
	}

	// --prefix selects another keyspace: the same Redis holds no queue there.
	if out := must("list", "--prefix", "other", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("list under another prefix: %s", out)
	}
	refused(nil, "redis.prefix", "list", "--prefix", "a{b}")

	if out := must("delete", "orders"); !strings.Contains(out, "deleted queue orders") {
		t.Fatalf("delete printed %q", out)
	}
	// Each shard keeps its tombstone and config generation (and its fence,
	// had a keeper claimed it, and its token counter, had it been pulled
	// from), nothing else.
	left, _ := rdb.Keys(ctx, queue.DefaultPrefix+":{orders#*").Result()
	tombs := 0
	for _, k := range left {
		switch k[strings.LastIndexByte(k, ':'):] {
		case ":deleted":
			tombs++
		case ":gen", ":fence", ":owner", ":seq":
		default:
			t.Fatalf("delete left %s (all: %v)", k, left)
		}
	}
	if tombs != 3 {
		t.Fatalf("after delete: %v; want 3 tombstones", left)
	}
	refused(queue.ErrUnknownQueue, "orders", "stats", "orders")
}

// `keeper queue` reaches a Redis that wants TLS with a client certificate
// and a password, from the same config file as `keeper run`; a missing
// client certificate, a CA that did not sign the server and a wrong password
// are each a clear error.
func TestQueueCommandOverTLS(t *testing.T) {
	pki := testpki.NewTB(t)
	srv := redisserver.StartConfigTB(t, redisserver.Config{
		TLS:       &redisserver.TLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, CAFile: pki.CAFile, AuthClients: true},
		ExtraArgs: []string{"--requirepass", "s3cret"},
	})
	dir := t.TempDir()
	pw := filepath.Join(dir, "redis-password")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeConfig := func(name, body string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	good := writeConfig("good.yaml", "redis:\n  addr: "+srv.TLSAddr+"\n  tls: true\n  ca_file: "+pki.CAFile+
		"\n  cert_file: "+pki.ClientCert+"\n  key_file: "+pki.ClientKey+"\n  password_file: "+pw+"\n")
	if _, err := queueRun(nil, "create", "secure", "--partitions", "2", "--config", good); err != nil {
		t.Fatalf("create over TLS: %v", err)
	}
	// KEEPER_CONFIG is the same file, as `keeper run` reads it.
	out, err := queueRun([]string{"KEEPER_CONFIG=" + good}, "list")
	if err != nil || !strings.Contains(out, "secure") {
		t.Fatalf("list over TLS: %v\n%s", err, out)
	}

	noCert := writeConfig("nocert.yaml", "redis:\n  addr: "+srv.TLSAddr+"\n  tls: true\n  ca_file: "+pki.CAFile+"\n")
	if _, err := queueRun([]string{"KEEPER_REDIS_PASSWORD=s3cret"}, "list", "--config", noCert); err == nil {
		t.Fatal("a client without a certificate was let in")
	} else {
		t.Logf("without a client certificate: %v", err)
	}
	other := testpki.NewTB(t)
	if _, err := queueRun([]string{"KEEPER_REDIS_PASSWORD=s3cret", "KEEPER_REDIS_CA_FILE=" + other.CAFile}, "list", "--config", good); err == nil ||
		!strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a server signed by another CA: err %v; want a certificate error", err)
	} else {
		t.Logf("wrong CA: %v", err)
	}
	if _, err := queueRun([]string{"KEEPER_REDIS_PASSWORD=wrong"}, "list", "--config", good); err == nil ||
		!strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("wrong password: err %v; want WRONGPASS", err)
	}
	// Plain TCP to the TLS port is not Redis's protocol: an error, not a hang.
	if _, err := queueRun([]string{"KEEPER_REDIS_PASSWORD=s3cret"}, "list", "--redis", srv.TLSAddr); err == nil {
		t.Fatal("plain TCP to the TLS port succeeded")
	}
	half := writeConfig("half.yaml", "redis:\n  addr: "+srv.TLSAddr+"\n  tls: true\n  cert_file: "+pki.ClientCert+"\n")
	if _, err := queueRun(nil, "list", "--config", half); err == nil || !strings.Contains(err.Error(), "cert_file and redis.key_file") {
		t.Fatalf("cert without key: err %v", err)
	}
}
