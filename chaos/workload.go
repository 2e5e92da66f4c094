// The chaos workload: producers, consumers that ack, nack with locks and let
// leases lapse, bursts, and the probe messages that measure unlock lag. It
// is one file (about 620 lines) because every part records into the same
// per-message ledger that the checker reads at the end.

package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	Lease     time.Duration // of every pull; default 200ms
	// Of the messages a consumer pulls: NackFrac are nacked with a lock of
	// up to MaxLock (a tenth of them without a lock), AbandonFrac are left
	// to their lease running out (a crashed consumer), ExtendFrac have their
	// lease extended before the ack, the rest are acked. Defaults 0.15,
	// 0.10, 0.02, 100ms.
	NackFrac, AbandonFrac, ExtendFrac float64
	MaxLock                           time.Duration
	// Of the messages produced, DelayFrac are enqueued locked for up to a
	// second and TTLFrac with a TTL of their own (0.5-15s); default none.
	DelayFrac, TTLFrac float64
	// BurstEvery is the mean time between bursts: thousands of messages in
	// one shard that fall due in the same millisecond (locked, or expiring),
	// a capped queue overfilled, or a thousand leases left to lapse at once,
	// so that passes run at full batch; 0: no bursts. BurstMax bounds a
	// burst; default 12,000 (above the largest batch the config accepts).
	BurstEvery time.Duration
	BurstMax   int
	// ProbeQueue, when set, is a queue of its own where probe messages fall
	// due every 100ms and a dedicated consumer measures how late each
	// becomes ready (unlock lag as a consumer sees it).
	ProbeQueue string
	// Seed drives the workload's choices; default random.
	Seed uint64
}

// outcome is what a client knows about one write.
type outcome uint8

const (
	notTried  outcome = iota
	succeeded         // Redis replied that it was applied
	uncertain         // no reply: it may or may not have been applied
)

// msgRec is the workload's knowledge of one message id.
type msgRec struct {
	queue    int32
	enq      outcome
	enqAt    int64   // unix ms when the enqueue's reply came
	enqStart int64   // unix ms when it was sent
	ttl      int64   // ms; its TTL (own or the queue's), 0 none
	acks     []int64 // unix ms of each ack Redis confirmed
	ackErr   bool    // an ack got no reply
	// trail is what the clients did to it and what Redis answered, the
	// first maxTrail events, so a message the checker finds lost comes
	// with its story (a lost message once showed in CI with nothing to go
	// on but its id).
	trail []string
}

// maxTrail bounds a message's trail: a message is pulled a handful of
// times at most unless it keeps being abandoned.
const maxTrail = 16

// LagSample is one probe message, seen by the probe consumer.
type LagSample struct {
	At    float64 `json:"at_s"` // since the workload started
	LagMs float64 `json:"lag_ms"`
	Shard string  `json:"shard"`
}

// Workload is a running load; it remembers what it did to every id so the
// checker can account for each message.
type Workload struct {
	cfg     WorkloadConfig
	rdb     *redis.Client
	client  *queue.Client
	names   []string // cfg.Queues, then the probe queue if any
	configs []queue.Config
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	start   time.Time
	bursts  []string // what each burst was

	mu        sync.Mutex
	msgs      map[string]*msgRec
	errs      []string // unexpected errors (the first 20)
	nErrs     int
	transient int // errors while Redis was unreachable: expected under faults
	dlvExcess []string
	maxExcess int
	lags      []LagSample

	Enqueued, Acked, Nacked, Abandoned, Extended, Stale, Pulled atomic.Int64
}

