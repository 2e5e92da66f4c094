package main

import (
	"context"
	"flag"
	"strings"
	"time"

	"github.com/keeperhq/keeper/bench"
	"github.com/keeperhq/keeper/queue"
)

// deckardScenarios are `keeper bench drain|precision|idle --layout deckard`:
// the native scenarios' measurements on Deckard's keys.
var deckardScenarios = map[string]scenario{
	"drain": {"N due Deckard locks over S queues drained by the keeper vs. the deckard unlock script back-to-back",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.DrainOptions
			fs.IntVar(&o.Msgs, "msgs", 1_000_000, "due locks to preload")
			fs.IntVar(&o.Shards, "shards", 16, "deckard queues")
			fs.IntVar(&o.Batch, "batch", 1000, "ids per pass")
			fs.IntVar(&o.Workers, "workers", 0, "keeper workers (0: default)")
			redisFlag(fs, &o.Redis)
			return func(ctx context.Context) (any, error) { return bench.DeckardDrain(ctx, o) }
		}},
	"precision": {"unlock lag with a million Deckard locks expiring at a steady rate, and of single fresh locks",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.DeckardPrecisionOptions
			fs.IntVar(&o.Locked, "locked", 1_000_000, "ids locked")
			fs.IntVar(&o.Rate, "rate", 20_000, "unlocks per second")
			fs.IntVar(&o.Shards, "shards", 1, "deckard queues")
			fs.DurationVar(&o.Lead, "lead", 15*time.Second, "time from the start of writing the locks to the first unlock")
			fs.StringVar(&o.Wake, "wake", queue.WakeKeyspace, "keyspace (notifications) or poll")
			fs.IntVar(&o.Fresh, "fresh", 100, "single locks written into an empty queue, each due 50ms later")
			redisFlag(fs, &o.Redis)
			return func(ctx context.Context) (any, error) { return bench.DeckardPrecision(ctx, o) }
		}},
	"idle": {"what 10,000 idle Deckard queues cost Redis and the keeper, discovery included",
		func(fs *flag.FlagSet) func(context.Context) (any, error) {
			var o bench.DeckardIdleOptions
			fs.IntVar(&o.Shards, "shards", 10_000, "deckard queues")
			fs.DurationVar(&o.Window, "window", 30*time.Second, "measuring window after settling")
			fs.StringVar(&o.Wake, "wake", queue.WakeKeyspace, "keyspace (notifications) or poll")
			fs.DurationVar(&o.Discovery, "discovery", 5*time.Second, "discovery interval")
			redisFlag(fs, &o.Redis)
			return func(ctx context.Context) (any, error) { return bench.DeckardIdle(ctx, o) }
		}},
}

// layoutArg is the value of a --layout flag in args, "" when none: it
// chooses the scenario set before the scenario's flags are defined.
func layoutArg(args []string) string {
	for i, a := range args {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "layout" {
			continue
		}
		if hasVal {
			return val
		}
		if i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
