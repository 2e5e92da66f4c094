package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/memberid"
	"github.com/keeperhq/keeper/internal/progress"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/shard"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ConvergeOptions configures the converge scenario. Zero values take
// defaults.
type ConvergeOptions struct {
	// Shards in the catalog; default 100,000.
	Shards int
	// Keepers started at once, each with its own etcd client; default 20.
	Keepers int
	// Endpoints of an etcd to use; empty starts an embedded one (and stops
	// it after). On a shared etcd the scenario works under a fresh random
	// prefix and deletes it afterwards.
	Endpoints []string
	// Ring is the keepers' ring; zero values take shard's defaults.
	Ring shard.RingConfig
	// TTL is the keepers' session TTL; default shard's (3s).
	TTL time.Duration
	// SteadyWindow is how long steady-state writes are counted; default 10s.
	SteadyWindow time.Duration
	// Logger receives the keepers' logs; default discards them.
	Logger *slog.Logger
}

// ConvergeResult is one line of `keeper bench converge --json`.
type ConvergeResult struct {
	Scenario             string  `json:"scenario"`
	Shards               int     `json:"shards"`
	Keepers              int     `json:"keepers"`
	ConvergeS            float64 `json:"converge_s"`
	EtcdKeys             int     `json:"etcd_keys"`
	EtcdWritesPerSSteady float64 `json:"etcd_writes_per_s_steady"`
	// The parts: key revisions (puts, deletes) and lease renewals per
	// second in steady state, and the ring's unit count.
	RevisionsPerSSteady  float64 `json:"revisions_per_s_steady"`
	KeepalivesPerSSteady float64 `json:"keepalives_per_s_steady"`
	Units                int     `json:"units"`
	// UnitsUsed is how many units hold shards: the units that are owned,
	// so the ownership keys in etcd.
	UnitsUsed int `json:"units_used"`
}

// Converge starts Keepers coordinators in this process, each with its own
// client and a listener that counts owners per shard, and measures the time
// from the first Start until every shard has exactly one owner and every
// unit is held by the member the ring names (no handoff left). It then
// counts the keys under the prefix and the steady-state write rate over
// SteadyWindow: etcd's revision delta (every put or delete, including those
// in transactions, bumps it) plus lease renewals, read from etcd's
// etcd_debugging_lease_renewed_total metric on each endpoint's /metrics.
func Converge(ctx context.Context, o ConvergeOptions) (ConvergeResult, error) {
	if o.Shards <= 0 {
		o.Shards = 100_000
	}
	if o.Keepers <= 0 {
		o.Keepers = 20
	}
	if o.SteadyWindow <= 0 {
		o.SteadyWindow = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	endpoints := o.Endpoints
	prefix := "/keeper-bench/"
	if len(endpoints) == 0 {
		srv, err := etcdserver.Start(ctx, etcdserver.Config{Name: "bench"})
		if err != nil {
			return ConvergeResult{}, fmt.Errorf("converge: %w", err)
		}
		defer func() { _ = srv.Stop() }()
		endpoints = srv.Endpoints()
	} else {
		prefix = "/keeper-bench-" + memberid.New() + "/"
	}
	newClient := func() (*clientv3.Client, error) {
		cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second,
			DialOptions: shard.DialOptions(), Logger: zap.NewNop()})
		if err != nil {
			return nil, fmt.Errorf("etcd client: %w", err)
		}
		return cli, nil
	}
	admin, err := newClient()
	if err != nil {
		return ConvergeResult{}, err
	}
	defer admin.Close()
	if len(o.Endpoints) > 0 {
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_, _ = admin.Delete(dctx, prefix, clientv3.WithPrefix())
		}()
	}

	catalog := make([]queue.Shard, o.Shards)
	counter := &ownerCounter{index: make(map[queue.Shard]int, o.Shards), counts: make([]atomic.Int32, o.Shards)}
	for i := range catalog {
		catalog[i] = queue.Shard{Queue: fmt.Sprintf("q%05d", i/4), Partition: i % 4}
		counter.index[catalog[i]] = i
	}

	coords := make([]*shard.Coordinator, o.Keepers)
	clients := make([]*clientv3.Client, o.Keepers)
	defer func() {
		var wg sync.WaitGroup
		for i := range coords {
			if coords[i] == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				defer cancel()
				_ = coords[i].Stop(sctx)
			}()
		}
		wg.Wait()
		for _, cli := range clients {
			if cli != nil {
				_ = cli.Close()
			}
		}
	}()
	for i := range coords {
		if clients[i], err = newClient(); err != nil {
			return ConvergeResult{}, err
		}
		coords[i] = shard.NewCoordinator(clients[i], shard.Config{
			Prefix:     prefix,
			MemberID:   fmt.Sprintf("keeper-%d", i),
			SessionTTL: o.TTL,
			Ring:       o.Ring,
			Logger:     o.Logger,
		}, &countingListener{c: counter, owned: map[int]struct{}{}})
		coords[i].SetShards(catalog)
	}

	start := time.Now()
	pr := progress.From(ctx)
	pr.Phase("converge: shards with one owner", int64(o.Shards), "shards")
	errs := make([]error, o.Keepers)
	var wg sync.WaitGroup
	for i := range coords {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			errs[i] = coords[i].Start(sctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return ConvergeResult{}, fmt.Errorf("start keepers: %w", err)
	}

	// Converged: every shard has one owner, continuously since streakStart,
	// and etcd confirms all units held where the ring says.
	var streakStart time.Time
	var lastStatus time.Time
	var converged time.Duration
	for converged == 0 {
		if err := ctx.Err(); err != nil {
			return ConvergeResult{}, fmt.Errorf("converge: %w", err)
		}
		if time.Since(start) > 5*time.Minute {
			return ConvergeResult{}, fmt.Errorf("converge: %d of %d shards with exactly one owner after 5 minutes", counter.good.Load(), o.Shards)
		}
		now := time.Now()
		pr.Set(counter.good.Load())
		if counter.good.Load() != int64(o.Shards) {
			streakStart = time.Time{}
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if streakStart.IsZero() {
			streakStart = now
		}
		if now.Sub(lastStatus) < 200*time.Millisecond {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		lastStatus = now
		st, err := coords[0].Status(ctx)
		if err != nil {
			continue
		}
		if len(st.UnownedUnits) == 0 && st.Misplaced == 0 && len(st.Members) == o.Keepers &&
			counter.good.Load() == int64(o.Shards) && !streakStart.IsZero() {
			converged = streakStart.Sub(start)
		}
	}

	res := ConvergeResult{Scenario: "converge", Shards: o.Shards, Keepers: o.Keepers,
		ConvergeS: roundTo(converged.Seconds(), 3)}
	keys, err := admin.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return ConvergeResult{}, fmt.Errorf("count keys: %w", err)
	}
	res.EtcdKeys = int(keys.Count)
	st, err := coords[0].Status(ctx)
	if err != nil {
		return ConvergeResult{}, fmt.Errorf("status: %w", err)
	}
	res.Units = st.Ring.Units
	used := map[int]bool{}
	for _, sh := range catalog {
		used[shard.UnitOf(sh, st.Ring.Units)] = true
	}
	res.UnitsUsed = len(used)

	rev0 := keys.Header.Revision
	ren0, err := leaseRenewals(ctx, endpoints)
	if err != nil {
		return ConvergeResult{}, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return ConvergeResult{}, fmt.Errorf("converge: %w", ctx.Err())
	case <-time.After(o.SteadyWindow):
	}
	r1, err := admin.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return ConvergeResult{}, fmt.Errorf("revision: %w", err)
	}
	ren1, err := leaseRenewals(ctx, endpoints)
	if err != nil {
		return ConvergeResult{}, err
	}
	window := time.Since(t0).Seconds()
	res.RevisionsPerSSteady = roundTo(float64(r1.Header.Revision-rev0)/window, 2)
	res.KeepalivesPerSSteady = roundTo((ren1-ren0)/window, 2)
	res.EtcdWritesPerSSteady = roundTo(float64(r1.Header.Revision-rev0)/window+(ren1-ren0)/window, 2)
	if counter.good.Load() != int64(o.Shards) {
		return res, fmt.Errorf("converge: ownership changed during the steady window (%d of %d shards with one owner)", counter.good.Load(), o.Shards)
	}
	return res, nil
}

