package queue

import (
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/service/servicetest"
)

// The catalog keeps the lifecycle rules (internal/service).
func TestCatalogStartStop(t *testing.T) {
	e := newEnv(t)
	e.create("cat", Config{Partitions: 2})
	servicetest.Stress(t, 20, func(*testing.T) service.Service {
		return NewCatalog(NewRegistry(e.rdb, e.prefix), CatalogConfig{Interval: 10 * time.Millisecond}, nil)
	})
}

// A signal on CatalogConfig.Refresh re-reads the registry at once.
func TestCatalogRefreshChannel(t *testing.T) {
	e := newEnv(t)
	e.create("a", Config{})
	refresh := make(chan struct{}, 1)
	var mu sync.Mutex
	var seen map[string]Config
	c := NewCatalog(NewRegistry(e.rdb, e.prefix), CatalogConfig{Interval: time.Hour, Refresh: refresh},
		func(qs map[string]Config) {
			mu.Lock()
			seen = maps.Clone(qs)
			mu.Unlock()
		})
	if err := c.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(e.ctx) })
	e.create("b", Config{})
	refresh <- struct{}{}
	waitUntil(t, 10*time.Second, "b in the catalog", func() bool {
		mu.Lock()
		defer mu.Unlock()
		_, ok := seen["b"]
		return ok
	})
}
