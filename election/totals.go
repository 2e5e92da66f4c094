package election

import (
	"sort"

	"github.com/keeperhq/keeper/otel"
)

// buildQueues sums the summaries of live members only: a keeper whose member
// key is gone owns nothing any more (it stops housekeeping first), and its
// successors' summaries already count those shards. A queue's totals are
// Complete when the summaries count each of its shards exactly once, by
// count and by fingerprint; while a shard moves (its old owner's summary
// still counts it, or its new owner has not measured it yet) they are not,
// and the global series leave them out rather than report a total that is
// off by a shard.
func (v *view) buildQueues() []otel.QueueTotals {
	shards := map[string]int{}
	cover := map[string]uint64{}
	fingerprinted := true
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
			shards[q] += qs.Shards
			cover[q] += qs.Cover
			fingerprinted = fingerprinted && (qs.Cover != 0 || qs.Shards == 0)
			qt := get(q)
			qt.Ready += qs.Ready
			qt.Inflight += qs.Inflight
			qt.Locked += qs.Locked
			qt.Dead += qs.Dead
		}
	}
	out := make([]otel.QueueTotals, 0, len(totals))
	for q, qt := range totals {
		// Summaries from keepers that predate fingerprints are checked by
		// count alone.
		qt.Complete = shards[q] == qt.Shards && (!fingerprinted || cover[q] == v.queueCover[q])
		out = append(out, *qt)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Queue < out[j].Queue })
	return out
}
