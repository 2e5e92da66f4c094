// Package deckardtest performs a Deckard server's client operations on
// Deckard's own Redis keys, the way Deckard (takenet/deckard, 1.0.0-rc2
// onwards) does them, with the Deckard pod's clock: add, pull with an ack
// deadline, ack and nack with and without a lock and a score, remove, and
// Deckard's Flush and queue discovery. Tests and benchmarks use it to stand
// in for Deckard beside a keeper fleet that housekeeps those keys
// (../../../shared/deckard-layout.md states the layout).
//
// It is written from that description, independently of keeper's deckard
// layout in package queue, so that the two check each other; it imports
// nothing of keeper.
package deckardtest

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultPrefix is Deckard's DECKARD_CACHE_PREFIX default.
const DefaultPrefix = "deckard_v1"

// DefaultAckDeadline is the ack deadline of a pull that gives none.
const DefaultAckDeadline = 300 * time.Second

// MaxScore is the highest score Deckard accepts on add (2^53).
const MaxScore = 9007199254740992

// Prefix is the key prefix Deckard uses for a configured DECKARD_CACHE_PREFIX:
// surrounding spaces trimmed, then surrounding ':'; empty means the default.
func Prefix(configured string) string {
	p := strings.TrimSpace(configured)
	if p == "" {
		return DefaultPrefix
	}
	if p = strings.Trim(p, ":"); p == "" {
		return DefaultPrefix
	}
	return p
}

//go:embed lua/*.lua
var luaFS embed.FS

var (
	addScript    = load("add")
	pullScript   = load("pull")
	backScript   = load("back")
	lockScript   = load("lock")
	removeScript = load("remove")
)

func load(name string) *redis.Script {
	b, err := luaFS.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic(err)
	}
	return redis.NewScript(string(b))
}

// Server is the Redis side of one Deckard server (pod): its key prefix and
// its clock. It is safe for concurrent use.
type Server struct {
	rdb    redis.UniversalClient
	prefix string
	mu     sync.Mutex
	clock  func() time.Time
}

// New returns a Deckard server on rdb with the configured prefix (trimmed as
// Deckard trims it) and the local clock.
func New(rdb redis.UniversalClient, prefix string) *Server {
	return &Server{rdb: rdb, prefix: Prefix(prefix), clock: time.Now}
}

// SetClock sets the pod's clock: every score the server computes (default
// add scores, ack deadlines, unlock times, default ack scores) is read from
// it, never from Redis.
func (s *Server) SetClock(clock func() time.Time) {
	s.mu.Lock()
	s.clock = clock
	s.mu.Unlock()
}

// NowMs is the pod's clock in epoch milliseconds.
func (s *Server) NowMs() int64 {
	s.mu.Lock()
	c := s.clock
	s.mu.Unlock()
	return c().UnixMilli()
}

// Prefix is the server's key prefix.
func (s *Server) Prefix() string { return s.prefix }

// Keys are the six sorted sets of one queue.
type Keys struct {
	Ready, Tmp, LockAck, LockNack, LockAckScore, LockNackScore string
}

// All lists the six keys.
func (k Keys) All() []string {
	return []string{k.Ready, k.Tmp, k.LockAck, k.LockNack, k.LockAckScore, k.LockNackScore}
}

// Keys names the keys of queue.
func (s *Server) Keys(queue string) Keys {
	r := s.prefix + ":queue:{" + queue + "}"
	return Keys{Ready: r, Tmp: r + ":tmp", LockAck: r + ":lock_ack", LockNack: r + ":lock_nack",
		LockAckScore: r + ":lock_ack:score", LockNackScore: r + ":lock_nack:score"}
}

// ErrBadQueue is Deckard's refusal of a queue name with a hash tag brace.
var ErrBadQueue = errors.New("queue names cannot contain '{' or '}'")

func check(queue string) error {
	if queue == "" || strings.ContainsAny(queue, "{}") {
		return fmt.Errorf("%w: %q", ErrBadQueue, queue)
	}
	return nil
}

// Message is one message to add. Score 0 means the add time in ms (Deckard's
// default); a negative score is raised to 0 and one above MaxScore lowered
// to it, as Deckard does.
type Message struct {
	ID    string
	Score float64
}

// addBatch is how many messages Deckard adds per script call.
const addBatch = 2000

// Add puts messages in the ready pool, skipping ids present in any of the
// four pools, and returns the ids added.
func (s *Server) Add(ctx context.Context, queue string, msgs ...Message) ([]string, error) {
	if err := check(queue); err != nil {
		return nil, err
	}
	k := s.Keys(queue)
	var added []string
	for lo := 0; lo < len(msgs); lo += addBatch {
		part := msgs[lo:min(lo+addBatch, len(msgs))]
		args := make([]any, 0, 2*len(part))
		for _, m := range part {
			args = append(args, s.addScore(m.Score), m.ID)
		}
		ids, err := addScript.Run(ctx, s.rdb, []string{k.Ready, k.LockNack, k.LockAck, k.Tmp}, args...).StringSlice()
		if err != nil {
			return added, fmt.Errorf("deckard add to %s: %w", queue, err)
		}
		added = append(added, ids...)
	}
	return added, nil
}

func (s *Server) addScore(score float64) float64 {
	switch {
	case score == 0:
		return float64(s.NowMs())
	case score < 0:
		return 0
	case score > MaxScore:
		return MaxScore
	}
	return score
}

// Pull is a pull request: how long the pulled ids stay in tmp (0 means
// DefaultAckDeadline), and an optional score range.
type Pull struct {
	AckDeadline time.Duration
	Min, Max    *float64
}

