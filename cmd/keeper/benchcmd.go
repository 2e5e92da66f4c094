package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"reflect"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/bench"
	"github.com/keeperhq/keeper/internal/progress"
	"github.com/keeperhq/keeper/shard"
)

// scenario is one `keeper bench` scenario: its flags and how to run it.
type scenario struct {
	about string
	flags func(fs *flag.FlagSet) func(ctx context.Context) (any, error)
}

var scenarios = map[string]scenario{
	"drain": {"N expired locks over S shards drained by the keeper vs. the unlock script back-to-back",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.DrainOptions
			fs.IntVar(&o.Msgs, "msgs", 1_000_000, "expired locks to preload")
			fs.IntVar(&o.Shards, "shards", 16, "shards")
			fs.IntVar(&o.Batch, "batch", 1000, "messages per pass")
			fs.IntVar(&o.Workers, "workers", 0, "keeper workers (0: default)")
			redisFlag(fs, &o.Redis)
			return func(ctx context.Context) (any, error) { return bench.Drain(ctx, o) }
		}},
	"precision": {"unlock lag with a million locks expiring at a steady rate",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.PrecisionOptions
			fs.IntVar(&o.Locked, "locked", 1_000_000, "messages locked")
			fs.IntVar(&o.Rate, "rate", 20_000, "unlocks per second")
			fs.IntVar(&o.Shards, "shards", 1, "shards")
			fs.DurationVar(&o.Lead, "lead", 3*time.Second, "time from the end of seeding to the first unlock")
			redisFlag(fs, &o.Redis)
			return func(ctx context.Context) (any, error) { return bench.Precision(ctx, o) }
		}},
	"idle": {"what 10,000 idle shards cost Redis and the keeper",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.IdleOptions
			fs.IntVar(&o.Shards, "shards", 10_000, "shards")
			fs.DurationVar(&o.Window, "window", 30*time.Second, "measuring window after settling")
			redisFlag(fs, &o.Redis)
			return func(ctx context.Context) (any, error) { return bench.Idle(ctx, o) }
		}},
	"failover": {"time to take over a crashed keeper's shards, and a SIGTERM'd keeper's",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.FailoverOptions
			fs.IntVar(&o.Keepers, "keepers", 3, "keeper processes")
			fs.IntVar(&o.Queues, "queues", 20, "queues")
			fs.IntVar(&o.Parts, "partitions", 10, "partitions per queue")
			fs.DurationVar(&o.TTL, "ttl", 3*time.Second, "session TTL")
			fs.IntVar(&o.Locks, "locks", 30_000, "locks seeded per shard, due over ten minutes (fewer for many shards)")
			fs.StringVar(&o.KeeperBin, "keeper-bin", "", "keeper binary (default: this one)")
			fs.StringVar(&o.LogDir, "log-dir", "", "keep the keepers' logs here")
			return func(ctx context.Context) (any, error) {
				if o.KeeperBin == "" {
					o.KeeperBin, _ = os.Executable()
				}
				return bench.Failover(ctx, o)
			}
		}},
	"scaleout": {"one workload housekept by 1, 2, 4, 8 keeper processes in turn: CPU and Redis commands per keeper, lag",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.ScaleoutOptions
			var keepers string
			fs.StringVar(&keepers, "keepers", "1,2,4,8", "fleet sizes, run in turn")
			fs.IntVar(&o.Shards, "shards", 2000, "shards (queues of up to 1,000 partitions)")
			fs.IntVar(&o.Rate, "rate", 30_000, "unlocks per second over all shards")
			fs.IntVar(&o.Leases, "leases", 5000, "leases expiring per second over all shards")
			fs.DurationVar(&o.Window, "window", 20*time.Second, "measuring window per fleet size")
			fs.StringVar(&o.KeeperBin, "keeper-bin", "", "keeper binary (default: this one)")
			fs.StringVar(&o.EtcdBin, "etcd-bin", "", "etcd server binary (default: $ETCD_BIN, else built once)")
			fs.StringVar(&o.LogDir, "log-dir", "", "keep the keepers' logs here")
			return func(ctx context.Context) (any, error) {
				for _, f := range splitList(keepers) {
					n, err := strconv.Atoi(f)
					if err != nil || n < 1 {
						return nil, fmt.Errorf("--keepers: %q is not a fleet size", f)
					}
					o.Keepers = append(o.Keepers, n)
				}
				if o.KeeperBin == "" {
					o.KeeperBin, _ = os.Executable()
				}
				return bench.Scaleout(ctx, o)
			}
		}},
	"ring": {"worst load and moved fraction of the consistent-hash ring for 2..N members",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.RingOptions
			fs.IntVar(&o.MaxMembers, "members", 1000, "largest member count")
			ringFlags(fs, &o.Ring)
			return func(ctx context.Context) (any, error) { return bench.Ring(ctx, o) }
		}},
	"converge": {"time until 100,000 shards are owned by 20 keepers, etcd keys and steady writes",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.ConvergeOptions
			fs.IntVar(&o.Shards, "shards", 100_000, "shards")
			fs.IntVar(&o.Keepers, "keepers", 20, "keepers (in this process, one etcd client each)")
			fs.DurationVar(&o.TTL, "ttl", 3*time.Second, "session TTL")
			fs.DurationVar(&o.SteadyWindow, "steady", 10*time.Second, "window for steady-state writes")
			var endpoints string
			fs.StringVar(&endpoints, "etcd", "", "etcd endpoints (empty: start an embedded etcd)")
			ringFlags(fs, &o.Ring)
			return func(ctx context.Context) (any, error) {
				o.Endpoints = splitList(endpoints)
				return bench.Converge(ctx, o)
			}
		}},
}

