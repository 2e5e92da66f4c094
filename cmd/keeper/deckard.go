package main

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keeperhq/keeper/election"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
)

// The daemon's wiring of redis.layout: native (keeper's own queues, listed
// by the registry through a queue.Catalog) or deckard (Deckard's keys,
// listed by an election.Discovery the aggregator leader feeds).

// prepareDeckard decides, with the deckard layout, how keeper hears the
// deadlines Deckard's clients set (deckard.keyspace_events), setting
// notify-keyspace-events when it may, and says which mode it runs in.
func (d *daemon) prepareDeckard(ctx context.Context) error {
	if d.cfg.Redis.Layout != LayoutDeckard {
		return nil
	}
	c := d.cfg.Deckard
	d.wake = queue.DeckardWakeConfig{PollMin: c.PollMin, PollMax: c.PollMax, Logger: d.log}
	mode, why, err := queue.SetupKeyspaceEvents(ctx, d.rdb, c.KeyspaceEvents)
	var re interface{ RedisError() }
	switch {
	case errors.Is(err, queue.ErrBadConfig) || errors.As(err, &re):
		return err
	case err != nil:
		// Redis unreachable: polling is always correct, keyspace events
		// only once they are set.
		mode, why = queue.WakePoll, fmt.Sprintf("redis unreachable at start (%v)", err)
	}
	d.wake.Mode = mode
	// With auto, keeper also puts the events back on a Redis that lost
	// them (restarted without the config saved).
	d.wake.KeepEvents = mode == queue.WakeKeyspace && c.KeyspaceEvents == queue.KeyspaceAuto
	if mode == queue.WakeKeyspace {
		d.log.Info("deckard layout: wake-ups by keyspace notifications", "keyspace_events", c.KeyspaceEvents, "why", why)
	} else {
		d.log.Warn("deckard layout: wake-ups by polling each owned queue (keyspace notifications off)",
			"keyspace_events", c.KeyspaceEvents, "why", why, "poll_min", c.PollMin, "poll_max", c.PollMax)
	}
	return nil
}

// newLayout is the configured layout, its fences held by owner.
func (d *daemon) newLayout(owner string) (queue.Layout, error) {
	if d.cfg.Redis.Layout != LayoutDeckard {
		n := queue.NewNative(d.rdb, d.cfg.Redis.Prefix).WithOwner(owner).WithClaimWait(d.cfg.Redis.ReplicaWait)
		if d.cfg.Tasks.RecordHistory {
			n = n.WithHistory()
		}
		return n, nil
	}
	dk, err := queue.NewDeckard(d.rdb, d.cfg.Redis.Prefix, d.wake)
	if err != nil {
		return nil, err
	}
	dk = dk.WithOwner(owner).WithClaimWait(d.cfg.Redis.ReplicaWait)
	if d.cfg.Tasks.RecordHistory {
		dk = dk.WithHistory()
	}
	d.deckard = dk
	return dk, nil
}

// newDiscovery lists the Deckard queues for the keeper and the
// coordinator: agg's leader scans, every keeper follows.
func (d *daemon) newDiscovery(agg *election.Aggregator, set func(map[string]queue.Config)) *election.Discovery {
	return election.NewDiscovery(d.etcd, election.DiscoveryConfig{Prefix: d.cfg.Etcd.Prefix,
		Interval: d.cfg.Deckard.DiscoveryInterval, Scan: d.deckard.Discover, Leader: agg, MemberID: d.memberID,
		Logger: d.log, OnChange: func(qs []string) { set(deckardConfigs(qs)) }})
}

// deckardConfigs are the configs of Deckard queues: one shard each; the
// other settings are Deckard's business (its TTL and size cap need its
// storage).
func deckardConfigs(queues []string) map[string]queue.Config {
	out := make(map[string]queue.Config, len(queues))
	for _, q := range queues {
		out[q] = queue.Config{Partitions: 1}
	}
	return out
}

