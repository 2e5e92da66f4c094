package chaos

import (
	"context"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// memberWatch records when etcd deleted each keeper's member key. A crashed,
// frozen or cut-off keeper's key goes when etcd expires its lease, which
// etcd does up to half a second after the TTL even when idle, and later
// when its leader is starved of CPU; no successor can start before that.
// The settle bound of those faults counts from the latest moment the lease
// could have run out (TTL after the fault), and the time etcd took beyond
// that is reported as its own lateness.
type memberWatch struct {
	mu      sync.Mutex
	deleted map[string][]time.Time
	cancel  context.CancelFunc
	done    chan struct{}
}

func watchMembers(ctx context.Context, cli *clientv3.Client, prefix string) *memberWatch {
	m := &memberWatch{deleted: map[string][]time.Time{}, done: make(chan struct{})}
	ctx, m.cancel = context.WithCancel(ctx)
	keys := prefix + "members/"
	go func() {
		defer close(m.done)
		for ctx.Err() == nil {
			// The client re-establishes a watch across member failures; a
			// watch that ends (quorum lost too long, compaction) is opened
			// again from now.
			for resp := range cli.Watch(clientv3.WithRequireLeader(ctx), keys, clientv3.WithPrefix()) {
				now := time.Now()
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypeDelete {
						id := strings.TrimPrefix(string(ev.Kv.Key), keys)
						m.mu.Lock()
						m.deleted[id] = append(m.deleted[id], now)
						m.mu.Unlock()
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return m
}

// lateness is how long after from+ttl etcd deleted id's member key (0 when
// it was on time or is not seen deleted within a minute of from).
func (m *memberWatch) lateness(id string, from time.Time, ttl time.Duration) time.Duration {
	deadline := time.Now().Add(5 * time.Second)
	for {
		m.mu.Lock()
		for _, t := range m.deleted[id] {
			if t.After(from) {
				m.mu.Unlock()
				return max(0, t.Sub(from.Add(ttl)))
			}
		}
		m.mu.Unlock()
		if time.Now().After(deadline) {
			return 0
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (m *memberWatch) stop() {
	m.cancel()
	<-m.done
}