// StartWorkload begins producing and consuming on the queues at addr until
// Stop. Its clients never retry a command by themselves: a write without a
// reply is recorded as uncertain, never sent twice.
func StartWorkload(ctx context.Context, addr string, cfg WorkloadConfig) (*Workload, error) {
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
	if cfg.NackFrac == 0 && cfg.AbandonFrac == 0 && cfg.ExtendFrac == 0 {
		cfg.NackFrac, cfg.AbandonFrac, cfg.ExtendFrac = 0.15, 0.10, 0.02
	}
	if cfg.MaxLock <= 0 {
		cfg.MaxLock = 100 * time.Millisecond
	}
	if cfg.BurstMax <= 0 {
		cfg.BurstMax = 12000
	}
	if cfg.Seed == 0 {
		cfg.Seed = rand.Uint64()
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 4 * (cfg.Producers + cfg.Consumers + 3),
		MaxRetries: -1, DialTimeout: 2 * time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second})
	w := &Workload{cfg: cfg, rdb: rdb, client: queue.NewClient(rdb, queue.ClientOptions{}),
		msgs: map[string]*msgRec{}, start: time.Now()}
	w.names = append([]string(nil), cfg.Queues...)
	if cfg.ProbeQueue != "" {
		w.names = append(w.names, cfg.ProbeQueue)
	}
	for _, q := range w.names {
		qc, err := w.client.Registry().Get(ctx, q)
		if err != nil {
			rdb.Close()
			return nil, err
		}
		w.configs = append(w.configs, qc)
	}
	ctx, w.cancel = context.WithCancel(ctx)
	rng := rand.New(rand.NewPCG(cfg.Seed, 2))
	for i := 0; i < cfg.Producers; i++ {
		w.wg.Add(1)
		go w.produce(ctx, i, rand.New(rand.NewPCG(rng.Uint64(), uint64(i))))
	}
	for i := 0; i < cfg.Consumers; i++ {
		w.wg.Add(1)
		go w.consume(ctx, i, rand.New(rand.NewPCG(rng.Uint64(), uint64(i))))
	}
	if cfg.BurstEvery > 0 {
		w.wg.Add(1)
		go w.burst(ctx, rand.New(rand.NewPCG(rng.Uint64(), 3)))
	}
	if cfg.ProbeQueue != "" {
		due := &sync.Map{}
		w.wg.Add(2)
		go w.probeProduce(ctx, due)
		go w.probeConsume(ctx, due)
	}
	return w, nil
}

// Stop ends the load and waits for it.
func (w *Workload) Stop() {
	w.cancel()
	w.wg.Wait()
	_ = w.rdb.Close()
}

// transient reports errors that a client sees while Redis is down,
// restarting or being failed over, or while the workload stops: expected
// under faults, and the write is uncertain. Anything else is reported.
func transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, redis.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	s := err.Error()
	for _, p := range []string{"LOADING", "READONLY", "MASTERDOWN", "connection reset", "broken pipe",
		"connection refused", "i/o timeout", "use of closed network connection", "pool timeout", "EOF"} {
		if strings.Contains(s, p) {
			return true
		}
	}
	return false
}

func (w *Workload) fail(ctx context.Context, what string, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ctx.Err() != nil || transient(err) {
		w.transient++
		return
	}
	w.nErrs++
	if len(w.errs) < 20 {
		w.errs = append(w.errs, fmt.Sprintf("%s: %v", what, err))
	}
}

// Errors are the unexpected errors the load met (not counting those of a
// Redis that was down or failing over), and how many there were.
func (w *Workload) Errors() ([]string, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.errs...), w.nErrs
}

// TransientErrors counts the errors of an unreachable Redis.
func (w *Workload) TransientErrors() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.transient
}

// Lags are the probe's samples, oldest first.
func (w *Workload) Lags() []LagSample {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]LagSample(nil), w.lags...)
}

// Bursts says what each burst was and when.
func (w *Workload) Bursts() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.bursts...)
}

func (w *Workload) noteBurst(format string, args ...any) {
	w.mu.Lock()
	w.bursts = append(w.bursts, fmt.Sprintf("%.1fs ", time.Since(w.start).Seconds())+fmt.Sprintf(format, args...))
	w.mu.Unlock()
}

// note adds an event to id's trail, timed from the workload's start.
func (w *Workload) note(id string, format string, args ...any) {
	at := time.Since(w.start).Seconds()
	w.mu.Lock()
	defer w.mu.Unlock()
	if r := w.msgs[id]; r != nil && len(r.trail) < maxTrail {
		r.trail = append(r.trail, fmt.Sprintf("%.3fs ", at)+fmt.Sprintf(format, args...))
	}
}

