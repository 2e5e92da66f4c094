package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/keeperhq/keeper/election"
	"github.com/keeperhq/keeper/queue"
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
