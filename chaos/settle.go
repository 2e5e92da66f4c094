// Settling: how the harness watches the fleet after a fault until every
// shard has exactly one owner again, and how long a fault is held.

package chaos

import (
	"context"
	"fmt"
	"time"
)

// observation watches ownership from a moment on (see observe).
type observation struct {
	from time.Time
	done chan struct{}
	good time.Time // start of the last stretch with one owner per shard
	err  error
}

// observe polls the keepers from now on until every shard has had exactly
// one owner without a break since some moment, and at least until the
// bound (TTL + 1s) after from has passed: a fault whose effect comes late
// (a session that runs out seconds after an etcd member died) is seen too.
// The settle time is from from to the start of that last good stretch.
func (r *runner) observe(ctx context.Context, from time.Time) *observation {
	o := &observation{from: from, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		var last string
		for {
			own, err := Ownerships(ctx, r.c.Keepers())
			var bad []string
			if err == nil {
				bad = own.ExactlyOne(r.shards)
			}
			now := time.Now()
			switch {
			case err != nil:
				o.good, last = time.Time{}, err.Error()
			case len(bad) > 0:
				o.good, last = time.Time{}, fmt.Sprintf("%d shards without exactly one owner, e.g. %v", len(bad), bad[:min(3, len(bad))])
			case o.good.IsZero():
				o.good = now
			}
			if !o.good.IsZero() && now.Sub(from) >= r.limit {
				return
			}
			if now.Sub(from) > time.Minute {
				o.err = fmt.Errorf("after a minute: %s", last)
				return
			}
			select {
			case <-ctx.Done():
				o.err = ctx.Err()
				return
			case <-t.C:
			}
		}
	}()
	return o
}

// settled waits for the observation and records the settle time; past the
// bound (TTL + 1s) it is a violation.
func (r *runner) settled(f *FaultRecord, o *observation, fromWhat string) {
	<-o.done
	took := o.good.Sub(o.from)
	if o.err != nil {
		took = time.Since(o.from)
	}
	f.SettleS, f.SettleFrom = max(0, took.Seconds()), fromWhat
	f.SettledAt = o.from.Add(took).Sub(r.start).Seconds()
	bound := r.limit
	if fromWhat == "fault" {
		bound += time.Duration(f.EtcdLateS * float64(time.Second))
	}
	switch {
	case o.err != nil:
		f.Error = o.err.Error()
		r.rep.OneOwner = false
		r.violation("%s %s at %.1fs: no single owner per shard: %v", f.Kind, f.Target, f.At, o.err)
	case took > bound:
		f.Late = true
		r.rep.OneOwner = false
		r.violation("%s %s at %.1fs: one owner per shard only after %.2fs from the %s (bound %s; etcd late by %.2fs, longest stall of this process so far %s)",
			f.Kind, f.Target, f.At, took.Seconds(), fromWhat, bound.Round(time.Millisecond), f.EtcdLateS,
			r.worstStall(f.At, r.since()).Round(time.Millisecond))
	}
}

// healSettle follows a fault's healing, observed from the moment of
// healing by o: one owner per shard again within the bound (a violation
// otherwise), and every live keeper owning its share (reported: how long
// the fleet took to spread again).
func (r *runner) healSettle(ctx context.Context, f *FaultRecord, o *observation) {
	r.spread(ctx, f)
	hf := FaultRecord{Kind: f.Kind, Target: f.Target, At: f.At}
	r.settled(&hf, o, "heal")
	f.HealSettleS = hf.SettleS
	f.Late = f.Late || hf.Late
	if hf.Error != "" && f.Error == "" {
		f.Error = hf.Error
	}
}

// spread waits until every live keeper owns its share of the shards (a
// violation when not within a minute).
func (r *runner) spread(ctx context.Context, f *FaultRecord) {
	if _, err := waitSpread(ctx, r.c.Keepers(), r.shards, time.Minute); err != nil {
		r.violation("%s %s at %.1fs: shards not spread over the fleet within a minute: %v", f.Kind, f.Target, f.At, err)
	}
}

// hold sleeps until d after from.
func hold(ctx context.Context, from time.Time, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Until(from.Add(d))):
		return nil
	}
}

// freeze records the tokens k holds, before SIGSTOP: a frozen keeper that
// wakes up may try a write under them before it sees its session is gone,
// which the fence refuses.
func (r *runner) freeze(ctx context.Context, k *Keeper) {
	if st, err := k.Status(ctx); err == nil {
		for _, tok := range st.Owned {
			r.frozen[tok] = true
		}
	}
	for tok, who := range r.samp.tokenOwners() {
		if who == k.ID {
			r.frozen[tok] = true
		}
	}
}
