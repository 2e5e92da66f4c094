package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/keeperhq/keeper/internal/testsignal"
)

// ErrLeaseExpired reports that a lease is over, by etcd's word or by the
// local deadline (see Lease).
var ErrLeaseExpired = errors.New("lease expired")

// LeaseTTL is the TTL etcd is asked for: d rounded up to whole seconds, at
// least 2s (etcd refuses shorter leases, roughly 1.5 × its election timeout).
func LeaseTTL(d time.Duration) time.Duration {
	s := int64((d + time.Second - 1) / time.Second)
	return time.Duration(max(s, 2)) * time.Second
}

// Lease is an etcd lease whose expiry this keeper counts itself. etcd
// expires a lease TTL after it processed the last renewal, which is after
// the client sent it; so once TTL has passed since the send time of the
// last acknowledged renewal, etcd may have deleted every key bound to the
// lease and a successor may hold what they stood for (our units, our
// leadership). A keepalive stream (concurrency.Session) only notices when
// the stream fails, possibly much later; Lease renews with KeepAliveOnce,
// whose send time it knows, and Alive turns false at that deadline less a
// margin for clock rates, whatever the stream says. The member session and
// the aggregator's leadership both rest on it.
type Lease struct {
	cli    *clientv3.Client
	id     clientv3.LeaseID
	ttl    time.Duration
	margin time.Duration
	log    *slog.Logger
	// base anchors the deadline on the monotonic clock.
	base     time.Time
	deadline atomic.Int64 // ns since base
	// gone is closed when a request learnt that etcd no longer has the
	// lease, so Keep ends without waiting for its next renewal.
	gone     chan struct{}
	goneOnce sync.Once

	TestSignals LeaseSignals
}

// LeaseSignals are events tests wait for.
type LeaseSignals struct {
	Renewed testsignal.Signal[struct{}] // a renewal was acknowledged
}

// GrantLease grants a lease of LeaseTTL(ttl); its deadline counts from the
// grant's send time.
func GrantLease(ctx context.Context, cli *clientv3.Client, ttl time.Duration, log *slog.Logger) (*Lease, error) {
	base := time.Now()
	g, err := cli.Grant(ctx, int64(LeaseTTL(ttl)/time.Second))
	if err != nil {
		return nil, fmt.Errorf("grant lease: %w", err)
	}
	d := time.Duration(g.TTL) * time.Second
	l := &Lease{cli: cli, id: g.ID, ttl: d, margin: d / 10, log: log, base: base, gone: make(chan struct{})}
	l.deadline.Store(int64(d - l.margin))
	return l, nil
}

// ID is the lease's id.
func (l *Lease) ID() clientv3.LeaseID { return l.id }

// TTL is the lease's granted TTL.
func (l *Lease) TTL() time.Duration { return l.ttl }

func (l *Lease) String() string { return fmt.Sprintf("%x", int64(l.id)) }

func (l *Lease) now() int64 { return int64(time.Since(l.base)) }

// Left is how long the lease certainly lasts without another renewal.
func (l *Lease) Left() time.Duration { return time.Duration(l.deadline.Load() - l.now()) }

// Alive reports whether the lease certainly still exists in etcd: its
// deadline has not passed and no request learnt that etcd dropped it.
func (l *Lease) Alive() bool {
	select {
	case <-l.gone:
		return false
	default:
		return l.Left() > 0
	}
}

// Lost records that a request learnt etcd no longer has the lease
// (rpctypes.ErrLeaseNotFound): Keep returns at once. Safe to call twice.
func (l *Lease) Lost() { l.goneOnce.Do(func() { close(l.gone) }) }

// CheckLost calls Lost when err says etcd no longer has the lease.
func (l *Lease) CheckLost(err error) {
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		l.Lost()
	}
}

// Renew renews the lease once and moves the deadline to TTL after the send
// time, less the margin. A renewal that would come back after the deadline
// is of no use, so it is bounded by it.
func (l *Lease) Renew(ctx context.Context) error {
	left := l.Left()
	if left <= 0 {
		return fmt.Errorf("no renewal acknowledged within %s: %w", l.ttl, ErrLeaseExpired)
	}
	sent := l.now()
	rctx, cancel := context.WithTimeout(ctx, left)
	resp, err := l.cli.KeepAliveOnce(rctx, l.id)
	cancel()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		l.Lost()
		return fmt.Errorf("etcd no longer knows lease %s: %w", l, ErrLeaseExpired)
	}
	if err != nil {
		return fmt.Errorf("renew lease %s: %w", l, err)
	}
	d := sent + int64(time.Duration(resp.TTL)*time.Second-l.margin)
	for {
		cur := l.deadline.Load()
		if d <= cur || l.deadline.CompareAndSwap(cur, d) {
			break
		}
	}
	l.TestSignals.Renewed.Signal(struct{}{})
	return nil
}

// Keep renews the lease every TTL/3 (sooner when the deadline is near, and
// every 200ms while renewals fail) until ctx ends (it returns nil) or the
// lease is over (it returns why, wrapping ErrLeaseExpired).
func (l *Lease) Keep(ctx context.Context) error {
	interval := l.ttl / 3
	retry := min(interval, 200*time.Millisecond)
	wait := interval
	failing := false
	for {
		left := l.Left()
		if left <= 0 {
			return fmt.Errorf("no renewal acknowledged within %s: %w", l.ttl, ErrLeaseExpired)
		}
		timer := time.NewTimer(min(wait, left/2))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-l.gone:
			timer.Stop()
			return fmt.Errorf("etcd no longer knows lease %s: %w", l, ErrLeaseExpired)
		case <-timer.C:
		}
		err := l.Renew(ctx)
		switch {
		case err == nil:
			wait = interval
			if failing {
				l.log.Info("lease renewals acknowledged again", "lease", l.String())
				failing = false
			}
		case errors.Is(err, ErrLeaseExpired):
			return err
		case ctx.Err() != nil:
			return nil
		default:
			if !failing {
				l.log.Warn("lease renewal failed; the lease ends at its deadline unless one succeeds",
					"lease", l.String(), "left", l.Left().Round(time.Millisecond), "err", err)
			}
			failing = true
			wait = retry
		}
	}
}

// Revoke gives the lease back: etcd deletes every key bound to it in one
// step. A lease etcd no longer has is not an error.
func (l *Lease) Revoke(ctx context.Context) error {
	if _, err := l.cli.Revoke(ctx, l.id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoke lease %s: %w", l, err)
	}
	return nil
}
