package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// WorkloadConfig shapes the producer/consumer load. Zero values take the
// defaults noted.
type WorkloadConfig struct {
	Queues    []string
	Producers int           // default 2
	Consumers int           // default 2
	Rate      int           // enqueues per second over all producers; default 500
	Lease     time.Duration // default 200ms
	// Of the messages a consumer pulls: NackFrac are nacked with a lock of
	// up to MaxLock, AbandonFrac are left to their lease running out (a
	// crashed consumer), the rest are acked. Defaults 0.15, 0.10, 100ms.
	NackFrac, AbandonFrac float64
	MaxLock               time.Duration
}

// Workload is a running load; it remembers every id it enqueued and acked
// so the checker can account for each message.
type Workload struct {
	cfg    WorkloadConfig
	client *queue.Client
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	accepted map[string]string // id -> queue
	acked    map[string]bool
	errs     []error

	Enqueued, Acked, Nacked, Abandoned, Stale, Pulled atomic.Int64
}

// StartWorkload begins producing and consuming until Stop.
func StartWorkload(ctx context.Context, rdb redis.UniversalClient, cfg WorkloadConfig) *Workload {
	if cfg.Producers <= 0 {
		cfg.Producers = 2
	}
	if cfg.Consumers <= 0 {
		cfg.Consumers = 2
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 500
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 200 * time.Millisecond
	}
	if cfg.NackFrac == 0 && cfg.AbandonFrac == 0 {
		cfg.NackFrac, cfg.AbandonFrac = 0.15, 0.10
	}
	if cfg.MaxLock <= 0 {
		cfg.MaxLock = 100 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(ctx)
	w := &Workload{cfg: cfg, client: queue.NewClient(rdb, queue.ClientOptions{}), cancel: cancel,
		accepted: map[string]string{}, acked: map[string]bool{}}
	for i := 0; i < cfg.Producers; i++ {
		w.wg.Add(1)
		go w.produce(ctx, i)
	}
	for i := 0; i < cfg.Consumers; i++ {
		w.wg.Add(1)
		go w.consume(ctx, i)
	}
	return w
}

// Stop ends the load and waits for it.
func (w *Workload) Stop() {
	w.cancel()
	w.wg.Wait()
}

func (w *Workload) fail(err error) {
	w.mu.Lock()
	if len(w.errs) < 20 {
		w.errs = append(w.errs, err)
	}
	w.mu.Unlock()
}

// Errors are the unexpected errors the load met (Redis down is expected
// during some faults and not counted here; see the caller's faults).
func (w *Workload) Errors() []error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]error(nil), w.errs...)
}

func (w *Workload) produce(ctx context.Context, n int) {
	defer w.wg.Done()
	every := time.Duration(float64(time.Second) * float64(w.cfg.Producers) / float64(w.cfg.Rate))
	t := time.NewTicker(every)
	defer t.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		q := w.cfg.Queues[rand.IntN(len(w.cfg.Queues))]
		id := fmt.Sprintf("p%d-%d", n, seq)
		res, err := w.client.Enqueue(ctx, q, queue.Message{ID: id, Payload: []byte(id)})
		if err != nil {
			if ctx.Err() == nil {
				w.fail(fmt.Errorf("enqueue %s: %w", id, err))
			}
			continue
		}
		if !res.Duplicate {
			w.mu.Lock()
			w.accepted[id] = q
			w.mu.Unlock()
			w.Enqueued.Add(1)
		}
	}
}

func (w *Workload) consume(ctx context.Context, n int) {
	defer w.wg.Done()
	for ctx.Err() == nil {
		q := w.cfg.Queues[rand.IntN(len(w.cfg.Queues))]
		ds, err := w.client.Pull(ctx, q, 10, w.cfg.Lease)
		if err != nil && !errors.Is(err, queue.ErrCapped) {
			if ctx.Err() == nil {
				w.fail(fmt.Errorf("pull %s: %w", q, err))
			}
			continue
		}
		if len(ds) == 0 {
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
			continue
		}
		w.Pulled.Add(int64(len(ds)))
		for _, d := range ds {
			var err error
			switch r := rand.Float64(); {
			case r < w.cfg.AbandonFrac:
				w.Abandoned.Add(1)
				continue
			case r < w.cfg.AbandonFrac+w.cfg.NackFrac:
				lock := time.Duration(rand.Int64N(int64(w.cfg.MaxLock)))
				if _, err = w.client.Nack(ctx, d, queue.NackOptions{LockFor: lock}); err == nil {
					w.Nacked.Add(1)
				}
			default:
				if err = w.client.Ack(ctx, d); err == nil {
					w.mu.Lock()
					w.acked[d.ID] = true
					w.mu.Unlock()
					w.Acked.Add(1)
				}
			}
			switch {
			case errors.Is(err, queue.ErrStale):
				// The lease ran out while we held it: expected under load.
				w.Stale.Add(1)
			case err != nil && ctx.Err() == nil:
				w.fail(fmt.Errorf("consumer %d: %w", n, err))
			}
		}
	}
}

// Accounting is the workload's view of what must be in the queues.
func (w *Workload) accounting() (accepted map[string]string, acked map[string]bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	accepted = make(map[string]string, len(w.accepted))
	for k, v := range w.accepted {
		accepted[k] = v
	}
	acked = make(map[string]bool, len(w.acked))
	for k := range w.acked {
		acked[k] = true
	}
	return accepted, acked
}