func ringFlags(fs *flag.FlagSet, r *shard.RingConfig) {
	fs.IntVar(&r.Units, "units", 0, "ring units (0: default)")
	fs.IntVar(&r.ReplicationFactor, "replication", 0, "virtual nodes per member (0: default)")
	fs.Float64Var(&r.Load, "load", 0, "bounded-load factor (0: default)")
}

// scenarioOrder is the order of `keeper bench all`.
var scenarioOrder = []string{"drain", "precision", "idle", "failover", "ring", "converge", "scaleout"}

func redisFlag(fs *flag.FlagSet, into *string) {
	fs.StringVar(into, "redis", "", "redis address (empty: start a private redis-server on loopback)")
}

// benchCmd is `keeper bench <scenario>|all [--json] [flags]`.
func benchCmd(args []string, out io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		names := make([]string, 0, len(scenarios))
		for n := range scenarios {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintln(out, "usage: keeper bench <scenario>|all [--json] [flags]")
		for _, n := range names {
			fmt.Fprintf(out, "  %-10s %s\n", n, scenarios[n].about)
		}
		if len(args) == 0 {
			return errors.New("no scenario given")
		}
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	names := []string{args[0]}
	if args[0] == "all" {
		names = scenarioOrder
	}
	var runs []func(context.Context) (any, error)
	asJSON := false
	for _, n := range names {
		sc, ok := scenarios[n]
		if !ok {
			return fmt.Errorf("unknown scenario %q (keeper bench -h lists them)", n)
		}
		if layoutArg(args[1:]) == LayoutDeckard {
			if sc, ok = deckardScenarios[n]; !ok {
				return fmt.Errorf("scenario %q has no deckard layout (drain, precision and idle have)", n)
			}
		}
		fs := flag.NewFlagSet("bench "+n, flag.ContinueOnError)
		fs.String("layout", LayoutNative, "native or deckard (drain, precision, idle)")
		fs.BoolVar(&asJSON, "json", false, "print one JSON object per scenario, one per line")
		run := sc.flags(fs)
		// `all` takes only --json; each scenario runs with its defaults.
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		runs = append(runs, run)
	}
	// Progress on stderr when it is a terminal; nothing otherwise.
	pr := progress.Stderr()
	defer pr.Close()
	ctx = progress.With(ctx, pr)
	for i, run := range runs {
		if len(runs) > 1 {
			pr.Printf("bench %s (%d of %d)", names[i], i+1, len(runs))
		}
		pr.Phase(names[i]+": starting", 0, "")
		res, err := run(ctx)
		pr.End()
		// A scenario that compares several runs (scaleout) gives one line
		// each; those done are printed even when a later one failed.
		var lines []any
		if v := reflect.ValueOf(res); v.Kind() == reflect.Slice {
			for j := 0; j < v.Len(); j++ {
				lines = append(lines, v.Index(j).Interface())
			}
		} else if err == nil {
			lines = []any{res}
		}
		for _, l := range lines {
			if asJSON {
				b, _ := json.Marshal(l)
				fmt.Fprintln(out, string(b))
			} else {
				fmt.Fprintf(out, "%+v\n", l)
			}
		}
		if err != nil {
			return fmt.Errorf("bench %s: %w", names[i], err)
		}
	}
	return nil
}
