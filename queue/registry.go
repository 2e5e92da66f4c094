package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/redis/go-redis/v9"
)

// Registry stores queue configs in one Redis hash, name -> JSON, where the
// keeper and every client read them. Writers publish on a channel so keepers
// pick changes up at once instead of on their next poll.
type Registry struct {
	rdb    redis.UniversalClient
	prefix string
}

// NewRegistry returns the registry under prefix (DefaultPrefix when empty).
func NewRegistry(rdb redis.UniversalClient, prefix string) *Registry {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return &Registry{rdb: rdb, prefix: prefix}
}

// Create stores a new queue's config; it refuses an existing name. The
// tombstones an earlier queue of that name left in its shards are removed
// first (their fences stay, so the old owners' tokens stay refused), then
// the config is published.
func (r *Registry) Create(ctx context.Context, name string, cfg Config) error {
	data, err := encodeConfig(name, cfg)
	if err != nil {
		return err
	}
	key := registryKey(r.prefix)
	err = r.watch(ctx, func(tx *redis.Tx) error {
		exists, err := tx.HExists(ctx, key, name).Result()
		if err != nil {
			return err
		}
		if exists {
			return fmt.Errorf("%w: %s", ErrQueueExists, name)
		}
		if err := r.revive(ctx, name, 0, cfg.WithDefaults().Partitions); err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, key, name, data)
			return nil
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("create queue %s: %w", name, err)
	}
	r.notify(ctx, name)
	return nil
}

// Update replaces a queue's config. Partitions may grow, never shrink.
func (r *Registry) Update(ctx context.Context, name string, cfg Config) error {
	data, err := encodeConfig(name, cfg)
	if err != nil {
		return err
	}
	key := registryKey(r.prefix)
	// Under WATCH, so that two operators raising partitions at once cannot
	// lower them by racing, and a delete is not undone.
	err = r.watch(ctx, func(tx *redis.Tx) error {
		old, err := r.get(ctx, tx, name)
		if err != nil {
			return err
		}
		from, to := old.WithDefaults().Partitions, cfg.WithDefaults().Partitions
		if to < from {
			return fmt.Errorf("%w: partitions of %s cannot go down from %d to %d (messages of the removed partitions would be stranded)",
				ErrBadConfig, name, from, to)
		}
		if err := r.revive(ctx, name, from, to); err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, key, name, data)
			return nil
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("update queue %s: %w", name, err)
	}
	r.notify(ctx, name)
	return nil
}

// watch runs fn under WATCH of the registry hash, again while another
// writer changed the hash before fn's transaction ran.
func (r *Registry) watch(ctx context.Context, fn func(tx *redis.Tx) error) error {
	key := registryKey(r.prefix)
	for attempt := 0; ; attempt++ {
		err := r.rdb.Watch(ctx, fn, key)
		if !errors.Is(err, redis.TxFailedErr) || attempt == 50 {
			return err
		}
	}
}

// revive removes the tombstones of partitions [from, to) of queue name: a
// queue deleted earlier under the same name may have left them.
func (r *Registry) revive(ctx context.Context, name string, from, to int) error {
	if from >= to {
		return nil
	}
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := from; i < to; i++ {
			p.Del(ctx, keysFor(r.prefix, Shard{name, i}).Deleted)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("clear the tombstones of %s: %w", name, err)
	}
	return nil
}

// Get returns a queue's config (with defaults applied).
func (r *Registry) Get(ctx context.Context, name string) (Config, error) {
	if err := ValidateName(name); err != nil {
		return Config{}, err
	}
	cfg, err := r.get(ctx, r.rdb, name)
	if err != nil {
		return Config{}, err
	}
	return cfg.WithDefaults(), nil
}

func (r *Registry) get(ctx context.Context, c redis.Cmdable, name string) (Config, error) {
	data, err := c.HGet(ctx, registryKey(r.prefix), name).Bytes()
	if errors.Is(err, redis.Nil) {
		return Config{}, fmt.Errorf("%w: %s", ErrUnknownQueue, name)
	}
	if err != nil {
		return Config{}, fmt.Errorf("read config of %s: %w", name, err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("stored config of %s: %w", name, err)
	}
	return cfg, nil
}

// Entry is one registry row: a valid config, or the reason it is not.
type Entry struct {
	Name   string
	Config Config // with defaults applied; zero when Err is set
	Err    error
}

// List returns every queue, sorted by name. A malformed entry (written by
// hand, or by a newer keeper) comes back with Err set rather than failing the
// whole list, so the keeper keeps serving every queue it can.
func (r *Registry) List(ctx context.Context) ([]Entry, error) {
	all, err := r.rdb.HGetAll(ctx, registryKey(r.prefix)).Result()
	if err != nil {
		return nil, fmt.Errorf("list queues: %w", err)
	}
	out := make([]Entry, 0, len(all))
	for name, data := range all {
		e := Entry{Name: name}
		if err := ValidateName(name); err != nil {
			e.Err = err
		} else if cfg, err := ParseConfig([]byte(data)); err != nil {
			e.Err = err
		} else {
			e.Config = cfg.WithDefaults()
		}
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete removes a queue's config and the messages of its shards. Each
// shard keeps a tombstone, its fence and the fence's owner: every script
// checks the tombstone first, so a housekeeping pass still running and a
// client holding the config in its cache are refused (ErrUnknownQueue)
// instead of writing keys again, and a queue created again under the same
// name keeps refusing the old owners' tokens.
func (r *Registry) Delete(ctx context.Context, name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	key := registryKey(r.prefix)
	// Under WATCH: a partition added while the shards are dropped is
	// dropped too, on the next attempt.
	err := r.watch(ctx, func(tx *redis.Tx) error {
		cfg, err := r.get(ctx, tx, name)
		if err != nil {
			return err
		}
		if err := r.drop(ctx, name, cfg.WithDefaults().Partitions); err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HDel(ctx, key, name)
			return nil
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("delete queue %s: %w", name, err)
	}
	r.notify(ctx, name)
	return nil
}

// drop tombstones every shard of queue name and deletes its messages, one
// script per shard (its keys share a slot), in one pipeline.
func (r *Registry) drop(ctx context.Context, name string, partitions int) error {
	if err := nativeScripts.drop.Load(ctx, r.rdb).Err(); err != nil {
		return fmt.Errorf("load drop script: %w", err)
	}
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := 0; i < partitions; i++ {
			k := keysFor(r.prefix, Shard{name, i})
			nativeScripts.drop.EvalSha(ctx, p, append([]string{k.Deleted}, k.messages()...))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("drop the shards of %s: %w", name, err)
	}
	return nil
}

// ChangesChannel is the pub/sub channel that carries the names of queues
// whose config changed.
func (r *Registry) ChangesChannel() string { return configChannel(r.prefix) }

func (r *Registry) notify(ctx context.Context, name string) {
	// Best effort: keepers also re-read the registry periodically.
	_ = r.rdb.Publish(ctx, configChannel(r.prefix), name).Err()
}

func encodeConfig(name string, cfg Config) ([]byte, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(cfg.WithDefaults())
}
