package election

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"strconv"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// statsValue is stored at stats/rebalances.
//
// Rebalances counts the etcd revisions at which the member set (the keys
// under members/) changed: a join, a leave, or several of them in one
// transaction count once. Rev is the revision of the last change counted and
// Members the hash of the member set at Rev. A new leader lists members/ at
// Rev and replays the watch history from Rev+1, so changes that happened
// while no one led, or that the old leader saw but had not yet written, are
// counted once. Every write is a transaction that requires the writer's
// election key (so a deposed leader cannot write) and the stats key's
// revision as last read (so no change is counted on top of a count that
// already includes it). If etcd compacted the history past Rev, the new
// leader compares the set hash with the stored one and counts one change if
// they differ: the count may then miss changes (e.g. a leave and a rejoin of
// the same id), but never counts one twice. Global reports only counts that
// are stored, so the counter never goes back across a leader change.
type statsValue struct {
	Count   int64  `json:"count"`
	Rev     int64  `json:"rev"`
	Members string `json:"members"`
}

// loadMembers reads the stored rebalance count and the member set it was
// counted against, and returns the revision to watch members/ from.
func (v *view) loadMembers(ctx context.Context) (int64, error) {
	a := v.a
	octx, cancel := context.WithTimeout(ctx, a.timeout())
	defer cancel()
	sresp, err := a.cli.Get(octx, a.keys.Rebalances())
	if err != nil {
		return 0, fmt.Errorf("read rebalance count: %w", err)
	}
	exists := len(sresp.Kvs) > 0
	if exists {
		kv := sresp.Kvs[0]
		v.statsMod = kv.ModRevision
		if err := json.Unmarshal(kv.Value, &v.st); err != nil {
			// Nothing to continue from: start over rather than stop
			// reporting; the counter resets, which the log explains.
			a.log.Error("rebalance count unreadable; counting again from 0", "key", a.keys.Rebalances(), "err", err)
			v.st = statsValue{}
		}
		v.persisted = v.st.Count
	}
	if v.st.Rev > 0 {
		mresp, err := a.cli.Get(octx, a.keys.Members(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithRev(v.st.Rev))
		if err == nil {
			v.resetMembers(mresp.Kvs)
			if h := v.membersHash(); h != v.st.Members {
				a.log.Warn("stored member-set hash differs from the member set at its revision",
					"rev", v.st.Rev, "stored", v.st.Members, "listed", h)
			}
			return v.st.Rev + 1, nil
		}
		// A future revision means etcd was restored from an older
		// backup: the history is gone just as after a compaction.
		if !errors.Is(err, rpctypes.ErrCompacted) && !errors.Is(err, rpctypes.ErrFutureRev) {
			return 0, fmt.Errorf("list members at revision %d: %w", v.st.Rev, err)
		}
	}
	mresp, err := a.cli.Get(octx, a.keys.Members(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return 0, fmt.Errorf("list members: %w", err)
	}
	v.resetMembers(mresp.Kvs)
	h := v.membersHash()
	if exists && v.st.Rev > 0 {
		a.log.Info("membership history since the last counted rebalance is gone (compacted, or etcd restored from a backup); comparing member sets",
			"rev", v.st.Rev, "changed", h != v.st.Members)
		if h != v.st.Members {
			v.st.Count++
		}
	}
	// Store the new baseline, so the next leader replays from here rather
	// than meet the same gap.
	v.st.Rev, v.st.Members = mresp.Header.Revision, h
	if err := v.storeStats(ctx); err != nil {
		return 0, err
	}
	return mresp.Header.Revision + 1, nil
}

func (v *view) resetMembers(kvs []*mvccpb.KeyValue) {
	v.members = make(map[string]struct{}, len(kvs))
	for _, kv := range kvs {
		v.members[v.a.keys.MemberID(string(kv.Key))] = struct{}{}
	}
	v.queuesDirty = true
}

// membersHash is FNV-1a over the sorted member ids.
func (v *view) membersHash() string {
	ids := make([]string, 0, len(v.members))
	for id := range v.members {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	h := fnv.New64a()
	for _, id := range ids {
		h.Write([]byte(id))
		h.Write([]byte{0})
	}
	return strconv.FormatUint(h.Sum64(), 16)
}

// applyMembers follows the member set and counts and stores its changes.
func (v *view) applyMembers(ctx context.Context, evs []*clientv3.Event) error {
	counted := false
	for _, ev := range evs {
		id := v.a.keys.MemberID(string(ev.Kv.Key))
		_, had := v.members[id]
		switch {
		case ev.Type == mvccpb.PUT && !had:
			v.members[id] = struct{}{}
		case ev.Type == mvccpb.DELETE && had:
			delete(v.members, id)
		default:
			continue
		}
		v.queuesDirty = true
		// One count per revision: a transaction that changes several
		// members is one rebalance.
		if rev := ev.Kv.ModRevision; rev > v.st.Rev {
			v.st.Count++
			v.st.Rev = rev
			counted = true
		}
	}
	if !counted {
		return nil
	}
	v.st.Members = v.membersHash()
	return v.storeStats(ctx)
}

// storeStats writes v.st, only while we hold our election key and nobody
// wrote the count since we read it.
func (v *view) storeStats(ctx context.Context) error {
	a := v.a
	b, err := json.Marshal(v.st)
	if err != nil {
		return fmt.Errorf("encode rebalance count: %w", err)
	}
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(v.t.key), "=", v.t.rev)}
	if v.statsMod == 0 {
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(a.keys.Rebalances()), "=", 0))
	} else {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(a.keys.Rebalances()), "=", v.statsMod))
	}
	octx, cancel := context.WithTimeout(ctx, a.timeout())
	defer cancel()
	resp, err := a.cli.Txn(octx).If(cmps...).Then(clientv3.OpPut(a.keys.Rebalances(), string(b))).Commit()
	if err != nil {
		return fmt.Errorf("store rebalance count: %w", err)
	}
	if !resp.Succeeded {
		return errors.New("store rebalance count: not leader any more, or the count changed since it was read")
	}
	v.statsMod = resp.Header.Revision
	v.persisted = v.st.Count
	return nil
}