// noteDelivery records a pull of d by who.
func (w *Workload) noteDelivery(who string, d queue.Delivery, lease time.Duration) {
	w.note(d.ID, "pulled by %s from %s: token %s, delivery %d, lease %s to %s",
		who, d.Shard, d.Token, d.Deliveries, lease, d.LeaseDeadline.Format("15:04:05.000"))
}

func (w *Workload) enqueue(ctx context.Context, qi int, m queue.Message) (queue.EnqueueResult, bool) {
	ttl := m.TTL
	if ttl == 0 {
		ttl = w.configs[qi].TTL.D()
	}
	// Recorded before it is sent: an id found in Redis was always tried.
	w.mu.Lock()
	r := &msgRec{queue: int32(qi), ttl: ttl.Milliseconds(), enq: uncertain, enqStart: time.Now().UnixMilli()}
	w.msgs[m.ID] = r
	w.mu.Unlock()
	w.note(m.ID, "enqueue to %s sent (delay %s, ttl %s, priority set %t)", w.names[qi], m.Delay, ttl, m.Priority != nil)
	res, err := w.client.Enqueue(ctx, w.names[qi], m)
	if err != nil {
		w.note(m.ID, "enqueue failed: %v", err)
		w.fail(ctx, "enqueue "+m.ID, err)
		// Redis is down or failing over: do not pile up uncertain writes.
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
		return res, false
	}
	if res.Duplicate {
		w.fail(ctx, "enqueue", fmt.Errorf("a fresh id %s was reported as a duplicate", m.ID))
		return res, false
	}
	w.mu.Lock()
	r.enq, r.enqAt = succeeded, time.Now().UnixMilli()
	w.mu.Unlock()
	w.note(m.ID, "enqueued into %s at %s by Redis's clock", res.Shard, res.EnqueuedAt.Format("15:04:05.000"))
	w.Enqueued.Add(1)
	return res, true
}

func (w *Workload) ack(ctx context.Context, d queue.Delivery) {
	err := w.client.Ack(ctx, d)
	now := time.Now().UnixMilli()
	w.note(d.ID, "ack token %s: %v", d.Token, err)
	switch {
	case err == nil:
		w.mu.Lock()
		if r := w.msgs[d.ID]; r != nil {
			r.acks = append(r.acks, now)
		}
		w.mu.Unlock()
		w.Acked.Add(1)
	case errors.Is(err, queue.ErrStale):
		// The lease ran out while we held it: expected under load.
		w.Stale.Add(1)
	default:
		w.mu.Lock()
		if r := w.msgs[d.ID]; r != nil {
			r.ackErr = true
		}
		w.mu.Unlock()
		w.fail(ctx, "ack "+d.ID, err)
	}
}

// delivered checks a delivery against its queue's max_deliveries: beyond
// max_deliveries + 1 the message should have been dead-lettered.
func (w *Workload) delivered(qi int, d queue.Delivery) {
	maxd := w.configs[qi].MaxDeliveries
	if maxd <= 0 {
		return
	}
	if ex := d.Deliveries - maxd; ex > 0 {
		w.mu.Lock()
		w.maxExcess = max(w.maxExcess, ex)
		if ex > 1 && len(w.dlvExcess) < 20 {
			w.dlvExcess = append(w.dlvExcess, fmt.Sprintf("%s delivered %d times, max_deliveries %d", d.ID, d.Deliveries, maxd))
		}
		w.mu.Unlock()
	}
}

func (w *Workload) produce(ctx context.Context, n int, rng *rand.Rand) {
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
		qi := rng.IntN(len(w.cfg.Queues))
		id := fmt.Sprintf("p%d-%d", n, seq)
		m := queue.Message{ID: id, Payload: []byte(id)}
		if rng.Float64() < w.cfg.DelayFrac {
			m.Delay = time.Duration(1+rng.IntN(1000)) * time.Millisecond
		}
		if rng.Float64() < w.cfg.TTLFrac {
			m.TTL = time.Duration(500+rng.IntN(14500)) * time.Millisecond
		}
		if rng.IntN(20) == 0 {
			p := rng.Int64N(1 << 40)
			m.Priority = &p
		}
		w.enqueue(ctx, qi, m)
	}
}

