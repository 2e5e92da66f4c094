package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/keeperhq/keeper/chaos"
)

// chaosCmd is `keeper chaos [--json] [flags]`: a fleet of real keeper
// processes under a workload and random faults, checked for the brief's
// invariants. It exits non-zero when one was violated.
func chaosCmd(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	var o chaos.RunOptions
	asJSON := fs.Bool("json", false, "print the report as one JSON object")
	faults := fs.String("faults", "kill,term,pause,etcd-restart", "faults to draw from")
	fs.IntVar(&o.Keepers, "keepers", 3, "keeper processes kept running")
	fs.DurationVar(&o.Duration, "duration", time.Minute, "how long to inject faults")
	fs.DurationVar(&o.Every, "every", 5*time.Second, "one fault per interval")
	fs.IntVar(&o.Queues, "queues", 8, "queues")
	fs.IntVar(&o.Partitions, "partitions", 8, "partitions per queue")
	fs.IntVar(&o.Rate, "rate", 400, "enqueues per second")
	fs.DurationVar(&o.TTL, "ttl", 3*time.Second, "session TTL")
	fs.Uint64Var(&o.Seed, "seed", 0, "fault schedule seed (0: random)")
	fs.StringVar(&o.LogDir, "log-dir", "", "keep the keepers' logs here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.Faults = splitList(*faults)
	o.KeeperBin, _ = os.Executable()
	if !*asJSON {
		o.Log = func(format string, a ...any) { fmt.Fprintf(out, format+"\n", a...) }
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := chaos.Run(ctx, o)
	if err != nil {
		return err
	}
	if *asJSON {
		b, _ := json.Marshal(rep)
		fmt.Fprintln(out, string(b))
	} else {
		fmt.Fprintf(out, "seed %d: %d faults over %.0fs on %d shards; messages %+v; fencing %d accepted, %d refused\n",
			rep.Seed, len(rep.Faults), rep.DurationS, rep.Shards, rep.Messages, rep.Fencing.Accepted, rep.Fencing.Refused)
	}
	if rep.Violations > 0 {
		return fmt.Errorf("%d invariant violations (messages %v, fencing %v, one owner %v, workload %v)",
			rep.Violations, rep.Messages.Problems, rep.Fencing.Problems, rep.OneOwner, rep.Workload)
	}
	return nil
}
