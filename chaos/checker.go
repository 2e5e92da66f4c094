package chaos

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/queue"
)

// MessageReport is invariants 1 and 2 for a set of queues.
type MessageReport struct {
	Enqueued   int64    `json:"enqueued"`
	Acked      int64    `json:"acked"`
	Present    int64    `json:"present"`
	Dead       int64    `json:"dead"`
	Expired    int64    `json:"expired"`
	Trimmed    int64    `json:"trimmed"`
	Unlocked   int64    `json:"unlocked"`
	Requeued   int64    `json:"requeued"`
	Problems   []string `json:"problems"`
	ProblemCnt int      `json:"problem_count"`
}

// CheckMessages audits every queue (no id in two sets, structures
// consistent, counters balance) and accounts for every id the workload
// enqueued: acked by a consumer, or present in exactly one set. Queues are
// expected to have no TTL and no size cap, so nothing may be missing.
func (c *Cluster) CheckMessages(ctx context.Context, queues []string, w *Workload) (MessageReport, error) {
	client := queue.NewClient(c.RDB, queue.ClientOptions{})
	var r MessageReport
	members := map[string]queue.State{}
	for _, q := range queues {
		a, err := client.Audit(ctx, q)
		if err != nil {
			return r, err
		}
		r.Problems = append(r.Problems, a.Problems...)
		r.Present += a.Present()
		r.Dead += a.Dead
		r.Expired += a.Counters.Expired
		r.Trimmed += a.Counters.Trimmed
		r.Unlocked += a.Counters.Unlocked
		r.Requeued += a.Counters.Requeued
		r.Acked += a.Counters.Acked
		r.Enqueued += a.Counters.Enqueued
		for id, st := range a.Members {
			members[id] = st
		}
	}
	if w != nil {
		accepted, acked := w.accounting()
		if int64(len(accepted)) != r.Enqueued {
			r.Problems = append(r.Problems, fmt.Sprintf("redis counted %d enqueued, producers saw %d accepted", r.Enqueued, len(accepted)))
		}
		if int64(len(acked)) != r.Acked {
			r.Problems = append(r.Problems, fmt.Sprintf("redis counted %d acked, consumers saw %d", r.Acked, len(acked)))
		}
		var missing []string
		for id := range accepted {
			_, present := members[id]
			switch {
			case acked[id] && present:
				r.Problems = append(r.Problems, fmt.Sprintf("%s was acked but is still %s", id, members[id]))
			case !acked[id] && !present:
				missing = append(missing, id)
			}
		}
		sort.Strings(missing)
		if len(missing) > 0 && r.Expired+r.Trimmed == 0 {
			r.Problems = append(r.Problems, fmt.Sprintf("%d messages lost (neither acked nor present), e.g. %v", len(missing), missing[:min(5, len(missing))]))
		}
		for id := range members {
			if _, ok := accepted[id]; !ok {
				r.Problems = append(r.Problems, fmt.Sprintf("%s is present but was never accepted", id))
			}
		}
	}
	r.ProblemCnt = len(r.Problems)
	if len(r.Problems) > 20 {
		r.Problems = r.Problems[:20]
	}
	return r, nil
}

// FenceReport is invariant 3 over the recorded history.
type FenceReport struct {
	Shards   int      `json:"shards"`
	Accepted int      `json:"accepted_writes"`
	Refused  int      `json:"refused_writes"`
	Problems []string `json:"problems"`
}

// CheckFencing replays every shard's history: accepted tokens never
// decrease, so no write was accepted under a token after a higher one had
// written (at most one token per shard at a time).
func (c *Cluster) CheckFencing(ctx context.Context, shards []queue.Shard) (FenceReport, error) {
	n := queue.NewInspector(c.RDB, "")
	r := FenceReport{Shards: len(shards)}
	for _, s := range shards {
		h, err := n.History(ctx, s)
		if err != nil {
			return r, err
		}
		var high int64
		for _, e := range h {
			if !e.Accepted {
				r.Refused++
				if e.Token >= high {
					r.Problems = append(r.Problems, fmt.Sprintf("%s: token %d refused although no higher token had written (%d)", s, e.Token, high))
				}
				continue
			}
			r.Accepted++
			if e.Token < high {
				r.Problems = append(r.Problems, fmt.Sprintf("%s: %s accepted under token %d after token %d had written (entry %s)", s, e.Task, e.Token, high, e.ID))
			}
			high = max(high, e.Token)
		}
	}
	return r, nil
}

