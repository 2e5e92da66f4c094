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

// Create stores a new queue's config; it refuses an existing name.
func (r *Registry) Create(ctx context.Context, name string, cfg Config) error {
	data, err := encodeConfig(name, cfg)
	if err != nil {
		return err
	}
	ok, err := r.rdb.HSetNX(ctx, registryKey(r.prefix), name, data).Result()
	if err != nil {
		return fmt.Errorf("create queue %s: %w", name, err)
	}
	if !ok {
		return fmt.Errorf("%w: %s", ErrQueueExists, name)
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
	// WATCH so that two operators raising partitions at once cannot lower
	// them by racing.
	err = r.rdb.Watch(ctx, func(tx *redis.Tx) error {
		old, err := r.get(ctx, tx, name)
		if err != nil {
			return err
		}
		if cfg.WithDefaults().Partitions < old.WithDefaults().Partitions {
			return fmt.Errorf("%w: partitions of %s cannot go down from %d to %d (messages of the removed partitions would be stranded)",
				ErrBadConfig, name, old.WithDefaults().Partitions, cfg.WithDefaults().Partitions)
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, key, name, data)
			return nil
		})
		return err
	}, key)
	if err != nil {
		return fmt.Errorf("update queue %s: %w", name, err)
	}
	r.notify(ctx, name)
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

// Delete removes a queue's config and every key of its shards.
func (r *Registry) Delete(ctx context.Context, name string) error {
	cfg, err := r.Get(ctx, name)
	if err != nil {
		return err
	}
	for p := 0; p < cfg.Partitions; p++ {
		// UNLINK frees big sets off the main thread; per shard so the keys
		// of one call share a slot on a cluster.
		if err := r.rdb.Unlink(ctx, keysFor(r.prefix, Shard{name, p}).all()...).Err(); err != nil {
			return fmt.Errorf("delete shard %s#%d: %w", name, p, err)
		}
	}
	if err := r.rdb.HDel(ctx, registryKey(r.prefix), name).Err(); err != nil {
		return fmt.Errorf("delete queue %s: %w", name, err)
	}
	r.notify(ctx, name)
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
