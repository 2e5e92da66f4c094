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
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/keeperhq/keeper/internal/progress"
	"github.com/keeperhq/keeper/queue"
)

// queueCmd is `keeper queue create|update|list|inspect|stats|audit|delete|reset-fences`.
// It reads the Redis settings of `keeper run` (config file, KEEPER_REDIS_*,
// password file, TLS), so it reaches every Redis the daemon can; --redis and
// --prefix override the address and prefix.
func queueCmd(args []string, environ []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: keeper queue create|update|list|inspect|stats|audit|delete|reset-fences [flags] [name] [id]")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("queue "+sub, flag.ContinueOnError)
	file := fs.String("config", envOr(environ, "KEEPER_CONFIG", ""), "YAML config of `keeper run` whose redis settings to use (env KEEPER_CONFIG)")
	addr := fs.String("redis", "", "redis address (default redis.addr or redis.sentinel of the config or KEEPER_REDIS_*, else the local redis-server of `keeper run` in this directory, else 127.0.0.1:6379)")
	prefix := fs.String("prefix", "", "key prefix (default redis.prefix of the config or KEEPER_REDIS_PREFIX, else "+queue.DefaultPrefix+")")
	layout := fs.String("layout", "", "native or deckard (default redis.layout of the config or KEEPER_REDIS_LAYOUT, else native); deckard: list, stats and inspect Deckard's queues")
	asJSON := fs.Bool("json", false, "print JSON")
	var qc queue.Config
	if sub == "create" || sub == "update" {
		fs.IntVar(&qc.Partitions, "partitions", 0, "partitions (shards) of the queue (default 1)")
		fs.Var(durationFlag{&qc.Lease}, "lease", "default lease of a pull (default 30s)")
		fs.IntVar(&qc.MaxDeliveries, "max-deliveries", 0, "dead-letter after this many deliveries (0: never)")
		fs.Var(durationFlag{&qc.TTL}, "ttl", "drop messages this long after enqueue (0: never)")
		fs.IntVar(&qc.MaxSize, "max-size", 0, "per-partition cap on ready+inflight+locked (0: none)")
		fs.IntVar(&qc.MaxInFlight, "max-inflight", 0, "cap on messages leased at once over the queue (0: none)")
		fs.IntVar(&qc.MaxPayloadBytes, "max-payload", 0, "largest payload in bytes (default 256 KiB)")
	}
	rest, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	need := map[string]int{"create": 1, "update": 1, "list": 0, "inspect": 2, "stats": 1, "audit": 1, "delete": 1,
		"reset-fences": 1}
	n, ok := need[sub]
	if !ok {
		return fmt.Errorf("unknown queue command %q", sub)
	}
	if len(rest) != n {
		return fmt.Errorf("queue %s takes %d argument(s), got %d", sub, n, len(rest))
	}
	// The overrides go through loadConfig as its own flags, so they are
	// validated with the rest.
	var cfgArgs []string
	if *file != "" {
		cfgArgs = append(cfgArgs, "--config", *file)
	}
	if *addr != "" {
		cfgArgs = append(cfgArgs, "--redis.addr", *addr)
	}
	if *prefix != "" {
		cfgArgs = append(cfgArgs, "--redis.prefix", *prefix)
	}
	if *layout != "" {
		cfgArgs = append(cfgArgs, "--redis.layout", *layout)
	}
	cfg, err := loadConfig("queue", cfgArgs, environ)
	if err != nil {
		return err
	}
	rc, known := operatorRedis(cfg.Redis)
	if !known {
		rc.Addr = "127.0.0.1:6379"
	}
	// go-redis's own warnings (each retried dial) would bury the one error
	// line the command prints; newLogger routes them below that level.
	newLogger("error")
	rdb, err := redisClient(rc, splitList(rc.Addr))
	if err != nil {
		return err
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	if sub == "audit" {
		// An audit reads every message of the queue: minutes on a large
		// one. It ends on Ctrl-C or SIGTERM, not at a deadline.
		ctx, cancel = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	}
	defer cancel()
	c := queue.NewClient(rdb, queue.ClientOptions{Prefix: rc.Prefix})
	reg := c.Registry()
	print := func(v any, text func(w *tabwriter.Writer)) error {
		if *asJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(v)
		}
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		text(w)
		return w.Flush()
	}
	if cfg.Redis.Layout == LayoutDeckard {
		return deckardQueueCmd(ctx, rdb, rc.Prefix, sub, rest, print)
	}
	switch sub {
	case "create":
		if err := reg.Create(ctx, rest[0], qc); err != nil {
			return err
		}
		fmt.Fprintf(out, "created queue %s\n", rest[0])
	case "update":
		if err := reg.Update(ctx, rest[0], qc); err != nil {
			return err
		}
		fmt.Fprintf(out, "updated queue %s\n", rest[0])
	case "delete":
		if err := reg.Delete(ctx, rest[0]); err != nil {
			return err
		}
		fmt.Fprintf(out, "deleted queue %s and all its messages (each shard keeps its fence and a tombstone)\n", rest[0])
	case "list":
		entries, err := reg.List(ctx)
		if err != nil {
			return err
		}
		type row struct {
			Name   string        `json:"name"`
			Config *queue.Config `json:"config,omitempty"`
			Error  string        `json:"error,omitempty"`
		}
		rows := make([]row, 0, len(entries))
		for _, e := range entries {
			r := row{Name: e.Name}
			if e.Err != nil {
				r.Error = e.Err.Error()
			} else {
				cfg := e.Config
				r.Config = &cfg
			}
			rows = append(rows, r)
		}
		return print(rows, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "QUEUE\tPARTITIONS\tLEASE\tMAX_DELIVERIES\tTTL\tMAX_SIZE\tMAX_INFLIGHT\tERROR")
			for _, r := range rows {
				if r.Config == nil {
					fmt.Fprintf(w, "%s\t-\t-\t-\t-\t-\t-\t%s\n", r.Name, r.Error)
					continue
				}
				c := r.Config
				fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%s\t%d\t%d\t\n", r.Name, c.Partitions, c.Lease, c.MaxDeliveries, c.TTL, c.MaxSize, c.MaxInFlight)
			}
		})
	case "inspect":
		info, err := c.Inspect(ctx, rest[0], rest[1])
		if err != nil {
			return err
		}
		return print(info, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "id\t%s\nshard\t%s\nstate\t%s\nscore\t%.0f\npriority\t%d\ndeliveries\t%d\nenqueued\t%s\n",
				info.ID, info.Shard, info.State, info.Score, info.Priority, info.Deliveries, info.EnqueuedAt.UTC().Format(time.RFC3339Nano))
			if !info.ExpiresAt.IsZero() {
				fmt.Fprintf(w, "expires\t%s\n", info.ExpiresAt.UTC().Format(time.RFC3339Nano))
			}
			fmt.Fprintf(w, "payload\t%d bytes\n", info.PayloadBytes)
		})
	case "stats":
		st, err := c.Stats(ctx, rest[0])
		if err != nil {
			return err
		}
		return print(st, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "SHARD\tREADY\tINFLIGHT\tLOCKED\tDEAD\tFENCE")
			for _, s := range st.Shards {
				fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\n", s.Shard, s.Ready, s.Inflight, s.Locked, s.Dead, s.Fence)
			}
			fmt.Fprintf(w, "total\t%d\t%d\t%d\t%d\t\n", st.Ready, st.Inflight, st.Locked, st.Dead)
			st.Counters.Each(func(name string, v int64) { fmt.Fprintf(w, "%s\t%d\n", name, v) })
		})
	case "reset-fences":
		old, err := c.ResetFences(ctx, rest[0])
		if err != nil {
			return err
		}
		type row struct {
			Shard string `json:"shard"`
			Fence int64  `json:"removed_fence"`
		}
		rows := make([]row, len(old))
		for i, f := range old {
			rows[i] = row{queue.Shard{Queue: rest[0], Partition: i}.String(), f}
		}
		return print(rows, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "SHARD\tREMOVED FENCE")
			for _, r := range rows {
				fmt.Fprintf(w, "%s\t%d\n", r.Shard, r.Fence)
			}
		})
	case "audit":
		// Progress on stderr when it is a terminal; nothing otherwise.
		pr := progress.Stderr()
		a, err := c.Audit(progress.With(ctx, pr), rest[0])
		pr.Close()
		if err != nil {
			return err
		}
		if err := print(a, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "present\t%d\naccounted\t%d\nproblems\t%d\n", a.Present(), a.Accounted(), len(a.Problems))
			for _, p := range a.Problems {
				fmt.Fprintf(w, "  %s\n", p)
			}
		}); err != nil {
			return err
		}
		if len(a.Problems) > 0 {
			return fmt.Errorf("queue %s: %d problems", rest[0], len(a.Problems))
		}
	}
	return nil
}

// parseInterleaved lets flags follow positional arguments
// (`keeper queue create orders --partitions 8`), which package flag alone
// does not.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// durationFlag reads "30s" into a queue.Duration.
type durationFlag struct{ d *queue.Duration }

func (f durationFlag) String() string {
	if f.d == nil {
		return "0s"
	}
	return f.d.String()
}
func (f durationFlag) Set(s string) error { return f.d.UnmarshalText([]byte(s)) }