// leaseRenewals sums etcd_debugging_lease_renewed_total over the endpoints
// (only the leader counts renewals).
func leaseRenewals(ctx context.Context, endpoints []string) (float64, error) {
	var total float64
	for _, ep := range endpoints {
		if !strings.Contains(ep, "://") {
			ep = "http://" + ep
		}
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		req, err := http.NewRequestWithContext(rctx, http.MethodGet, strings.TrimRight(ep, "/")+"/metrics", nil)
		if err != nil {
			cancel()
			return 0, fmt.Errorf("metrics request: %w", err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			cancel()
			return 0, fmt.Errorf("etcd metrics from %s: %w", ep, err)
		}
		v, found, err := metricValue(resp.Body, "etcd_debugging_lease_renewed_total")
		resp.Body.Close()
		cancel()
		if err != nil {
			return 0, fmt.Errorf("etcd metrics from %s: %w", ep, err)
		}
		if !found {
			return 0, fmt.Errorf("etcd metrics from %s: no etcd_debugging_lease_renewed_total", ep)
		}
		total += v
	}
	return total, nil
}

func metricValue(r io.Reader, name string) (float64, bool, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil, err
		}
	}
	return 0, false, sc.Err()
}

// ownerCounter counts owners per shard across all keepers, and how many
// shards have exactly one.
type ownerCounter struct {
	index  map[queue.Shard]int // read-only after setup
	counts []atomic.Int32
	good   atomic.Int64
}

func (c *ownerCounter) inc(i int) {
	switch c.counts[i].Add(1) {
	case 1:
		c.good.Add(1)
	case 2:
		c.good.Add(-1)
	}
}

func (c *ownerCounter) dec(i int) {
	switch c.counts[i].Add(-1) {
	case 0:
		c.good.Add(-1)
	case 1:
		c.good.Add(1)
	}
}

// countingListener is one keeper's listener: it only counts.
type countingListener struct {
	c     *ownerCounter
	mu    sync.Mutex
	owned map[int]struct{}
}

func (l *countingListener) Own(shards []queue.Shard, _ int64) {
	for _, sh := range shards {
		i, ok := l.c.index[sh]
		if !ok {
			continue
		}
		l.mu.Lock()
		_, had := l.owned[i]
		l.owned[i] = struct{}{}
		l.mu.Unlock()
		if !had {
			l.c.inc(i)
		}
	}
}

func (l *countingListener) Disown(shards []queue.Shard) {
	for _, sh := range shards {
		i, ok := l.c.index[sh]
		if !ok {
			continue
		}
		l.mu.Lock()
		_, had := l.owned[i]
		delete(l.owned, i)
		l.mu.Unlock()
		if had {
			l.c.dec(i)
		}
	}
}

func (l *countingListener) DisownAll() {
	l.mu.Lock()
	owned := l.owned
	l.owned = map[int]struct{}{}
	l.mu.Unlock()
	for i := range owned {
		l.c.dec(i)
	}
}