// deckardQueueCmd is `keeper queue list|stats|inspect` on Deckard's queues:
// it reads them only. Deckard creates its queues by adding to them and
// deletes them by emptying them; keeper does neither.
func deckardQueueCmd(ctx context.Context, rdb redis.UniversalClient, prefix, sub string, args []string,
	print func(any, func(*tabwriter.Writer)) error) error {
	dk, err := queue.NewDeckard(rdb, prefix, queue.DeckardWakeConfig{})
	if err != nil {
		return err
	}
	switch sub {
	case "list":
		names, _, err := dk.Discover(ctx)
		if err != nil {
			return err
		}
		var rows []queue.DeckardStats
		for len(names) > 0 {
			n := min(len(names), 1000)
			st, err := dk.StatsOf(ctx, names[:n])
			if err != nil {
				return err
			}
			rows, names = append(rows, st...), names[n:]
		}
		if rows == nil {
			rows = []queue.DeckardStats{}
		}
		return print(rows, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "QUEUE\tREADY\tINFLIGHT\tLOCK_ACK\tLOCK_NACK\tOLDEST_READY\tFENCE\tOWNER")
			for _, r := range rows {
				fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%s\t%d\t%s\n", r.Queue, r.Ready, r.Inflight, r.LockAck, r.LockNack,
					r.OldestReadyAge(), r.Fence, r.Owner)
			}
		})
	case "stats":
		st, err := dk.StatsOf(ctx, args[:1])
		if err != nil {
			return err
		}
		s := st[0]
		return print(s, func(w *tabwriter.Writer) {
			fmt.Fprintf(w, "queue\t%s\nready\t%d\ninflight\t%d\nlock_ack\t%d (%d with a saved score)\nlock_nack\t%d (%d with a saved score)\n",
				s.Queue, s.Ready, s.Inflight, s.LockAck, s.SavedAck, s.LockNack, s.SavedNack)
			fmt.Fprintf(w, "oldest ready\t%s\nnext timeout\t%s\nnext unlock\t%s\nfence\t%d %s\n",
				s.OldestReadyAge(), epochMs(s.NextTimeoutMs), epochMs(s.NextUnlockMs), s.Fence, s.Owner)
			fmt.Fprintf(w, "unlocked_ack\t%d\nunlocked_nack\t%d\ntimed_out\t%d\n",
				s.Counters.UnlockedAck, s.Counters.UnlockedNack, s.Counters.Requeued)
		})
	case "inspect":
		places, err := dk.InspectDeckard(ctx, args[0], args[1])
		if err != nil {
			return err
		}
		if len(places) == 0 {
			return fmt.Errorf("id %s is in no pool of deckard queue %s", args[1], args[0])
		}
		return print(places, func(w *tabwriter.Writer) {
			fmt.Fprintln(w, "POOL\tSCORE\tSAVED SCORE")
			for _, p := range places {
				fmt.Fprintf(w, "%s\t%s\t%s\n", p.Pool, p.Score, orNone(p.SavedScore))
			}
			if len(places) > 1 {
				fmt.Fprintf(w, "\nid %s is in %d pools: Deckard keeps an id in one\n", args[1], len(places))
			}
		})
	}
	return fmt.Errorf("queue %s: not with the deckard layout; keeper only lists, inspects and reports Deckard's queues (list, stats, inspect)", sub)
}

// epochMs renders a deadline in epoch ms, "(none)" for -1.
func epochMs(ms int64) string {
	if ms < 0 {
		return orNone("")
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
}

// layoutStatus is the layout part of `keeper status`.
type layoutStatus struct {
	Layout string `json:"layout"`
	Prefix string `json:"redis_prefix"`
	// Discovered is the queue set the aggregator leader published
	// (deckard), without its names.
	Discovered *discoveredStatus `json:"discovered,omitempty"`
}

type discoveredStatus struct {
	Queues int    `json:"queues"`
	Seq    int64  `json:"seq"`
	By     string `json:"by"`
	At     string `json:"at"`
}

func (l layoutStatus) String() string {
	s := l.Layout
	if l.Prefix != "" {
		s += " (redis prefix " + l.Prefix + ")"
	}
	if x := l.Discovered; x != nil {
		s += fmt.Sprintf("; %d queues discovered (set %d, scanned by %s at %s)", x.Queues, x.Seq, x.By, x.At)
	} else if l.Layout == LayoutDeckard {
		s += "; no queues discovered yet"
	}
	return s
}

// fleetLayout is the fleet's layout: deckard when the configuration says
// so or when a discovered set is published in etcd (only a deckard fleet
// publishes one), with that set.
func fleetLayout(ctx context.Context, d *daemon, keys shard.Keys) (layoutStatus, *election.DiscoveredSet, error) {
	l := layoutStatus{Layout: d.cfg.Redis.Layout, Prefix: d.cfg.Redis.Prefix}
	set, ok, err := election.ReadDiscovered(ctx, d.etcd, keys)
	if err != nil {
		return l, nil, err
	}
	if !ok {
		return l, nil, nil
	}
	if l.Layout != LayoutDeckard {
		// This command's own config is not the fleet's: its prefix is
		// not the fleet's either.
		l.Layout, l.Prefix = LayoutDeckard, ""
	}
	l.Discovered = &discoveredStatus{Queues: len(set.Queues), Seq: set.Seq, By: set.By,
		At: time.UnixMilli(set.AtMs).UTC().Format(time.RFC3339)}
	return l, &set, nil
}

// deckardShards are the shards of Deckard queues: one each.
func deckardShards(queues []string) []queue.Shard {
	out := make([]queue.Shard, len(queues))
	for i, q := range queues {
		out[i] = queue.Shard{Queue: q}
	}
	return out
}
