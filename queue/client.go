package queue

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClientOptions configures a Client. Zero values take the defaults noted.
type ClientOptions struct {
	// Prefix of every key; default "keeper". Keepers must use the same one.
	Prefix string
	// ConfigTTL is how long a queue config is cached; default 5s. Config
	// changes (a new in-flight cap, more partitions) reach a client within it.
	ConfigTTL time.Duration
}

// Client is the producer and consumer side of the native layout. It is safe
// for concurrent use.
type Client struct {
	rdb    redis.UniversalClient
	prefix string
	reg    *Registry
	ttl    time.Duration

	mu    sync.Mutex
	cache map[string]cachedConfig
	rr    map[string]*atomic.Uint64 // per-queue start partition for fair pulls
	// deleting holds, per queue, the config generation that one of its
	// shards refused as deleted: until the registry holds a newer one, the
	// queue is being deleted (see config).
	deleting map[string]int64
}

type cachedConfig struct {
	st stored
	at time.Time
}

// NewClient returns a client over rdb (a single node, a failover client or a
// cluster client).
func NewClient(rdb redis.UniversalClient, opt ClientOptions) *Client {
	opt.Prefix = cmp.Or(opt.Prefix, DefaultPrefix)
	if opt.ConfigTTL <= 0 {
		opt.ConfigTTL = 5 * time.Second
	}
	return &Client{
		rdb: rdb, prefix: opt.Prefix, reg: NewRegistry(rdb, opt.Prefix), ttl: opt.ConfigTTL,
		cache: map[string]cachedConfig{}, rr: map[string]*atomic.Uint64{}, deleting: map[string]int64{},
	}
}

// Registry gives access to queue configs.
func (c *Client) Registry() *Registry { return c.reg }

