package shard

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// mirror keeps a local copy of every key under a prefix: a Get, then a Watch
// from the Get's revision; when the watch is compacted, cancelled or fails it
// lists again. The copy keeps serving while etcd is unreachable. The
// coordinator mirrors members/ and owners/ and decides from the copies.
type mirror struct {
	cli    *clientv3.Client
	prefix string
	log    *slog.Logger
	kick   func()
	store  mirrorStore

	mu     sync.Mutex
	rev    int64 // the copy reflects every change up to rev
	synced bool
	// joined is when a key last joined the set (or the set was listed
	// again): the coordinator lets the member set settle after joins.
	joined time.Time
}

type mirrorStore interface {
	reset(kvs []*mvccpb.KeyValue)
	put(kv *mvccpb.KeyValue) (joined bool)
	del(key string)
}

func (m *mirror) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := m.cli.Get(gctx, m.prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.log.Warn("list failed", "prefix", m.prefix, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		m.mu.Lock()
		m.store.reset(resp.Kvs)
		m.rev = resp.Header.Revision
		m.synced = true
		m.joined = time.Now()
		m.mu.Unlock()
		m.kick()
		m.watch(ctx, resp.Header.Revision+1)
	}
}

func (m *mirror) watch(ctx context.Context, from int64) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := m.cli.Watch(wctx, m.prefix, clientv3.WithPrefix(), clientv3.WithRev(from), clientv3.WithProgressNotify())
	for wr := range wch {
		if err := wr.Err(); err != nil {
			if ctx.Err() == nil {
				m.log.Info("watch ended, listing again", "prefix", m.prefix, "err", err)
			}
			return
		}
		m.mu.Lock()
		joined := false
		for _, ev := range wr.Events {
			switch ev.Type {
			case mvccpb.PUT:
				joined = m.store.put(ev.Kv) || joined
			case mvccpb.DELETE:
				m.store.del(string(ev.Kv.Key))
			}
			m.rev = max(m.rev, ev.Kv.ModRevision)
		}
		if wr.IsProgressNotify() {
			m.rev = max(m.rev, wr.Header.Revision)
		}
		if joined {
			m.joined = time.Now()
		}
		m.mu.Unlock()
		if len(wr.Events) > 0 {
			m.kick()
		}
	}
}

// sinceJoin is how long no key has joined the set.
func (m *mirror) sinceJoin() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	return time.Since(m.joined)
}

// memberStore is the set of live member ids.
type memberStore struct {
	keys Keys
	ids  map[string]struct{}
}

func (s *memberStore) reset(kvs []*mvccpb.KeyValue) {
	s.ids = make(map[string]struct{}, len(kvs))
	for _, kv := range kvs {
		s.ids[s.keys.MemberID(string(kv.Key))] = struct{}{}
	}
}

func (s *memberStore) put(kv *mvccpb.KeyValue) bool {
	id := s.keys.MemberID(string(kv.Key))
	if _, ok := s.ids[id]; ok {
		return false
	}
	s.ids[id] = struct{}{}
	return true
}

func (s *memberStore) del(key string) { delete(s.ids, s.keys.MemberID(key)) }

// ownerEntry is one unit's ownership key as last seen.
type ownerEntry struct {
	member string
	create int64 // the token
	lease  int64
}

// ownerStore holds the ownership keys, indexed by unit.
type ownerStore struct {
	keys  Keys
	units []ownerEntry // create == 0: no key
}

func newOwnerStore(keys Keys, units int) *ownerStore {
	return &ownerStore{keys: keys, units: make([]ownerEntry, units)}
}

func (s *ownerStore) unit(key string) (int, bool) {
	u, ok := s.keys.OwnerUnit(key)
	return u, ok && u < len(s.units)
}

func (s *ownerStore) reset(kvs []*mvccpb.KeyValue) {
	clear(s.units)
	for _, kv := range kvs {
		s.put(kv)
	}
}

func (s *ownerStore) put(kv *mvccpb.KeyValue) bool {
	u, ok := s.unit(string(kv.Key))
	if !ok {
		return false
	}
	joined := s.units[u].create == 0
	s.units[u] = ownerEntry{member: string(kv.Value), create: kv.CreateRevision, lease: kv.Lease}
	return joined
}

func (s *ownerStore) del(key string) {
	if u, ok := s.unit(key); ok {
		s.units[u] = ownerEntry{}
	}
}
