package chaos

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// histEntry is one recorded housekeeping pass, as the collector read it.
type histEntry struct {
	ms, seq int64 // stream id: Redis time in ms, sequence
	token   int64
	epoch   int32 // which Redis primary it was read from (counts failovers and restarts)
	moved   int32
	ok      bool
	lost    bool   // not on the primary that followed: a failover dropped it
	task    string // interned
	owner   string // the keeper process that presented the token (member/nonce), interned
}

// History follows every shard's history stream while the run goes on and
// keeps what it read, so that a pass recorded on a primary that a failover
// then dropped still counts: the checker replays what really happened, in
// the order it happened, not only what the last primary kept.
type History struct {
	rdb    *redis.Client
	keys   []string
	shards []queue.Shard

	mu      sync.Mutex
	cursor  []string // last id read per shard; "" none
	entries [][]histEntry
	epoch   int32
	strs    map[string]string // interned task and owner names
	lost    []string          // what each epoch change found dropped
	nLost   int
	errs    int

	cancel context.CancelFunc
	done   chan struct{}
}

// FollowHistory starts following the shards' histories through rdb, reading
// every interval until Stop.
func FollowHistory(ctx context.Context, rdb *redis.Client, shards []queue.Shard, interval time.Duration) *History {
	n := queue.NewInspector(rdb, "")
	h := &History{rdb: rdb, shards: shards, cursor: make([]string, len(shards)),
		entries: make([][]histEntry, len(shards)), strs: map[string]string{}, done: make(chan struct{})}
	for _, s := range shards {
		h.keys = append(h.keys, n.HistoryKey(s))
	}
	ctx, h.cancel = context.WithCancel(ctx)
	go func() {
		defer close(h.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := h.Collect(ctx); err != nil {
				h.mu.Lock()
				h.errs++
				h.mu.Unlock()
			}
		}
	}()
	return h
}

// Stop ends the following; Collect still works after it.
func (h *History) Stop() {
	h.cancel()
	<-h.done
}

func parseID(id string) (ms, seq int64) {
	a, b, _ := strings.Cut(id, "-")
	ms, _ = strconv.ParseInt(a, 10, 64)
	seq, _ = strconv.ParseInt(b, 10, 64)
	return ms, seq
}

// Collect reads every shard's new entries now.
func (h *History) Collect(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	const page = 5000
	pending := make([]int, len(h.keys))
	for i := range pending {
		pending[i] = i
	}
	for len(pending) > 0 {
		cmds := make([]*redis.XMessageSliceCmd, len(pending))
		_, err := h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, i := range pending {
				start := "-"
				if h.cursor[i] != "" {
					start = "(" + h.cursor[i]
				}
				cmds[j] = p.XRangeN(ctx, h.keys[i], start, "+", page)
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("read histories: %w", err)
		}
		var more []int
		for j, i := range pending {
			msgs := cmds[j].Val()
			for _, e := range queue.ParseHistory(msgs) {
				ms, seq := parseID(e.ID)
				h.entries[i] = append(h.entries[i], histEntry{ms: ms, seq: seq, token: e.Token, epoch: h.epoch,
					ok: e.Accepted, task: h.intern(e.Task), owner: h.intern(e.Owner), moved: int32(e.Moved)})
			}
			if len(msgs) > 0 {
				h.cursor[i] = msgs[len(msgs)-1].ID
			}
			if len(msgs) == page {
				more = append(more, i)
			}
		}
		pending = more
	}
	return nil
}

func (h *History) intern(s string) string {
	if v, ok := h.strs[s]; ok {
		return v
	}
	h.strs[s] = s
	return s
}

// NewEpoch is called once another Redis server is the primary (after a
// failover) or the primary restarted: entries read before that the new
// primary does not have were dropped with the old one. They are kept (the
// passes happened; a stale owner must not have written after them) and
// counted; reading goes on from the last entry the new primary has.
func (h *History) NewEpoch(ctx context.Context, why string) (lost int, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cmds := make([]*redis.XMessageSliceCmd, len(h.keys))
	_, err = h.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range h.keys {
			cmds[i] = p.XRevRangeN(ctx, k, "+", "-", 1)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("read histories after %s: %w", why, err)
	}
	claims := 0
	for i, c := range cmds {
		var lastMs, lastSeq int64
		last := ""
		if v := c.Val(); len(v) > 0 {
			last = v[0].ID
			lastMs, lastSeq = parseID(last)
		}
		es := h.entries[i]
		for j := len(es) - 1; j >= 0 && es[j].epoch == h.epoch; j-- {
			e := &es[j]
			if e.ms < lastMs || (e.ms == lastMs && e.seq <= lastSeq) {
				break
			}
			e.lost = true
			lost++
			if e.task == "claim" && e.ok {
				claims++
			}
		}
		cm, cs := parseID(h.cursor[i])
		if h.cursor[i] != "" && (cm > lastMs || (cm == lastMs && cs > lastSeq)) {
			h.cursor[i] = last
		}
	}
	h.epoch++
	h.nLost += lost
	if lost > 0 {
		h.lost = append(h.lost, fmt.Sprintf("%s: %d recorded passes (%d claims) not on the new primary", why, lost, claims))
	}
	return lost, nil
}