// Pull moves the n lowest-scored ready ids (within the range, if any) to
// tmp with the ack deadline now + AckDeadline, and returns them.
func (s *Server) Pull(ctx context.Context, queue string, n int, p Pull) ([]string, error) {
	if err := check(queue); err != nil {
		return nil, err
	}
	ack := p.AckDeadline
	if ack == 0 {
		ack = DefaultAckDeadline
	}
	lo, hi := any("-inf"), any("+inf")
	if p.Min != nil {
		lo = *p.Min
	}
	if p.Max != nil {
		hi = *p.Max
	}
	k := s.Keys(queue)
	ids, err := pullScript.Run(ctx, s.rdb, []string{k.Ready, k.Tmp}, n, s.NowMs()+ack.Milliseconds(), lo, hi).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("deckard pull from %s: %w", queue, err)
	}
	return ids, nil
}

// Reply is an ack or a nack: Lock, when positive, puts the id in the lock
// pool for that long (whole milliseconds); Score, when not 0, is the score
// the id gets back (at once, or at unlock). Deckard sends -1 for "no score"
// to its lock script, so a client's score of -1 with a lock is lost, as in
// Deckard.
type Reply struct {
	Lock  time.Duration
	Score float64
}

// Ack acknowledges id: without a lock it returns to ready with Score, else
// the ack time in ms; with a lock it goes to lock_ack, its Score saved.
// false: the id was no longer in tmp, and nothing changed.
func (s *Server) Ack(ctx context.Context, queue, id string, r Reply) (bool, error) {
	score := r.Score
	if score == 0 && r.Lock <= 0 {
		score = float64(s.NowMs())
	}
	return s.reply(ctx, queue, id, r, score, true)
}

// Nack returns id: without a lock to ready with score 0 whatever the
// client sent; with a lock to lock_nack, its Score saved.
func (s *Server) Nack(ctx context.Context, queue, id string, r Reply) (bool, error) {
	score := r.Score
	if r.Lock <= 0 {
		score = 0
	}
	return s.reply(ctx, queue, id, r, score, false)
}

func (s *Server) reply(ctx context.Context, queue, id string, r Reply, score float64, ack bool) (bool, error) {
	if err := check(queue); err != nil {
		return false, err
	}
	k := s.Keys(queue)
	var cmd *redis.Cmd
	if lockMs := r.Lock.Milliseconds(); lockMs > 0 {
		lock, saved := k.LockNack, k.LockNackScore
		if ack {
			lock, saved = k.LockAck, k.LockAckScore
		}
		sc := any(score)
		if score == 0 {
			sc = "-1"
		}
		cmd = lockScript.Run(ctx, s.rdb, []string{k.Tmp, lock, saved}, s.NowMs()+lockMs, id, sc)
	} else {
		cmd = backScript.Run(ctx, s.rdb, []string{k.Ready, k.Tmp}, score, id)
	}
	n, err := cmd.Int64()
	if err != nil {
		return false, fmt.Errorf("deckard ack/nack in %s: %w", queue, err)
	}
	return n == 1, nil
}

// removeBatch is how many ids Deckard removes per script call.
const removeBatch = 4000

// Remove deletes ids from all six keys of queue and returns how many
// entries went.
func (s *Server) Remove(ctx context.Context, queue string, ids ...string) (int64, error) {
	if err := check(queue); err != nil {
		return 0, err
	}
	var total int64
	for lo := 0; lo < len(ids); lo += removeBatch {
		part := ids[lo:min(lo+removeBatch, len(ids))]
		args := make([]any, len(part))
		for i, id := range part {
			args[i] = id
		}
		n, err := removeScript.Run(ctx, s.rdb, s.Keys(queue).All(), args...).Int64()
		total += n
		if err != nil {
			return total, fmt.Errorf("deckard remove from %s: %w", queue, err)
		}
	}
	return total, nil
}

// Patterns are the SCAN patterns Deckard matches keys against: Flush
// deletes every key of the first; discovery takes every key of the others
// for a queue's pool.
func (s *Server) Patterns() []string {
	k := s.Keys("*")
	return []string{s.prefix + ":*", k.Ready, k.Tmp, k.LockAck, k.LockNack}
}

// Scan is a full SCAN MATCH pattern over the server, or over every primary
// of a cluster, as Deckard scans.
func (s *Server) Scan(ctx context.Context, pattern string) ([]string, error) {
	var (
		mu  sync.Mutex
		out []string
	)
	scan := func(ctx context.Context, c redis.Cmdable) error {
		it := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			out = append(out, it.Val())
			mu.Unlock()
		}
		return it.Err()
	}
	var err error
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return scan(ctx, node) })
	} else {
		err = scan(ctx, s.rdb)
	}
	if err != nil {
		return nil, fmt.Errorf("deckard scan %s: %w", pattern, err)
	}
	return out, nil
}

// Queues is Deckard's discovery: the queues that have a key in the pool
// (one of the patterns after the first), by name.
func (s *Server) Queues(ctx context.Context, pattern string) ([]string, error) {
	keys, err := s.Scan(ctx, pattern)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, key := range keys {
		rest := strings.TrimPrefix(key, s.prefix+":queue:{")
		q, _, ok := strings.Cut(rest, "}")
		if ok && !seen[q] {
			seen[q] = true
			out = append(out, q)
		}
	}
	return out, nil
}

// Flush is Deckard's Flush: it deletes every key under the prefix, found by
// SCAN on every primary.
func (s *Server) Flush(ctx context.Context) error {
	keys, err := s.Scan(ctx, s.prefix+":*")
	if err != nil {
		return err
	}
	for _, key := range keys {
		// One key at a time: on a cluster the keys span slots.
		if err := s.rdb.Del(ctx, key).Err(); err != nil {
			return fmt.Errorf("deckard flush %s: %w", key, err)
		}
	}
	return nil
}