func (c *Client) config(ctx context.Context, queue string) (stored, error) {
	c.mu.Lock()
	e, ok := c.cache[queue]
	c.mu.Unlock()
	if ok && time.Since(e.at) < c.ttl {
		return e.st, nil
	}
	st, err := c.reg.getStored(ctx, c.reg.rdb, queue)
	if err != nil {
		return stored{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// A delete tombstones the shards before it removes the config, and on
	// a cluster the shards one after another: the config still listed may
	// be one a shard already refused, and another shard of it not reached
	// yet must not be written.
	if g, ok := c.deleting[queue]; ok {
		if st.Generation <= g {
			return stored{}, fmt.Errorf("%w: %s is being deleted", ErrUnknownQueue, queue)
		}
		delete(c.deleting, queue)
	}
	c.cache[queue] = cachedConfig{st: st, at: time.Now()}
	return st, nil
}

func (c *Client) forget(queue string) {
	c.mu.Lock()
	delete(c.cache, queue)
	c.mu.Unlock()
}

// scriptError maps a script's error; a deleted queue's config is dropped
// from the cache, so that a queue created again is read afresh.
func (c *Client) scriptError(err error, s Shard) error {
	err = asError(err, s, 0)
	if errors.Is(err, ErrUnknownQueue) {
		c.forget(s.Queue)
	}
	return err
}

// maxConfigReloads bounds how often one call reads a config again because
// a shard refused it as stale: the waits between add up to about a second,
// time for a config update in flight to publish.
const maxConfigReloads = 8

// withConfig runs fn with queue's config, and again with a fresh one when
// a shard refuses it as older than the one the shard was set to (a config
// update, a partition growth included, was published since it was read).
func (c *Client) withConfig(ctx context.Context, queue string, fn func(st stored) error) error {
	for attempt := 0; ; attempt++ {
		st, err := c.config(ctx, queue)
		if err != nil {
			return err
		}
		err = fn(st)
		if errors.Is(err, ErrUnknownQueue) {
			// One of st's shards holds a tombstone: st is being deleted.
			c.mu.Lock()
			c.deleting[queue] = max(c.deleting[queue], st.Generation)
			c.mu.Unlock()
		}
		var se *staleConfigError
		if !errors.As(err, &se) {
			return err
		}
		c.forget(queue)
		if attempt == maxConfigReloads {
			return fmt.Errorf("queue %s: %w (the published config is at generation %d): a config update did not finish; run `keeper queue update %s` again",
				queue, err, st.Generation, queue)
		}
		if attempt > 0 {
			// Still refused after a reload: an update is between setting
			// the shards and publishing.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(min(20*time.Millisecond<<(attempt-1), 200*time.Millisecond)):
			}
		}
	}
}

// Message is what a producer enqueues.
type Message struct {
	// ID de-duplicates: while a message with this id is in the queue, another
	// enqueue of it changes nothing. Empty: a random id.
	ID      string
	Payload []byte
	// Priority is the score to serve the message at: lower first. Nil means
	// the enqueue time in ms, which makes the queue FIFO.
	Priority *int64
	// Delay keeps the message locked (invisible) this long first.
	Delay time.Duration
	// TTL overrides the queue's TTL for this message when positive: 1ms to
	// a year, counted in whole milliseconds (rounded down). A TTL under 1ms
	// is refused (ErrBadMessage): it cannot be told from "none".
	TTL time.Duration
}

// EnqueueResult tells where a message went.
type EnqueueResult struct {
	ID    string
	Shard Shard
	// Duplicate: a message with this id was already in the queue; nothing
	// changed.
	Duplicate bool
	// EnqueuedAt is by Redis's clock (of the existing message for a
	// duplicate).
	EnqueuedAt time.Time
}

// Enqueue adds a message to queue, unless a message with its id is in the
// queue (Duplicate). The partition is chosen by the id; for a queue whose
// partitions grew, the id's homes under the earlier counts are searched
// first, so the id is never in two partitions at once.
func (c *Client) Enqueue(ctx context.Context, queue string, m Message) (EnqueueResult, error) {
	if m.ID == "" {
		m.ID = newID()
	}
	if err := ValidateID(m.ID); err != nil {
		return EnqueueResult{}, err
	}
	if m.Delay < 0 || m.TTL < 0 {
		return EnqueueResult{}, fmt.Errorf("%w: negative delay or ttl", ErrBadMessage)
	}
	// Deadlines count whole milliseconds; a TTL under one would become 0,
	// which means "never expires": refused rather than silently inverted.
	if m.TTL != 0 && (m.TTL < time.Millisecond || m.TTL > maxTTL) {
		return EnqueueResult{}, fmt.Errorf("%w: ttl %s not in %s..%s", ErrBadMessage, m.TTL, time.Millisecond, maxTTL)
	}
	prio := ""
	if m.Priority != nil {
		prio = strconv.FormatInt(*m.Priority, 10)
	}
	var res EnqueueResult
	err := c.withConfig(ctx, queue, func(st stored) error {
		if len(m.Payload) > st.MaxPayloadBytes {
			return fmt.Errorf("%w: %d bytes, queue %s allows %d", ErrTooBig, len(m.Payload), queue, st.MaxPayloadBytes)
		}
		home := PartitionOf(m.ID, st.Partitions)
		found, err := c.findEarlier(ctx, queue, st, m.ID, home)
		if err != nil || found.Duplicate {
			res = found
			return err
		}
		res, err = c.enqueueShard(ctx, Shard{Queue: queue, Partition: home}, st, m, prio)
		return err
	})
	if err != nil {
		return EnqueueResult{}, fmt.Errorf("enqueue to %s: %w", queue, err)
	}
	return res, nil
}

// findEarlier looks for id in its homes under the queue's earlier
// partition counts other than home, in one pipeline. No client with the
// current config writes there, and older ones are refused, so the id
// cannot be added there between this check and the enqueue.
func (c *Client) findEarlier(ctx context.Context, queue string, st stored, id string, home int) (EnqueueResult, error) {
	var homes []Shard
	for _, n := range st.GrownFrom {
		s := Shard{Queue: queue, Partition: PartitionOf(id, n)}
		if s.Partition != home && !slices.Contains(homes, s) {
			homes = append(homes, s)
		}
	}
	if len(homes) == 0 {
		return EnqueueResult{}, nil
	}
	calls := make([]call, len(homes))
	for i, s := range homes {
		calls[i] = holdsScript.on(keysFor(c.prefix, s), id, st.Generation)
	}
	for i, cmd := range runAll(ctx, c.rdb, calls) {
		enq, err := cmd.Int64()
		if err != nil {
			return EnqueueResult{}, c.scriptError(err, homes[i])
		}
		if enq >= 0 {
			return EnqueueResult{ID: id, Shard: homes[i], Duplicate: true, EnqueuedAt: time.UnixMilli(enq)}, nil
		}
	}
	return EnqueueResult{}, nil
}

// enqueueShard runs the enqueue script on s with m, whose payload the
// script checks again.
func (c *Client) enqueueShard(ctx context.Context, s Shard, st stored, m Message, prio string) (EnqueueResult, error) {
	ttl := st.TTL.D()
	if m.TTL > 0 {
		ttl = m.TTL
	}
	k := keysFor(c.prefix, s)
	res, err := decodeEnqueue(enqueueScript.on(k, m.ID, m.Payload, prio, ms(m.Delay), ms(ttl), st.MaxPayloadBytes,
		st.MaxSize, k.Wake, s.String(), st.Generation).run(ctx, c.rdb))
	if err != nil {
		return EnqueueResult{}, c.scriptError(err, s)
	}
	return EnqueueResult{ID: m.ID, Shard: s, Duplicate: !res.Added, EnqueuedAt: time.UnixMilli(res.EnqueuedMs)}, nil
}

// Delivery is one leased message. Ack, Nack and Extend need it back: its
// token proves the lease is still this consumer's.
type Delivery struct {
	Shard      Shard
	ID         string
	Token      string
	Deliveries int
	Payload    []byte
	// LeaseDeadline is by Redis's clock.
	LeaseDeadline time.Time
}

// MaxPull bounds the messages one Pull returns.
const MaxPull = 1000

// ErrCapped is returned by Pull, with whatever it got, when the queue's
// in-flight cap stopped it.
var ErrCapped = fmt.Errorf("queue at its max in-flight")

// Pull leases up to n messages for lease (0: the queue's default). It starts
// at a different partition each call and moves on while it needs more, so
// consumers drain all partitions evenly. When the in-flight cap held it back
// and nothing was leased, the error is ErrCapped.
func (c *Client) Pull(ctx context.Context, queue string, n int, lease time.Duration) ([]Delivery, error) {
	if n <= 0 || n > MaxPull {
		return nil, fmt.Errorf("%w: pull count %d not in 1..%d", ErrBadMessage, n, MaxPull)
	}
	var out []Delivery
	capped := false
	maxInFlight := 0
	err := c.withConfig(ctx, queue, func(st stored) error {
		maxInFlight = st.MaxInFlight
		l := lease
		if l == 0 {
			l = st.Lease.D()
		}
		if l < time.Millisecond || l > MaxLease {
			return fmt.Errorf("%w: lease %s not in 1ms..%s", ErrBadMessage, l, MaxLease)
		}
		start := int(c.nextStart(queue) % uint64(st.Partitions))
		for i := 0; i < st.Partitions && len(out) < n; i++ {
			s := Shard{Queue: queue, Partition: (start + i) % st.Partitions}
			got, wasCapped, err := c.pullShard(ctx, s, st, n-len(out), l)
			if err != nil {
				return err
			}
			capped = capped || wasCapped
			out = append(out, got...)
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("pull from %s: %w", queue, err)
	}
	if len(out) == 0 && capped {
		return nil, fmt.Errorf("%w: %s (max_inflight %d)", ErrCapped, queue, maxInFlight)
	}
	return out, nil
}

func (c *Client) nextStart(queue string) uint64 {
	c.mu.Lock()
	ctr, ok := c.rr[queue]
	if !ok {
		ctr = new(atomic.Uint64)
		c.rr[queue] = ctr
	}
	c.mu.Unlock()
	return ctr.Add(1) - 1
}

func (c *Client) pullShard(ctx context.Context, s Shard, st stored, n int, lease time.Duration) ([]Delivery, bool, error) {
	k := keysFor(c.prefix, s)
	res, err := decodePull(pullScript.on(k, n, ms(lease), st.InFlightShare(s.Partition), k.Wake, s.String(),
		st.Generation).run(ctx, c.rdb))
	if err != nil {
		return nil, false, c.scriptError(err, s)
	}
	deadline := time.UnixMilli(res.DeadlineMs)
	out := make([]Delivery, len(res.Messages))
	for i, m := range res.Messages {
		out[i] = Delivery{Shard: s, ID: m.ID, Token: strconv.FormatInt(m.Token, 10), Deliveries: m.Deliveries,
			Payload: []byte(m.Body), LeaseDeadline: deadline}
	}
	return out, res.Capped, nil
}

// Ack removes a finished message. ErrStale: the lease was already recovered
// (the message may be with another consumer) and nothing changed.
func (c *Client) Ack(ctx context.Context, d Delivery) error {
	k := keysFor(c.prefix, d.Shard)
	err := ackScript.on(k, d.ID, d.Token, k.Wake, d.Shard.String()).run(ctx, c.rdb).Err()
	if err != nil {
		return fmt.Errorf("ack %s: %w", d.ID, c.scriptError(err, d.Shard))
	}
	return nil
}

// NackOptions says how a message goes back.
type NackOptions struct {
	// LockFor keeps the message invisible this long; 0 makes it ready now.
	LockFor time.Duration
	// Priority, when set, is the score it is served at from now on.
	Priority *int64
}

// State is where a message is.
type State string

// The states of a message.
const (
	StateReady    State = "ready"
	StateInflight State = "inflight"
	StateLocked   State = "locked"
	StateDead     State = "dead"
	StateExpired  State = "expired"
)

// Nack gives a message back. It goes to dead instead when it has been
// delivered max_deliveries times, and is dropped if its TTL passed.
func (c *Client) Nack(ctx context.Context, d Delivery, opt NackOptions) (State, error) {
	cfg, err := c.config(ctx, d.Shard.Queue)
	if err != nil {
		return "", err
	}
	if opt.LockFor < 0 {
		return "", fmt.Errorf("%w: negative lock duration", ErrBadMessage)
	}
	prio := ""
	if opt.Priority != nil {
		prio = strconv.FormatInt(*opt.Priority, 10)
	}
	k := keysFor(c.prefix, d.Shard)
	st, err := decodeNack(nackScript.on(k, d.ID, d.Token, ms(opt.LockFor), prio, cfg.MaxDeliveries, k.Wake,
		d.Shard.String()).run(ctx, c.rdb))
	if err != nil {
		return "", fmt.Errorf("nack %s: %w", d.ID, c.scriptError(err, d.Shard))
	}
	return st, nil
}

// Extend moves the lease deadline to now+lease, by Redis's clock.
func (c *Client) Extend(ctx context.Context, d Delivery, lease time.Duration) (time.Time, error) {
	if lease < time.Millisecond || lease > MaxLease {
		return time.Time{}, fmt.Errorf("%w: lease %s not in 1ms..%s", ErrBadMessage, lease, MaxLease)
	}
	k := keysFor(c.prefix, d.Shard)
	due, err := extendScript.on(k, d.ID, d.Token, ms(lease), k.Wake, d.Shard.String()).run(ctx, c.rdb).Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("extend %s: %w", d.ID, c.scriptError(err, d.Shard))
	}
	return time.UnixMilli(due), nil
}

// PartitionOf maps a message id to its partition.
func PartitionOf(id string, partitions int) int {
	if partitions <= 1 {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % uint32(partitions))
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func ms(d time.Duration) int64 { return d.Milliseconds() }
