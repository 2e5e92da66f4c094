package queue

import (
	"context"
	"log/slog"
	"maps"
	"reflect"
	"sync"
	"time"
)

// CatalogConfig tunes a Catalog. Zero values take the defaults noted.
type CatalogConfig struct {
	// Interval between full re-reads of the registry; default 30s. Changes
	// made through Registry are also announced, and Refresh reacts at once.
	Interval time.Duration
	Logger   *slog.Logger
}

// Catalog keeps the list of queues and their configs fresh for a keeper: it
// re-reads the registry periodically and on Refresh, and calls OnChange with
// the valid entries whenever they differ from the last call. Malformed
// entries are logged once per change and left out, so one bad config never
// stops the others from being served.
type Catalog struct {
	reg      *Registry
	cfg      CatalogConfig
	onChange func(map[string]Config)
	refresh  chan struct{}

	mu      sync.Mutex
	current map[string]Config
	bad     map[string]string

	cancel context.CancelFunc
	done   chan struct{}
}

// NewCatalog returns a catalog over reg; onChange runs on the catalog's
// goroutine.
func NewCatalog(reg *Registry, cfg CatalogConfig, onChange func(map[string]Config)) *Catalog {
	if cfg.Interval <= 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Catalog{reg: reg, cfg: cfg, onChange: onChange, refresh: make(chan struct{}, 1), bad: map[string]string{}}
}

// Start reads the registry once (so the caller starts with a full view, or
// an error if Redis is unreachable) and then keeps it fresh until Stop.
func (c *Catalog) Start(ctx context.Context) error {
	err := c.load(ctx)
	ctx, c.cancel = context.WithCancel(ctx)
	c.done = make(chan struct{})
	go c.loop(ctx)
	return err
}

// Stop ends the refresh loop.
func (c *Catalog) Stop() {
	if c.cancel != nil {
		c.cancel()
		<-c.done
	}
}

// Refresh asks for a re-read as soon as possible.
func (c *Catalog) Refresh() {
	select {
	case c.refresh <- struct{}{}:
	default:
	}
}

// Queues is the current view.
func (c *Catalog) Queues() map[string]Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.current)
}

// Config is one queue's current config.
func (c *Catalog) Config(name string) (Config, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg, ok := c.current[name]
	return cfg, ok
}

// Shards lists every shard of every valid queue.
func (c *Catalog) Shards() []Shard {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Shard
	for name, cfg := range c.current {
		for p := 0; p < cfg.Partitions; p++ {
			out = append(out, Shard{Queue: name, Partition: p})
		}
	}
	return out
}

func (c *Catalog) loop(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.refresh:
		}
		if err := c.load(ctx); err != nil && ctx.Err() == nil {
			c.cfg.Logger.Warn("queue registry unreadable; keeping the last view", "err", err)
			// Retry soon rather than a whole interval later.
			time.AfterFunc(time.Second, c.Refresh)
		}
	}
}

func (c *Catalog) load(ctx context.Context) error {
	entries, err := c.reg.List(ctx)
	if err != nil {
		return err
	}
	next := map[string]Config{}
	bad := map[string]string{}
	for _, e := range entries {
		if e.Err != nil {
			bad[e.Name] = e.Err.Error()
			continue
		}
		next[e.Name] = e.Config
	}
	c.mu.Lock()
	for name, why := range bad {
		if c.bad[name] != why {
			c.cfg.Logger.Error("queue config refused; the queue is not served until it is fixed", "queue", name, "err", why)
		}
	}
	c.bad = bad
	changed := !reflect.DeepEqual(next, c.current)
	if changed {
		c.current = next
	}
	c.mu.Unlock()
	if changed && c.onChange != nil {
		c.onChange(next)
	}
	return nil
}
