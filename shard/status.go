package shard

import (
	"context"
	"fmt"
	"slices"
	"sort"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/queue"
)

// Status is the deployment's ownership as etcd has it, for `keeper status`
// and tests.
type Status struct {
	Prefix        string            `json:"prefix"`
	Revision      int64             `json:"revision"`
	Self          string            `json:"self"`
	Ring          RingConfig        `json:"ring"`
	Shards        int               `json:"shards"`
	Members       []MemberStatus    `json:"members"`
	UnownedUnits  []int             `json:"unowned_units"` // units holding shards that no one owns
	UnownedShards []string          `json:"unowned_shards"`
	Misplaced     int               `json:"misplaced_units"` // held by another member than the ring names (handoff in progress)
	Tokens        map[int]int64     `json:"tokens"`          // unit -> token
	Owners        map[int]string    `json:"-"`               // unit -> member, for callers in Go
	Stale         []string          `json:"stale_owners,omitempty"`
	ShardOwners   map[string]string `json:"-"`
}

// MemberStatus is one member's share.
type MemberStatus struct {
	ID        string   `json:"id"`
	RingUnits int      `json:"ring_units"`
	Units     []int    `json:"units"`
	Shards    []string `json:"shards"`
}

// ReadStatus reads members and ownership keys under keys at one revision
// and reports them against the ring of cfg and the shards of catalog.
func ReadStatus(ctx context.Context, cli *clientv3.Client, keys Keys, cfg RingConfig, catalog []queue.Shard) (Status, error) {
	cfg = cfg.withDefaults()
	mresp, err := cli.Get(ctx, keys.Members(), clientv3.WithPrefix())
	if err != nil {
		return Status{}, fmt.Errorf("list members: %w", err)
	}
	oresp, err := cli.Get(ctx, keys.Owners(), clientv3.WithPrefix(), clientv3.WithRev(mresp.Header.Revision))
	if err != nil {
		return Status{}, fmt.Errorf("list owners: %w", err)
	}
	st := Status{
		Prefix:      keys.Prefix(),
		Revision:    mresp.Header.Revision,
		Ring:        cfg,
		Tokens:      map[int]int64{},
		Owners:      map[int]string{},
		ShardOwners: map[string]string{},
	}
	var ids []string
	for _, kv := range mresp.Kvs {
		ids = append(ids, keys.MemberID(string(kv.Key)))
	}
	ring := NewRing(ids, cfg)
	store := newOwnerStore(keys, cfg.Units)
	store.reset(oresp.Kvs)
	byMember := map[string]*MemberStatus{}
	for _, id := range ring.Members() {
		byMember[id] = &MemberStatus{ID: id, RingUnits: len(ring.units[id]), Units: []int{}, Shards: []string{}}
	}
	names := make([]string, len(catalog))
	units := make([]int, len(catalog))
	used := make(map[int]bool, len(catalog))
	for i, sh := range catalog {
		names[i], units[i] = sh.String(), UnitOf(sh, cfg.Units)
		used[units[i]] = true
	}
	stale := map[string]bool{}
	for u, e := range store.units {
		if e.create == 0 {
			// Units without shards are not owned on purpose.
			if used[u] {
				st.UnownedUnits = append(st.UnownedUnits, u)
			}
			continue
		}
		st.Tokens[u] = e.create
		st.Owners[u] = e.member
		if e.member != ring.Owner(u) {
			st.Misplaced++
		}
		m := byMember[e.member]
		if m == nil {
			// Keys of a member whose key is gone: its lease has not
			// expired yet, or it was a previous incarnation.
			stale[e.member] = true
			m = &MemberStatus{ID: e.member, Units: []int{}, Shards: []string{}}
			byMember[e.member] = m
		}
		m.Units = append(m.Units, u)
	}
	order := make([]int, len(catalog))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return names[order[a]] < names[order[b]] })
	st.Shards = len(catalog)
	for _, i := range order {
		e := store.units[units[i]]
		if e.create == 0 {
			st.UnownedShards = append(st.UnownedShards, names[i])
			continue
		}
		st.ShardOwners[names[i]] = e.member
		byMember[e.member].Shards = append(byMember[e.member].Shards, names[i])
	}
	for _, m := range byMember {
		st.Members = append(st.Members, *m)
	}
	sort.Slice(st.Members, func(i, j int) bool { return st.Members[i].ID < st.Members[j].ID })
	for id := range stale {
		st.Stale = append(st.Stale, id)
	}
	sort.Strings(st.Stale)
	return st, nil
}

// Status is ReadStatus with this coordinator's keys, ring and catalog. It
// works on a coordinator that was never started.
func (c *Coordinator) Status(ctx context.Context) (Status, error) {
	c.catMu.Lock()
	cat := slices.Clone(c.catalog)
	c.catMu.Unlock()
	st, err := ReadStatus(ctx, c.cli, c.keys, c.ring, cat)
	st.Self = c.id
	return st, err
}
