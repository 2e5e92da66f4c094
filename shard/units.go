package shard

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// maxTxnOps is etcd's default limit of operations per transaction.
const maxTxnOps = 128

// unitToken is a unit and the token it is (to be) held under.
type unitToken struct {
	unit  int
	token int64
}

// batches splits items into at most maxTxnOps per batch, and into at least
// `spread` batches when there are enough items, so small changes still use
// the allowed concurrency.
func batches[T any](items []T, spread int) [][]T {
	if len(items) == 0 {
		return nil
	}
	size := min(maxTxnOps, max(1, (len(items)+spread-1)/spread))
	var out [][]T
	for len(items) > 0 {
		n := min(size, len(items))
		out = append(out, items[:n])
		items = items[n:]
	}
	return out
}

// unitTxn is the one shape of every ownership write: a transaction over the
// keys of a batch of units in which each key must pass cmp, and then op runs
// on all of them at one revision. When a compare fails (our copy of etcd was
// stale) the else branch reads the keys instead; again(unit, kvs) tells
// which units are still to be done, the others are settled without op, and
// the rest are tried in a new transaction. It returns the units op was done
// on, each with the revision it was done at (a created key's token), and the
// units settled without it.
func (c *Coordinator) unitTxn(ctx context.Context, what string, uts []unitToken,
	cmp func(key string, ut unitToken) clientv3.Cmp,
	op func(key string, ut unitToken) clientv3.Op,
	again func(ut unitToken, kvs []*mvccpb.KeyValue) bool,
) (done, settled []unitToken, err error) {
	for len(uts) > 0 {
		cmps := make([]clientv3.Cmp, len(uts))
		ops := make([]clientv3.Op, len(uts))
		gets := make([]clientv3.Op, len(uts))
		for i, ut := range uts {
			k := c.keys.Owner(ut.unit)
			cmps[i] = cmp(k, ut)
			ops[i] = op(k, ut)
			gets[i] = clientv3.OpGet(k, clientv3.WithKeysOnly())
		}
		octx, cancel := context.WithTimeout(ctx, c.timeout())
		resp, err := c.cli.Txn(octx).If(cmps...).Then(ops...).Else(gets...).Commit()
		cancel()
		if err != nil {
			// The transaction may have committed; the next round sees
			// the keys in the mirror.
			return done, settled, fmt.Errorf("%s %d units: %w", what, len(uts), err)
		}
		if resp.Succeeded {
			for _, ut := range uts {
				done = append(done, unitToken{ut.unit, resp.Header.Revision})
			}
			return done, settled, nil
		}
		var rest []unitToken
		for i, ut := range uts {
			if again(ut, resp.Responses[i].GetResponseRange().Kvs) {
				rest = append(rest, ut)
			} else {
				settled = append(settled, ut)
			}
		}
		if len(rest) == len(uts) {
			return done, settled, fmt.Errorf("%s: a compare failed but every key reads as expected", what)
		}
		uts = rest
	}
	return done, settled, nil
}

// acquire creates the ownership keys of units on s's lease, each only if
// absent. It returns the units acquired with their tokens; units whose key
// someone else holds are left out.
func (c *Coordinator) acquire(ctx context.Context, s *session, units []int) ([]unitToken, error) {
	uts := make([]unitToken, len(units))
	for i, u := range units {
		uts[i] = unitToken{unit: u}
	}
	got, _, err := c.unitTxn(ctx, "acquire", uts,
		func(k string, _ unitToken) clientv3.Cmp { return clientv3.Compare(clientv3.CreateRevision(k), "=", 0) },
		func(k string, _ unitToken) clientv3.Op {
			return clientv3.OpPut(k, c.id, clientv3.WithLease(s.lease.ID()))
		},
		func(_ unitToken, kvs []*mvccpb.KeyValue) bool { return len(kvs) == 0 })
	s.lease.CheckLost(err)
	return got, err
}

// release deletes ownership keys, each only if it still carries our token.
// It returns the units whose keys are gone or no longer ours.
func (c *Coordinator) release(ctx context.Context, uts []unitToken) ([]int, error) {
	done, settled, err := c.unitTxn(ctx, "release", uts,
		func(k string, ut unitToken) clientv3.Cmp {
			return clientv3.Compare(clientv3.CreateRevision(k), "=", ut.token)
		},
		func(k string, _ unitToken) clientv3.Op { return clientv3.OpDelete(k) },
		func(ut unitToken, kvs []*mvccpb.KeyValue) bool {
			return len(kvs) > 0 && kvs[0].CreateRevision == ut.token
		})
	out := make([]int, 0, len(done)+len(settled))
	for _, ut := range append(done, settled...) {
		out = append(out, ut.unit)
	}
	return out, err
}
