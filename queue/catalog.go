package queue

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"sync"
	"time"

	"github.com/keeperhq/keeper/internal/service"
)

// CatalogIntervalDefault is CatalogConfig.Interval's default.
const CatalogIntervalDefault = 30 * time.Second

// CatalogConfig tunes a Catalog. Zero values take the defaults noted.
type CatalogConfig struct {
	// Interval between full re-reads of the registry; default
	// CatalogIntervalDefault. Changes made through Registry are also
	// announced, and Refresh reacts at once.
	Interval time.Duration
	// Refresh, when set, asks for a re-read each time it delivers (a task
	// keeper's ConfigChanged, which hears the announcements).
	Refresh <-chan struct{}
	Logger  *slog.Logger
}

// Catalog keeps the list of queues and their configs fresh for a keeper: it
// re-reads the registry periodically and on Refresh, and calls OnChange with
// the valid entries whenever they differ from the last call. Malformed
// entries are logged once per change and left out, so one bad config never
// stops the others from being served.
type Catalog struct {
	base     service.Base
	reg      *Registry
	cfg      CatalogConfig
	onChange func(map[string]Config)
	refresh  chan struct{}

	mu      sync.Mutex
	current map[string]Config
	bad     map[string]string
}

// NewCatalog returns a catalog over reg; onChange runs on the catalog's
// goroutine.
func NewCatalog(reg *Registry, cfg CatalogConfig, onChange func(map[string]Config)) *Catalog {
	if cfg.Interval <= 0 {
		cfg.Interval = CatalogIntervalDefault
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Catalog{reg: reg, cfg: cfg, onChange: onChange, refresh: make(chan struct{}, 1), bad: map[string]string{}}
}

// Start reads the registry once, so the caller starts with a full view,
// and then keeps it fresh until Stop. A registry that cannot be read (Redis
// unreachable) is logged and read again later; ctx bounds the first read
// only.
func (c *Catalog) Start(ctx context.Context) error {
	startCtx, err := c.base.StartInit(ctx)
	if err != nil {
		return fmt.Errorf("catalog: %w", err)
	}
	if err := c.load(startCtx); err != nil {
		c.cfg.Logger.Error("queue registry unreadable at start; retrying", "err", err)
	}
	c.base.Go(c.loop)
	return c.base.StartDone(nil)
}

// Stop ends the refresh loop, within ctx.
func (c *Catalog) Stop(ctx context.Context) error { return c.base.Halt(ctx, nil) }

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
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.refresh:
		case <-c.cfg.Refresh:
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