func (w *Workload) consume(ctx context.Context, n int, rng *rand.Rand) {
	defer w.wg.Done()
	for ctx.Err() == nil {
		qi := rng.IntN(len(w.cfg.Queues))
		ds, err := w.client.Pull(ctx, w.cfg.Queues[qi], 10, w.cfg.Lease)
		if err != nil && !errors.Is(err, queue.ErrCapped) {
			w.fail(ctx, fmt.Sprintf("consumer %d: pull %s", n, w.cfg.Queues[qi]), err)
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
			w.delivered(qi, d)
			w.noteDelivery(fmt.Sprintf("consumer %d", n), d, w.cfg.Lease)
			switch r := rng.Float64(); {
			case r < w.cfg.AbandonFrac:
				w.note(d.ID, "abandoned")
				w.Abandoned.Add(1)
			case r < w.cfg.AbandonFrac+w.cfg.NackFrac:
				var lock time.Duration
				if rng.IntN(10) > 0 {
					lock = time.Duration(rng.Int64N(int64(w.cfg.MaxLock)))
				}
				st, err := w.client.Nack(ctx, d, queue.NackOptions{LockFor: lock})
				w.note(d.ID, "nack token %s (lock %s): %s %v", d.Token, lock, st, err)
				switch {
				case err == nil:
					w.Nacked.Add(1)
				case errors.Is(err, queue.ErrStale):
					w.Stale.Add(1)
				default:
					w.fail(ctx, "nack "+d.ID, err)
				}
			case r < w.cfg.AbandonFrac+w.cfg.NackFrac+w.cfg.ExtendFrac:
				_, err := w.client.Extend(ctx, d, w.cfg.Lease)
				w.note(d.ID, "extend token %s: %v", d.Token, err)
				switch {
				case err == nil:
					w.Extended.Add(1)
					w.ack(ctx, d)
				case errors.Is(err, queue.ErrStale):
					w.Stale.Add(1)
				default:
					w.fail(ctx, "extend "+d.ID, err)
				}
			default:
				w.ack(ctx, d)
			}
		}
	}
}

// idsIn returns n fresh ids (prefix-0, prefix-1, ...) that all land in
// partition p of a queue with the given partitions.
func idsIn(prefix string, p, partitions, n int) []string {
	out := make([]string, 0, n)
	for i := 0; len(out) < n; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if queue.PartitionOf(id, partitions) == p {
			out = append(out, id)
		}
	}
	return out
}

