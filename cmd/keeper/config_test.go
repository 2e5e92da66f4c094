package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func TestShippedConfigParses(t *testing.T) {
	cfg, err := loadConfig("run", []string{"--config", "../../configs/keeper.yaml"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	def := defaultConfig()
	def.applyLayoutDefaults()
	// An empty list in the file is an empty slice, the default a nil one.
	if len(cfg.Redis.Sentinel.Addrs) == 0 {
		cfg.Redis.Sentinel.Addrs = nil
	}
	if cfg.Deckard != def.Deckard || cfg.Etcd.SessionTTL != def.Etcd.SessionTTL || cfg.Etcd.FenceRetry != def.Etcd.FenceRetry || cfg.Tasks != def.Tasks ||
		!reflect.DeepEqual(cfg.Redis, def.Redis) || cfg.Ring != def.Ring || cfg.Metrics != def.Metrics || cfg.ShutdownTimeout != def.ShutdownTimeout {
		t.Fatalf("configs/keeper.yaml drifted from the built-in defaults:\n%+v\n%+v", cfg, def)
	}
	if q := cfg.Queues["example"]; q.Partitions != 4 || q.TTL.D() != 24*time.Hour {
		t.Fatalf("example queue %+v", q)
	}
}

func TestPrecedenceFileEnvFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "k.yaml")
	if err := os.WriteFile(file, []byte("tasks:\n  batch: 10\n  workers: 2\nredis:\n  addr: file:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"KEEPER_TASKS_BATCH=20", "KEEPER_ETCD_ENDPOINTS=a:1, b:2", "POD_NAME=pod-7"}
	cfg, err := loadConfig("run", []string{"--config", file, "--tasks.batch", "30"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Tasks.Batch != 30 || cfg.Tasks.Workers != 2 || cfg.Redis.Addr != "file:1" {
		t.Fatalf("precedence wrong: %+v", cfg.Tasks)
	}
	if strings.Join(cfg.Etcd.Endpoints, ",") != "a:1,b:2" || cfg.MemberID != "pod-7" {
		t.Fatalf("env not applied: %+v %q", cfg.Etcd.Endpoints, cfg.MemberID)
	}
	cfg, err = loadConfig("run", []string{"--config", file}, env)
	if err != nil || cfg.Tasks.Batch != 20 {
		t.Fatalf("env should beat the file: %d %v", cfg.Tasks.Batch, err)
	}
}

func TestSecretsFromFileOrEnvOnly(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig("run", []string{"--etcd.password_file", pw}, []string{"KEEPER_REDIS_PASSWORD=fromenv"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Etcd.Password != "s3cret" || cfg.Redis.Password != "fromenv" {
		t.Fatalf("secrets: etcd %q redis %q", cfg.Etcd.Password, cfg.Redis.Password)
	}
	if _, err := loadConfig("run", []string{"--redis.password", "x"}, nil); err == nil {
		t.Fatal("a password flag was accepted; secrets must not be passed on the command line")
	}
}

func TestBadConfigIsRefusedClearly(t *testing.T) {
	for args, want := range map[string]string{
		"--etcd.session_ttl 500ms":                             "session_ttl",
		"--log_level loud":                                     "log_level",
		"--tasks.batch 0":                                      "tasks.batch",
		"--redis.prefix a{b}":                                  "redis.prefix",
		"--tasks.workers x":                                    "invalid value",
		"--redis.addr r:1 --redis.ca_file ca.pem":              "need redis.tls: true",
		"--redis.addr r:1 --redis.tls --redis.cert_file c.pem": "redis.cert_file and redis.key_file go together",
		"--redis.tls":                                          "redis.tls needs redis.addr",
		"--etcd.endpoints e:1 --etcd.key_file k.pem":           "etcd.cert_file and etcd.key_file go together",
		"--redis.addr r:1 --redis.tls --redis.ca_file ca.pem --etcd.prefix x": "etcd.prefix",
		"--redis.sentinel.master m":      "redis.sentinel.master needs redis.sentinel.addrs",
		"--redis.sentinel.addrs s:26379": "redis.sentinel.addrs needs redis.sentinel.master",
		"--redis.addr r:1 --redis.sentinel.master m --redis.sentinel.addrs s:26379": "redis.addr and redis.sentinel are exclusive",
		"--redis.sentinel.master m --redis.sentinel.addrs s:26379,s2":               `redis.sentinel.addrs: "s2" is not host:port`,
		"--redis.sentinel.master m --redis.sentinel.addrs :26379":                   `redis.sentinel.addrs: ":26379" is not host:port`,
		"--redis.sentinel.master m --redis.sentinel.addrs s:0":                      `redis.sentinel.addrs: "s:0" is not host:port`,
		"--redis.sentinel.username u":                                               "redis.sentinel.username and the sentinel password need redis.sentinel.master",
	} {
		_, err := loadConfig("run", strings.Fields(args), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want mention of %q", args, err, want)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(file, []byte("redis:\n  adress: x\n"), 0o644)
	if _, err := loadConfig("run", []string{"--config", file}, nil); err == nil || !strings.Contains(err.Error(), "adress") {
		t.Errorf("unknown key: %v", err)
	}
}

// Sentinel settings from a file, the environment and flags, the sentinels'
// own password from a file or KEEPER_REDIS_SENTINEL_PASSWORD (never a flag),
// and TLS allowed with Sentinel alone.
func TestSentinelConfig(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "sentinel-pw")
	if err := os.WriteFile(pw, []byte("watch\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "k.yaml")
	if err := os.WriteFile(file, []byte(`redis:
  tls: true
  sentinel:
    master: queues
    addrs: [10.0.0.1:26379, "sentinel-1.sentinel:26379"]
    username: watcher
    password_file: `+pw+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig("run", []string{"--config", file}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Redis.Sentinel
	if s.Master != "queues" || strings.Join(s.Addrs, ",") != "10.0.0.1:26379,sentinel-1.sentinel:26379" ||
		s.Username != "watcher" || s.Password != "watch" || !cfg.Redis.TLS {
		t.Fatalf("sentinel config from the file: %+v", cfg.Redis)
	}
	opt, err := redisOptions(cfg.Redis, nil)
	if err != nil {
		t.Fatal(err)
	}
	if opt.MasterName != "queues" || len(opt.Addrs) != 2 || opt.SentinelUsername != "watcher" ||
		opt.SentinelPassword != "watch" || opt.TLSConfig == nil {
		t.Fatalf("client options %+v", opt)
	}
	cfg, err = loadConfig("run", []string{"--redis.sentinel.addrs", "a:1, b:2"},
		[]string{"KEEPER_REDIS_SENTINEL_MASTER=m", "KEEPER_REDIS_SENTINEL_PASSWORD=fromenv"})
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Redis.Sentinel; s.Master != "m" || strings.Join(s.Addrs, ",") != "a:1,b:2" || s.Password != "fromenv" {
		t.Fatalf("sentinel config from env and flags: %+v", s)
	}
	if _, err := loadConfig("run", []string{"--redis.sentinel.password", "x"}, nil); err == nil {
		t.Fatal("a sentinel password flag was accepted")
	}
	_, err = loadConfig("run", nil, []string{"KEEPER_REDIS_SENTINEL_PASSWORD=x"})
	if err == nil || !strings.Contains(err.Error(), "the sentinel password need redis.sentinel.master") {
		t.Fatalf("a sentinel password without sentinels: %v", err)
	}
}

// The shipped Kubernetes manifests (the Helm chart's output, see
// configs/helm_test.go) are valid YAML, and the keeper.yaml they carry in a
// ConfigMap is a valid keeper config. The password files they name live in
// Secrets mounted in the pod, so the passwords come from the environment
// here.
func TestKubernetesManifests(t *testing.T) {
	files, err := filepath.Glob("../../configs/kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		for {
			var doc map[string]any
			if err := dec.Decode(&doc); err != nil {
				if err.Error() == "EOF" {
					break
				}
				t.Fatalf("%s: %v", f, err)
			}
			if doc["kind"] != "ConfigMap" {
				continue
			}
			cfgText := doc["data"].(map[string]any)["keeper.yaml"].(string)
			path := filepath.Join(t.TempDir(), "keeper.yaml")
			_ = os.WriteFile(path, []byte(cfgText), 0o644)
			// The password files are mounted in the pod only: the
			// environment stands in for them (the sentinels' password
			// only where a sentinel is configured, as it is refused
			// without one).
			env := []string{"KEEPER_REDIS_PASSWORD=x", "KEEPER_ETCD_PASSWORD=x"}
			if strings.Contains(cfgText, "sentinel:") {
				env = append(env, "KEEPER_REDIS_SENTINEL_PASSWORD=x")
			}
			if _, err := loadConfig("run", []string{"--config", path}, env); err != nil {
				t.Fatalf("%s: embedded keeper.yaml: %v", f, err)
			}
		}
	}
}

// Every bounded setting is accepted at its smallest and largest value (and
// at 0 where 0 means the default) and refused one past either end, with an
// error that names the setting and the bound.
func TestLimitsAtEveryBound(t *testing.T) {
	for _, l := range limits {
		value := func(v int64) string {
			if l.duration {
				return time.Duration(v).String()
			}
			return fmt.Sprint(v)
		}
		load := func(v int64) error {
			_, err := loadConfig("run", []string{"--" + l.path, value(v)}, nil)
			return err
		}
		accept := []int64{l.min}
		refuse := map[int64]int64{l.min - 1: l.min} // value -> the bound it passes
		if l.zeroDefault {
			accept = append(accept, 0)
			delete(refuse, 0)
			refuse[-1] = l.min
		}
		if l.max != 0 {
			accept = append(accept, l.max)
			refuse[l.max+1] = l.max
		}
		for _, v := range accept {
			if err := load(v); err != nil {
				t.Errorf("%s %s refused: %v", l.path, value(v), err)
			}
		}
		for v, bound := range refuse {
			err := load(v)
			if err == nil || !strings.Contains(err.Error(), l.path+" "+l.format(v)) || !strings.Contains(err.Error(), l.format(bound)) {
				t.Errorf("%s %s: err %v; want it refused naming the setting and %s", l.path, value(v), err, l.format(bound))
			}
		}
	}
}

// Every bound is documented where an operator looks: after the setting's
// help in `keeper run -h`, and next to the setting in configs/keeper.yaml.
func TestLimitsAreDocumented(t *testing.T) {
	var help bytes.Buffer
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var cfg Config
	bindFlags(fs, reflect.ValueOf(&cfg).Elem(), "", reflect.ValueOf(defaultConfig()))
	fs.SetOutput(&help)
	fs.PrintDefaults()
	data, err := os.ReadFile("../../configs/keeper.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The line of each setting, by its YAML path (sections are top-level
	// keys, settings indented under them).
	lines := map[string]string{}
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		key, _, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		switch indent := len(line) - len(strings.TrimLeft(line, " ")); indent {
		case 0:
			section = key
			lines[key] = line
		case 2:
			lines[section+"."+key] = line
		}
	}
	for _, l := range limits {
		flagHelp := regexp.MustCompile(`(?m)^  -` + regexp.QuoteMeta(l.path) + ` value\n(.*)$`).FindStringSubmatch(help.String())
		if flagHelp == nil || !strings.Contains(flagHelp[1], "accepted: "+l.text()) {
			t.Errorf("keeper run -h does not state %s's range %q: %v", l.path, l.text(), flagHelp)
		}
		if line, ok := lines[l.path]; !ok || !strings.Contains(line, l.text()) {
			t.Errorf("configs/keeper.yaml does not state %s's range %q next to it: %q", l.path, l.text(), line)
		}
	}
}

// redis.layout: native by default (prefix keeper); deckard takes Deckard's
// prefix rules (default deckard_v1, " :p: " is p) from a flag, the
// environment or the file; bad layouts, event modes, braces in the prefix,
// declared native queues and a poll range upside down are refused.
func TestLayoutConfig(t *testing.T) {
	cfg, err := loadConfig("run", nil, nil)
	if err != nil || cfg.Redis.Layout != LayoutNative || cfg.Redis.Prefix != "keeper" {
		t.Fatalf("default layout %q prefix %q, %v", cfg.Redis.Layout, cfg.Redis.Prefix, err)
	}
	for _, tc := range []struct {
		args, env []string
		want      string
	}{
		{args: []string{"--redis.layout", "deckard"}, want: "deckard_v1"},
		{env: []string{"KEEPER_REDIS_LAYOUT=deckard"}, want: "deckard_v1"},
		{env: []string{"KEEPER_REDIS_LAYOUT=deckard", "KEEPER_REDIS_PREFIX= :p: "}, want: "p"},
		{args: []string{"--redis.layout", "deckard", "--redis.prefix", "::"}, want: "deckard_v1"},
		{args: []string{"--redis.layout", "deckard", "--redis.prefix", "a:b"}, want: "a:b"},
		{args: []string{"--redis.layout", "native", "--redis.prefix", "k2"}, want: "k2"},
	} {
		cfg, err := loadConfig("run", tc.args, tc.env)
		if err != nil || cfg.Redis.Prefix != tc.want {
			t.Errorf("%v %v: prefix %q, %v; want %q", tc.args, tc.env, cfg.Redis.Prefix, err, tc.want)
		}
	}
	file := filepath.Join(t.TempDir(), "d.yaml")
	_ = os.WriteFile(file, []byte("redis:\n  layout: deckard\n  prefix: \" :dk: \"\ndeckard:\n  keyspace_events: \"off\"\n  discovery_interval: 1h\n"), 0o644)
	cfg, err = loadConfig("run", []string{"--config", file}, nil)
	if err != nil || cfg.Redis.Prefix != "dk" || cfg.Deckard.KeyspaceEvents != "off" || cfg.Deckard.DiscoveryInterval != time.Hour {
		t.Fatalf("from a file: %+v %+v, %v", cfg.Redis, cfg.Deckard, err)
	}
	withQueues := filepath.Join(t.TempDir(), "q.yaml")
	_ = os.WriteFile(withQueues, []byte("redis:\n  layout: deckard\nqueues:\n  q:\n    partitions: 1\n"), 0o644)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--redis.layout", "deckerd"}, `redis.layout "deckerd"`},
		{[]string{"--redis.layout", "deckard", "--redis.prefix", "a{b"}, "has a brace"},
		{[]string{"--redis.layout", "deckard", "--deckard.keyspace_events", "yes"}, "deckard.keyspace_events"},
		{[]string{"--redis.layout", "deckard", "--deckard.poll_min", "2s", "--deckard.poll_max", "1s"}, "deckard.poll_max 1s is below"},
		{[]string{"--config", withQueues}, "remove queues"},
		{[]string{"--redis.layout", "deckard", "--deckard.discovery_interval", "2h"}, "deckard.discovery_interval 2h"},
	} {
		if _, err := loadConfig("run", tc.args, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want it refused mentioning %q", tc.args, err, tc.want)
		}
	}
}