// RefusedTokens lists, per shard, the tokens whose writes the fence refused.
func (c *Cluster) RefusedTokens(ctx context.Context, shards []queue.Shard) (map[string][]int64, error) {
	n := queue.NewInspector(c.RDB, "")
	out := map[string][]int64{}
	for _, s := range shards {
		h, err := n.History(ctx, s)
		if err != nil {
			return nil, err
		}
		for _, e := range h {
			if !e.Accepted {
				out[s.String()] = append(out[s.String()], e.Token)
			}
		}
	}
	return out, nil
}

// Ownership is who owns what, as the live keepers say on /status.
type Ownership struct {
	Owners map[string][]string // shard -> keepers that say they own it
	Tokens map[string]int64    // shard -> token of its (single) owner
}

// Ownerships asks every running, unpaused keeper in ks.
func Ownerships(ctx context.Context, ks []*Keeper) (Ownership, error) {
	o := Ownership{Owners: map[string][]string{}, Tokens: map[string]int64{}}
	for _, k := range ks {
		if k.Exited() || k.Paused() {
			continue
		}
		st, err := k.Status(ctx)
		if err != nil {
			return o, fmt.Errorf("status of %s: %w", k.ID, err)
		}
		for s, tok := range st.Owned {
			o.Owners[s] = append(o.Owners[s], k.ID)
			o.Tokens[s] = tok
		}
	}
	return o, nil
}

// ExactlyOne reports the shards that have no owner or more than one.
func (o Ownership) ExactlyOne(shards []queue.Shard) []string {
	var bad []string
	for _, s := range shards {
		if n := len(o.Owners[s.String()]); n != 1 {
			bad = append(bad, fmt.Sprintf("%s has %d owners %v", s, n, o.Owners[s.String()]))
		}
	}
	return bad
}

// WaitOneOwner polls the keepers in ks until every shard has exactly one
// owner (invariant 4) and returns how long that took, or the last problems
// when timeout passes.
func WaitOneOwner(ctx context.Context, ks []*Keeper, shards []queue.Shard, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return poll.Until(ctx, 20*time.Millisecond, func() (bool, string) {
		o, err := Ownerships(ctx, ks)
		if err != nil {
			return false, err.Error()
		}
		bad := o.ExactlyOne(shards)
		return len(bad) == 0, fmt.Sprintf("%d shards without exactly one owner, e.g. %v", len(bad), bad[:min(3, len(bad))])
	})
}

// WaitSpread waits until every shard has exactly one owner and every keeper
// in ks owns some: the ring has spread the shards over all of them (a
// keeper that joined a moment ago may not be in the others' ring yet).
func WaitSpread(ctx context.Context, ks []*Keeper, shards []queue.Shard, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	_, err := poll.Until(ctx, 20*time.Millisecond, func() (bool, string) {
		o, err := Ownerships(ctx, ks)
		if err != nil {
			return false, err.Error()
		}
		if bad := o.ExactlyOne(shards); len(bad) > 0 {
			return false, fmt.Sprintf("%d shards without exactly one owner", len(bad))
		}
		per := map[string]bool{}
		for _, owners := range o.Owners {
			per[owners[0]] = true
		}
		return len(per) == len(ks), fmt.Sprintf("shards spread over %d of %d keepers", len(per), len(ks))
	})
	return err
}

// WaitDrained waits until no queue holds in-flight or locked messages: with
// consumers stopped, the keepers must return every lease and lock.
func (c *Cluster) WaitDrained(ctx context.Context, queues []string, timeout time.Duration) error {
	client := queue.NewClient(c.RDB, queue.ClientOptions{})
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := poll.Until(ctx, 20*time.Millisecond, func() (bool, string) {
		var left int64
		for _, q := range queues {
			st, err := client.Stats(ctx, q)
			if err != nil {
				return false, err.Error()
			}
			left += st.Inflight + st.Locked
		}
		return left == 0, fmt.Sprintf("%d messages still in flight or locked", left)
	})
	return err
}