func (w *Workload) burst(ctx context.Context, rng *rand.Rand) {
	defer w.wg.Done()
	for b := 0; ; b++ {
		wait := time.Duration(float64(w.cfg.BurstEvery) * (0.5 + rng.Float64()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		// locked: due in one millisecond, one unlock pass moves them all
		// (up to the batch); expire: their TTLs end in one millisecond;
		// trim: locked into a capped queue, so that once unlocked they
		// are over the cap at once and one trim pass drops the excess;
		// requeue: a few thousand leases lapse together.
		kinds := []string{"locked", "locked", "expire", "requeue"}
		var capped []int
		for i, qc := range w.configs[:len(w.cfg.Queues)] {
			if qc.MaxSize > 0 {
				capped = append(capped, i)
			}
		}
		if len(capped) > 0 {
			kinds = append(kinds, "trim", "trim")
		}
		kind := kinds[rng.IntN(len(kinds))]
		qi := rng.IntN(len(w.cfg.Queues))
		if kind == "trim" {
			qi = capped[rng.IntN(len(capped))]
		}
		qc := w.configs[qi]
		n := 2000 + rng.IntN(max(1, w.cfg.BurstMax-2000))
		p := rng.IntN(qc.Partitions)
		ids := idsIn(fmt.Sprintf("b%d", b), p, qc.Partitions, n)
		if kind == "requeue" {
			w.abandonMany(ctx, qi, p, ids, rng)
			continue
		}
		w.noteBurst("%s: %d messages in %s#%d", kind, n, w.names[qi], p)
		// All fall due at one instant, after the last is enqueued.
		due := time.Now().Add(time.Second + time.Duration(n)*300*time.Microsecond)
		for _, id := range ids {
			if ctx.Err() != nil {
				return
			}
			m := queue.Message{ID: id, Payload: []byte(id)}
			left := max(2*time.Millisecond, time.Until(due))
			switch kind {
			case "locked", "trim":
				m.Delay = left
			case "expire":
				m.TTL = left
			}
			w.enqueue(ctx, qi, m)
		}
	}
}

// abandonMany enqueues ids (all in partition p) ready, leases as many as
// it can at once with one short lease, and lets the leases lapse together.
func (w *Workload) abandonMany(ctx context.Context, qi, p int, ids []string, rng *rand.Rand) {
	for _, id := range ids {
		if ctx.Err() != nil {
			return
		}
		w.enqueue(ctx, qi, queue.Message{ID: id, Payload: []byte(id)})
	}
	lease := time.Duration(500+rng.IntN(1000)) * time.Millisecond
	pulled := 0
	defer func() {
		w.noteBurst("requeue: %d messages in %s#%d, %d leased for %s and left to lapse", len(ids), w.names[qi], p, pulled, lease)
	}()
	for i := 0; i < 20 && pulled < len(ids); i++ {
		ds, err := w.client.Pull(ctx, w.cfg.Queues[qi], queue.MaxPull, lease)
		if err != nil && !errors.Is(err, queue.ErrCapped) {
			w.fail(ctx, "burst pull", err)
			return
		}
		if len(ds) == 0 {
			return
		}
		for _, d := range ds {
			w.delivered(qi, d)
			w.noteDelivery("a requeue burst", d, lease)
		}
		pulled += len(ds)
		w.Pulled.Add(int64(len(ds)))
		w.Abandoned.Add(int64(len(ds)))
	}
}

// probeDelay is how long after its enqueue a probe message falls due.
const probeDelay = 300 * time.Millisecond

// probeLease is the probe consumer's lease; it acks at once.
const probeLease = 10 * time.Second

func (w *Workload) probeProduce(ctx context.Context, due *sync.Map) {
	defer w.wg.Done()
	qi := len(w.names) - 1
	partitions := w.configs[qi].Partitions
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// One per partition, so every owner is measured.
		for p := 0; p < partitions; p++ {
			id := idsIn(fmt.Sprintf("lag%d.%d", seq, p), p, partitions, 1)[0]
			if res, ok := w.enqueue(ctx, qi, queue.Message{ID: id, Delay: probeDelay}); ok {
				due.Store(id, res.EnqueuedAt.Add(probeDelay).UnixMilli())
			}
		}
	}
}

func (w *Workload) probeConsume(ctx context.Context, due *sync.Map) {
	defer w.wg.Done()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ds, err := w.client.Pull(ctx, w.cfg.ProbeQueue, 100, probeLease)
		if err != nil {
			w.fail(ctx, "probe pull", err)
		}
		for _, d := range ds {
			if v, ok := due.LoadAndDelete(d.ID); ok {
				pulled := d.LeaseDeadline.Add(-probeLease).UnixMilli()
				w.mu.Lock()
				w.lags = append(w.lags, LagSample{At: time.Since(w.start).Seconds(),
					LagMs: float64(pulled - v.(int64)), Shard: d.Shard.String()})
				w.mu.Unlock()
			}
			w.ack(ctx, d)
		}
	}
}

// snapshot copies what the workload knows, for the checker.
func (w *Workload) snapshot() workloadView {
	w.mu.Lock()
	defer w.mu.Unlock()
	v := workloadView{msgs: make(map[string]msgRec, len(w.msgs)), queues: w.names, configs: w.configs,
		dlvExcess: append([]string(nil), w.dlvExcess...), maxExcess: w.maxExcess}
	for id, r := range w.msgs {
		v.msgs[id] = *r
	}
	return v
}

// workloadView is a copy of what the workload knows.
type workloadView struct {
	msgs      map[string]msgRec
	queues    []string // by msgRec.queue
	configs   []queue.Config
	dlvExcess []string
	maxExcess int
}
