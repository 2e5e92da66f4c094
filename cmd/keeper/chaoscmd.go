package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/chaos"
	"github.com/keeperhq/keeper/internal/progress"
)

// chaosCmd is `keeper chaos [--json] [--svg FILE] [flags]`: a fleet of real
// keeper processes, a three-member etcd cluster and Redis with a replica,
// every keeper behind its own fault proxies, under a workload and random
// faults, checked for the brief's invariants. On a terminal, stderr shows
// the phase and how far it is, with one line per fault above it; into a
// pipe or file, one line per fault without --json and nothing with it. The
// report (or its JSON) goes to out. It exits non-zero when an invariant was
// violated, naming the seed that replays the run.
func chaosCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	var o chaos.RunOptions
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	svg := fs.String("svg", "", "write the run's timeline picture (SVG) to this file")
	faults := fs.String("faults", strings.Join(chaos.AllFaults, ","), "fault kinds to draw from")
	otel := fs.Bool("otel", false, "export every keeper's metrics to a real OpenTelemetry Collector ($OTELCOL_BIN, else bin/otelcol-keeper) and check at the end that every per-shard and global series is one series naming no keeper and that the sums match Redis")
	quiet := fs.Bool("quiet", false, "no progress on stderr")
	fs.IntVar(&o.Keepers, "keepers", 3, "keeper processes at the start")
	fs.DurationVar(&o.Duration, "duration", 150*time.Second, "how long to inject faults")
	fs.IntVar(&o.MinFaults, "min-faults", 0, "keep injecting past --duration until this many faults ran")
	fs.DurationVar(&o.Gap, "gap", time.Second, "mean pause between one fault's recovery and the next fault")
	fs.IntVar(&o.Queues, "queues", 0, "queues (0: drawn from the seed)")
	fs.IntVar(&o.Partitions, "partitions", 0, "partitions per queue (0: drawn from the seed)")
	fs.IntVar(&o.Rate, "rate", 0, "enqueues per second (0: drawn from the seed)")
	fs.DurationVar(&o.TTL, "ttl", 3*time.Second, "session TTL")
	fs.Uint64Var(&o.Seed, "seed", 0, "seed of the settings and the fault schedule (0: random); a failing run prints its seed")
	fs.StringVar(&o.LogDir, "log-dir", "", "keep the keepers' logs and etcd's data here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.Faults = splitList(*faults)
	o.KeeperBin, _ = os.Executable()
	if *otel {
		o.OtelcolBin = os.Getenv("OTELCOL_BIN")
		if o.OtelcolBin == "" {
			o.OtelcolBin = "bin/otelcol-keeper"
		}
	}
	var pr *progress.Printer
	if !*quiet {
		pr = progress.Stderr()
	}
	defer pr.Close()
	stamped := func(print func(string, ...any)) func(string, ...any) {
		return func(format string, a ...any) {
			print("%s "+format, append([]any{time.Now().Format("15:04:05")}, a...)...)
		}
	}
	switch {
	case pr != nil:
		o.Log = stamped(pr.Printf)
	case !*quiet && !*asJSON:
		o.Log = stamped(func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) })
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := chaos.Run(progress.With(ctx, pr), o)
	pr.Close()
	if err != nil {
		return fmt.Errorf("chaos run (seed %d): %w", rep.Seed, err)
	}
	if *svg != "" {
		f, err := os.Create(*svg)
		if err != nil {
			return err
		}
		if err := chaos.WriteSVG(f, rep); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	if *asJSON {
		b, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(b))
	} else {
		printChaos(out, rep)
	}
	if rep.Violations > 0 {
		return fmt.Errorf("%d invariant violations; replay with keeper chaos --seed %d (and the same flags)", rep.Violations, rep.Seed)
	}
	return nil
}

// printChaos is the human summary: one line per fault kind, one per
// invariant.
func printChaos(out io.Writer, rep chaos.RunReport) {
	fmt.Fprintf(out, "seed %d: %d faults of %d kinds over %.0fs on %d shards (settle bound %.1fs)\n",
		rep.Seed, len(rep.Faults), rep.FaultKinds, rep.DurationS, rep.Shards, rep.SettleMaxS)
	kinds := make([]string, 0, len(rep.ByKind))
	for k := range rep.ByKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	fmt.Fprintf(out, "  %-20s %5s %10s %10s %12s\n", "fault", "count", "settle p50", "settle max", "lag max")
	for _, k := range kinds {
		s := rep.ByKind[k]
		fmt.Fprintf(out, "  %-20s %5d %9.2fs %9.2fs %10.0fms\n", k, s.Count, s.SettleP50, s.SettleMax, s.LagMaxMs)
	}
	for _, inv := range rep.Invariants {
		mark := "ok  "
		if !inv.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(out, "  %s %s: %s\n", mark, inv.Name, inv.Detail)
	}
	for _, v := range rep.ViolationList {
		fmt.Fprintf(out, "  violation: %s\n", v)
	}
}
