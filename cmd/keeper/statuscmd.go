package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keeperhq/keeper/election"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
)

// discoveryFile is where `keeper run` notes the address of a server it
// started itself (embedded etcd, local redis-server), so that `keeper
// status` and `keeper queue` run from the same directory find them.
func discoveryFile(dataDir, name string) string { return filepath.Join(dataDir, name) }

func writeDiscovery(dataDir, name, value string) error {
	return os.WriteFile(discoveryFile(dataDir, name), []byte(value+"\n"), 0o644)
}

func readDiscovery(dataDir, name string) string {
	b, err := os.ReadFile(discoveryFile(dataDir, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// statusCmd is `keeper status [--json]`: the fleet as etcd has it.
func statusCmd(args []string, out io.Writer) error {
	asJSON := false
	var rest []string
	for _, a := range args {
		if a == "--json" || a == "-json" {
			asJSON = true
			continue
		}
		rest = append(rest, a)
	}
	cfg, err := loadConfig("status", rest, os.Environ())
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	endpoints := cfg.Etcd.Endpoints
	if len(endpoints) == 0 {
		endpoints = splitList(readDiscovery(cfg.Etcd.DataDir, "endpoints"))
		if len(endpoints) == 0 {
			return fmt.Errorf("no etcd endpoints given (--etcd.endpoints) and no embedded etcd noted in %s", cfg.Etcd.DataDir)
		}
	}
	d := &daemon{cfg: cfg, log: newLogger("error")}
	d.cfg.Etcd.Endpoints = endpoints
	if err := d.startEtcd(ctx); err != nil {
		return err
	}
	defer d.etcd.Close()
	rc, known := operatorRedis(cfg.Redis)
	var shards []queue.Shard
	if known {
		rdb, err := redisClient(rc, splitList(rc.Addr))
		if err != nil {
			return err
		}
		defer rdb.Close()
		entries, err := queue.NewRegistry(rdb, cfg.Redis.Prefix).List(ctx)
		if err != nil {
			return fmt.Errorf("queue registry: %w", err)
		}
		for _, e := range entries {
			for p := 0; e.Err == nil && p < e.Config.Partitions; p++ {
				shards = append(shards, queue.Shard{Queue: e.Name, Partition: p})
			}
		}
	}
	keys := shard.NewKeys(cfg.Etcd.Prefix)
	layout, found, err := fleetLayout(ctx, d, keys)
	if err != nil {
		return err
	}
	if found != nil {
		shards = deckardShards(found.Queues)
	}
	st, err := shard.ReadStatus(ctx, d.etcd, keys,
		shard.RingConfig{Units: cfg.Ring.Units, ReplicationFactor: cfg.Ring.ReplicationFactor, Load: cfg.Ring.Load}, shards)
	if err != nil {
		return err
	}
	leader, err := election.Leader(ctx, d.etcd, keys)
	if err != nil && !errors.Is(err, election.ErrNoLeader) {
		return fmt.Errorf("aggregator: %w", err)
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			shard.Status
			Leader string `json:"aggregator"`
			layoutStatus
		}{st, leader, layout})
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "etcd\t%s (prefix %s, revision %d)\n", strings.Join(endpoints, ","), st.Prefix, st.Revision)
	fmt.Fprintf(w, "ring\t%d units, %d virtual nodes per member, load %.4g\n", st.Ring.Units, st.Ring.ReplicationFactor, st.Ring.Load)
	fmt.Fprintf(w, "aggregator\t%s\n", orNone(leader))
	fmt.Fprintf(w, "layout\t%s\n", layout)
	fmt.Fprintf(w, "shards\t%d (%d unowned), units unowned %d, units in handoff %d\n",
		st.Shards, len(st.UnownedShards), len(st.UnownedUnits), st.Misplaced)
	fmt.Fprintln(w, "\nMEMBER\tRING UNITS\tOWNED UNITS\tSHARDS\tTOKENS")
	for _, m := range st.Members {
		lo, hi := int64(0), int64(0)
		for _, u := range m.Units {
			t := st.Tokens[u]
			if lo == 0 || t < lo {
				lo = t
			}
			hi = max(hi, t)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d..%d\n", m.ID, m.RingUnits, len(m.Units), len(m.Shards), lo, hi)
	}
	if len(st.UnownedShards) > 0 {
		fmt.Fprintf(w, "\nunowned shards: %s\n", strings.Join(st.UnownedShards[:min(20, len(st.UnownedShards))], " "))
	}
	return w.Flush()
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