// fenceCheck replays every shard's history in the order it happened:
// accepted tokens never decrease and a token is accepted from one keeper
// process only (invariant 3), a refusal only ever meets a token below one
// that already wrote, and once a higher token has written, a lower one
// never even tries again, unless its keeper was frozen (SIGSTOP) and woke
// up to find its session gone: the tokens in frozen.
func (h *History) fenceCheck(frozen map[int64]bool, owner map[int64]string, since time.Time) FenceReport {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := FenceReport{Shards: len(h.shards), LostInFailover: h.nLost, Lost: h.lost, ReadErrors: h.errs,
		LargestPass: map[string]int{}}
	at := func(ms int64) string { return fmt.Sprintf("%.3fs", float64(ms-since.UnixMilli())/1000) }
	who := func(tok int64, by string) string {
		if by != "" {
			return fmt.Sprintf("token %d (%s)", tok, by)
		}
		if k := owner[tok]; k != "" {
			return fmt.Sprintf("token %d (%s)", tok, k)
		}
		return fmt.Sprintf("token %d", tok)
	}
	for i, es := range h.entries {
		s := h.shards[i]
		var high, started int64 // highest accepted token; highest token that wrote at all
		var startedAt int64
		var startedBy string
		tokenOwner := map[int64]string{}
		for _, e := range es {
			if !e.ok {
				r.Refused++
				if e.token > high || (e.token == high && e.owner == tokenOwner[e.token]) {
					r.Problems = append(r.Problems, fmt.Sprintf("%s: %s refused at %s although no higher token had written (%d)", s, who(e.token, e.owner), at(e.ms), high))
				}
			} else {
				r.Accepted++
				if e.token < high {
					r.Problems = append(r.Problems, fmt.Sprintf("%s: %s accepted under %s at %s after token %d had written", s, e.task, who(e.token, e.owner), at(e.ms), high))
				}
				if prev, ok := tokenOwner[e.token]; ok && prev != e.owner {
					r.Problems = append(r.Problems, fmt.Sprintf("%s: %s accepted under %s at %s, a token %s had written under", s, e.task, who(e.token, e.owner), at(e.ms), prev))
				}
				tokenOwner[e.token] = e.owner
				high = max(high, e.token)
			}
			if e.ok {
				r.LargestPass[e.task] = max(r.LargestPass[e.task], int(e.moved))
			}
			if e.token < started && !e.ok && !frozen[e.token] {
				r.Late = append(r.Late, fmt.Sprintf("%s: %s tried %s at %s, after %s started at %s", s, who(e.token, e.owner), e.task, at(e.ms), who(started, startedBy), at(startedAt)))
			}
			if e.ok && e.token > started {
				started, startedAt, startedBy = e.token, e.ms, e.owner
			}
		}
	}
	return r
}

// passesSince describes s's recorded passes from fromMs (Redis time) on:
// when, which task, how many messages moved, under which token and owner,
// accepted or refused, and on which primary.
func (h *History) passesSince(s queue.Shard, fromMs int64) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for i, sh := range h.shards {
		if sh != s {
			continue
		}
		for _, e := range h.entries[i] {
			if e.ms < fromMs || (e.moved == 0 && e.ok && e.task != "claim") {
				continue
			}
			out = append(out, fmt.Sprintf("%s %s moved %d token %d owner %s ok %t epoch %d lost %t",
				time.UnixMilli(e.ms).Format("15:04:05.000"), e.task, e.moved, e.token, e.owner, e.ok, e.epoch, e.lost))
		}
	}
	if len(out) == 0 {
		return "none that moved a message"
	}
	if len(out) > 30 {
		out = append(out[:30], fmt.Sprintf("and %d more", len(out)-30))
	}
	return strings.Join(out, "; ")
}
