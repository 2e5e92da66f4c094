package queue

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
	prefix = cmp.Or(prefix, DefaultPrefix)
	return &Registry{rdb: rdb, prefix: prefix}
}

// Create stores a new queue's config; it refuses an existing name. Every
// shard is set to the config's generation first, and the tombstones an
// earlier queue of that name left are removed (their fences stay, so the
// old owners' tokens stay refused); then the config is published.
func (r *Registry) Create(ctx context.Context, name string, cfg Config) error {
	if _, err := encodeConfig(name, stored{Config: cfg}); err != nil {
		return err
	}
	key := registryKey(r.prefix)
	err := r.watch(ctx, func(tx *redis.Tx) error {
		exists, err := tx.HExists(ctx, key, name).Result()
		if err != nil {
			return err
		}
		if exists {
			return fmt.Errorf("%w: %s", ErrQueueExists, name)
		}
		return r.publish(ctx, tx, name, stored{Config: cfg.WithDefaults()}, 0)
	})
	if err != nil {
		return fmt.Errorf("create queue %s: %w", name, err)
	}
	r.notify(ctx, name)
	return nil
}

// Update replaces a queue's config. Partitions may grow, never shrink.
// Every shard is set to the new config's generation before it is
// published, so that no client goes on with the old partition count (see
// lua/bump.lua); the old count is kept in the config's history, where
// enqueues look for ids enqueued before the growth.
func (r *Registry) Update(ctx context.Context, name string, cfg Config) error {
	if _, err := encodeConfig(name, stored{Config: cfg}); err != nil {
		return err
	}
	// Under WATCH, so that two operators raising partitions at once cannot
	// lower them by racing, and a delete is not undone.
	err := r.watch(ctx, func(tx *redis.Tx) error {
		old, err := r.getStored(ctx, tx, name)
		if err != nil {
			return err
		}
		from, to := old.Partitions, cfg.WithDefaults().Partitions
		if to < from {
			return fmt.Errorf("%w: partitions of %s cannot go down from %d to %d (messages of the removed partitions would be stranded)",
				ErrBadConfig, name, from, to)
		}
		next := stored{Config: cfg.WithDefaults(), GrownFrom: old.GrownFrom}
		if to > from {
			next.GrownFrom = append(slices.Clone(old.GrownFrom), from)
		}
		return r.publish(ctx, tx, name, next, from)
	})
	if err != nil {
		return fmt.Errorf("update queue %s: %w", name, err)
	}
	r.notify(ctx, name)
	return nil
}

// publish gives st a new generation, sets it in every shard (partitions
// from on are new: their tombstones go), then writes st in tx.
func (r *Registry) publish(ctx context.Context, tx *redis.Tx, name string, st stored, from int) error {
	for {
		gen, err := r.rdb.Incr(ctx, generationKey(r.prefix)).Result()
		if err != nil {
			return fmt.Errorf("new config generation: %w", err)
		}
		top, err := r.bump(ctx, name, st.Partitions, from, gen)
		if err != nil {
			return err
		}
		if top > gen {
			// A shard is ahead of the counter (it was reset): move the
			// counter past it and mint again.
			if err := r.rdb.IncrBy(ctx, generationKey(r.prefix), top-gen).Err(); err != nil {
				return fmt.Errorf("raise the config generation: %w", err)
			}
			continue
		}
		st.Generation = gen
		data, err := encodeConfig(name, st)
		if err != nil {
			return err
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, registryKey(r.prefix), name, data)
			return nil
		})
		return err
	}
}

// bump sets every shard of queue name to generation gen (see lua/bump.lua)
// and returns the highest generation a shard holds after.
func (r *Registry) bump(ctx context.Context, name string, partitions, from int, gen int64) (int64, error) {
	calls := make([]call, partitions)
	for i := range calls {
		added := "0"
		if i >= from {
			added = "1"
		}
		calls[i] = bumpScript.on(keysFor(r.prefix, Shard{name, i}), gen, added)
	}
	top := gen
	for i, c := range runAll(ctx, r.rdb, calls) {
		g, err := c.Int64()
		if err != nil {
			return 0, fmt.Errorf("set the config generation of %s: %w", Shard{name, i}, asError(err, Shard{name, i}, 0))
		}
		top = max(top, g)
	}
	return top, nil
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

// Get returns a queue's config (with defaults applied).
func (r *Registry) Get(ctx context.Context, name string) (Config, error) {
	st, err := r.getStored(ctx, r.rdb, name)
	return st.Config, err
}

// getStored reads a queue's registry entry (defaults applied).
func (r *Registry) getStored(ctx context.Context, c redis.Cmdable, name string) (stored, error) {
	if err := ValidateName(name); err != nil {
		return stored{}, err
	}
	data, err := c.HGet(ctx, registryKey(r.prefix), name).Bytes()
	if errors.Is(err, redis.Nil) {
		return stored{}, fmt.Errorf("%w: %s", ErrUnknownQueue, name)
	}
	if err != nil {
		return stored{}, fmt.Errorf("read config of %s: %w", name, err)
	}
	st, err := parseStored(data)
	if err != nil {
		return stored{}, fmt.Errorf("stored config of %s: %w", name, err)
	}
	return st, nil
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
		} else if st, err := parseStored([]byte(data)); err != nil {
			e.Err = err
		} else {
			e.Config = st.Config
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
		st, err := r.getStored(ctx, tx, name)
		if err != nil {
			return err
		}
		if err := r.drop(ctx, name, st.Partitions); err != nil {
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
	// Loaded first on every node, so that no shard waits for a NOSCRIPT
	// round trip: the tombstones land together, and a client refused by
	// one finds the queue gone when it reads the registry again soon after.
	if err := dropScript.lua.Load(ctx, r.rdb).Err(); err != nil {
		return fmt.Errorf("load drop script: %w", err)
	}
	calls := make([]call, partitions)
	for i := range calls {
		calls[i] = dropScript.on(keysFor(r.prefix, Shard{name, i}))
	}
	for i, c := range runAll(ctx, r.rdb, calls) {
		if err := c.Err(); err != nil {
			return fmt.Errorf("drop the shards of %s: %w", name, asError(err, Shard{name, i}, 0))
		}
	}
	return nil
}

func (r *Registry) notify(ctx context.Context, name string) {
	// Best effort: keepers also re-read the registry periodically.
	_ = r.rdb.Publish(ctx, configChannel(r.prefix), name).Err()
}

func encodeConfig(name string, st stored) ([]byte, error) {
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if err := st.Config.Validate(); err != nil {
		return nil, err
	}
	st.Config = st.Config.WithDefaults()
	return json.Marshal(st)
}
