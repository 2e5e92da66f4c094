package election

import (
	"sort"

	"github.com/keeperhq/keeper/otel"
)

// buildQueues sums the summaries of live members only: a keeper whose member
// key is gone owns nothing any more (it stops housekeeping first), and its
// successors' summaries already count those shards.
func (v *view) buildQueues() []otel.QueueTotals {
	totals := make(map[string]*otel.QueueTotals, len(v.queueShards))
	get := func(q string) *otel.QueueTotals {
		qt := totals[q]
		if qt == nil {
			qt = &otel.QueueTotals{Queue: q}
			totals[q] = qt
		}
		return qt
	}
	for q, n := range v.queueShards {
		get(q).Shards = n
	}
	for member, s := range v.summaries {
		if _, live := v.members[member]; !live {
			continue
		}
		for q, qs := range s.Queues {
			qt := get(q)
			qt.Ready += qs.Ready
			qt.Inflight += qs.Inflight
			qt.Locked += qs.Locked
			qt.Dead += qs.Dead
		}
	}
	out := make([]otel.QueueTotals, 0, len(totals))
	for _, qt := range totals {
		out = append(out, *qt)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Queue < out[j].Queue })
	return out
}
