package chaos

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/faultproxy"
)

// termTimeout bounds a keeper's exit after SIGTERM: its own shutdown budget
// is 30s.
const termTimeout = 35 * time.Second

// inject runs one fault to its end: inject, wait for one owner per shard,
// heal, wait for the fleet to settle again. An error is the harness's own
// failure (a process that cannot start); what the keepers do wrong is
// recorded as a violation.
func (r *runner) inject(ctx context.Context, f *FaultRecord) error {
	switch f.Kind {
	case FaultKill, FaultTerm:
		return r.stopKeeper(ctx, f)
	case FaultPause:
		return r.pause(ctx, f)
	case FaultRolling:
		return r.rolling(ctx, f)
	case FaultScaleOut:
		return r.scaleOut(ctx, f)
	case FaultScaleIn:
		return r.scaleIn(ctx, f)
	case FaultEtcdLeader, FaultEtcdFollower, FaultEtcdRestart:
		return r.etcdMember(ctx, f)
	case FaultEtcdQuorum:
		return r.etcdQuorum(ctx, f)
	case FaultEtcdPartition:
		return r.partition(ctx, f)
	case FaultRedisLatency, FaultRedisCut:
		return r.redisNetwork(ctx, f)
	case FaultRedisKill:
		return r.redisKill(ctx, f)
	case FaultRedisFailover:
		return r.failover(ctx, f)
	}
	return fmt.Errorf("unknown fault %q", f.Kind)
}

// term stops k with SIGTERM; not exiting within its budget is a violation
// (it is then killed).
func (r *runner) term(k *Keeper, f *FaultRecord) {
	if err := k.Term(termTimeout); err != nil {
		r.violation("%s at %.1fs: %v", f.Kind, f.At, err)
	}
	r.c.Remove(k)
}

func (r *runner) stopKeeper(ctx context.Context, f *FaultRecord) error {
	k := r.pickKeeper()
	f.Target = k.ID
	r.samp.note(ctx, k)
	from := time.Now()
	o := r.observe(ctx, from)
	if f.Kind == FaultKill {
		if err := k.Kill(); err != nil {
			return err
		}
		r.c.Remove(k)
		f.HeldS = time.Since(from).Seconds()
		f.EtcdLateS = r.members.lateness(k.ID, from, r.o.TTL).Seconds()
	} else {
		r.term(k, f)
		f.HeldS = time.Since(from).Seconds()
	}
	r.settled(f, o, "fault")
	return r.refill(ctx, f)
}

// frozenFor runs a fault that takes k out for longer than the session TTL
// (SIGSTOP, or cut from etcd): its successors must take its shards within
// the bound; then it is healed and must rejoin.
func (r *runner) frozenFor(ctx context.Context, f *FaultRecord, k *Keeper, inject, heal func() error) error {
	from := time.Now()
	o := r.observe(ctx, from)
	if err := inject(); err != nil {
		return err
	}
	f.EtcdLateS = r.members.lateness(k.ID, from, r.o.TTL).Seconds()
	r.settled(f, o, "fault")
	if err := hold(ctx, from, r.o.TTL+r.uniform(500*time.Millisecond, 3*time.Second)); err != nil {
		_ = heal()
		return err
	}
	if err := heal(); err != nil {
		return err
	}
	healed := time.Now()
	ho := r.observe(ctx, healed)
	f.HeldS = healed.Sub(from).Seconds()
	r.healSettle(ctx, f, ho)
	return nil
}

func (r *runner) pause(ctx context.Context, f *FaultRecord) error {
	k := r.pickKeeper()
	f.Target = k.ID
	r.freeze(ctx, k)
	return r.frozenFor(ctx, f, k, k.Pause, k.Resume)
}

// partition cuts one keeper from every etcd member (its Redis stays
// reachable) for longer than the TTL: it must stop housekeeping on its own
// before a successor takes its shards, which the recorded history shows,
// and never claim a shard its successor holds.
func (r *runner) partition(ctx context.Context, f *FaultRecord) error {
	k := r.pickKeeper()
	f.Target = k.ID
	r.samp.note(ctx, k)
	return r.frozenFor(ctx, f, k, func() error {
		for _, p := range k.EtcdProxies {
			if err := p.Blackhole(); err != nil {
				return err
			}
		}
		return nil
	}, func() error { return healAll(k.EtcdProxies) })
}

func (r *runner) rolling(ctx context.Context, f *FaultRecord) error {
	old := r.c.Keepers()
	f.Target = fmt.Sprintf("%d keepers", len(old))
	from := time.Now()
	var worst float64
	for _, k := range old {
		if _, err := r.addKeeper(ctx); err != nil {
			return err
		}
		if _, err := waitSpread(ctx, r.c.Keepers(), r.shards, time.Minute); err != nil {
			r.violation("%s at %.1fs: a new keeper got no shards within a minute: %v", f.Kind, f.At, err)
		}
		r.samp.note(ctx, k)
		if k.Paused() {
			_ = k.Resume()
		}
		sf := FaultRecord{Kind: f.Kind, Target: k.ID, At: f.At}
		o := r.observe(ctx, time.Now())
		r.term(k, f)
		r.settled(&sf, o, "fault")
		worst = max(worst, sf.SettleS)
		if sf.Error != "" {
			f.Error = sf.Error
		}
	}
	f.HeldS = time.Since(from).Seconds()
	f.SettleS, f.SettleFrom, f.SettledAt = worst, "fault", r.since()
	f.Detail = "settle is the slowest of the steps (each from its SIGTERM)"
	r.spread(ctx, f)
	return nil
}

func (r *runner) scaleOut(ctx context.Context, f *FaultRecord) error {
	n := 1 + r.rng.IntN(2)
	var ids []string
	for i := 0; i < n; i++ {
		k, err := r.addKeeper(ctx)
		if err != nil {
			return err
		}
		ids = append(ids, k.ID)
	}
	r.fleet = len(r.c.Keepers())
	f.Target = strings.Join(ids, ",")
	f.Detail = fmt.Sprintf("fleet %d; settle from the new keepers' start", r.fleet)
	from := time.Now()
	o := r.observe(ctx, from)
	r.spread(ctx, f)
	r.settled(f, o, "fault")
	return nil
}

func (r *runner) scaleIn(ctx context.Context, f *FaultRecord) error {
	n := min(1+r.rng.IntN(2), len(r.live())-2)
	if n < 1 {
		// Too few to shrink: grow first, then shrink by one.
		if _, err := r.addKeeper(ctx); err != nil {
			return err
		}
		if _, err := waitSpread(ctx, r.c.Keepers(), r.shards, time.Minute); err != nil {
			r.violation("%s at %.1fs: a new keeper got no shards within a minute: %v", f.Kind, f.At, err)
		}
		n = 1
	}
	ks := r.live()
	r.rng.Shuffle(len(ks), func(a, b int) { ks[a], ks[b] = ks[b], ks[a] })
	var ids []string
	from := time.Now()
	o := r.observe(ctx, from)
	for _, k := range ks[:n] {
		ids = append(ids, k.ID)
		r.samp.note(ctx, k)
		r.term(k, f)
	}
	r.fleet = len(r.c.Keepers())
	f.Target = strings.Join(ids, ",")
	f.Detail = fmt.Sprintf("fleet %d", r.fleet)
	f.HeldS = time.Since(from).Seconds()
	r.settled(f, o, "fault")
	return nil
}

// etcdMember kills the leader or a follower (and starts it again after a
// while), or restarts a member (SIGTERM, then start; settle is measured
// from the moment its process ended: a stopping member serves on while it
// shuts down).
func (r *runner) etcdMember(ctx context.Context, f *FaultRecord) error {
	ms := r.c.Etcd.Members()
	leader, err := r.c.Etcd.Leader(ctx)
	if err != nil {
		return err
	}
	var m *etcdserver.Member
	switch f.Kind {
	case FaultEtcdLeader:
		m = leader
	case FaultEtcdFollower:
		var fs []*etcdserver.Member
		for _, x := range ms {
			if x != leader {
				fs = append(fs, x)
			}
		}
		m = fs[r.rng.IntN(len(fs))]
	default:
		m = ms[r.rng.IntN(len(ms))]
		if m == leader {
			f.Detail = "the leader; "
		}
	}
	f.Target = m.Name
	var from, healed time.Time
	var o, ho *observation
	if f.Kind == FaultEtcdRestart {
		t := time.Now()
		if err := m.Stop(); err != nil {
			return err
		}
		from = time.Now()
		f.Detail += fmt.Sprintf("stopping took %.2fs; settle from its exit", from.Sub(t).Seconds())
		o = r.observe(ctx, from)
		if err := m.Start(); err != nil {
			return err
		}
		healed = time.Now()
		ho = r.observe(ctx, healed)
		r.settled(f, o, "fault")
		from = t
	} else {
		from = time.Now()
		o = r.observe(ctx, from)
		if err := m.Kill(); err != nil {
			return err
		}
		r.settled(f, o, "fault")
		if err := hold(ctx, from, r.uniform(500*time.Millisecond, 3*time.Second)); err != nil {
			return err
		}
		if err := m.Start(); err != nil {
			return err
		}
		healed = time.Now()
		ho = r.observe(ctx, healed)
	}
	f.HeldS = healed.Sub(from).Seconds()
	if err := r.etcdHealthy(ctx); err != nil {
		return err
	}
	r.healSettle(ctx, f, ho)
	return nil
}

func (r *runner) etcdHealthy(ctx context.Context) error {
	hctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return r.c.Etcd.WaitHealthy(hctx)
}

// etcdQuorum kills two of the three members for longer than the session
// TTL: every keeper loses its session and must stop; the fleet settles once
// etcd has a quorum again.
func (r *runner) etcdQuorum(ctx context.Context, f *FaultRecord) error {
	ms := r.c.Etcd.Members()
	r.rng.Shuffle(len(ms), func(a, b int) { ms[a], ms[b] = ms[b], ms[a] })
	down := ms[:len(ms)/2+1]
	var names []string
	from := time.Now()
	for _, m := range down {
		names = append(names, m.Name)
		if err := m.Kill(); err != nil {
			return err
		}
	}
	f.Target = strings.Join(names, ",")
	if err := hold(ctx, from, r.o.TTL+r.uniform(500*time.Millisecond, 2*time.Second)); err != nil {
		return err
	}
	back := time.Now()
	o := r.observe(ctx, back)
	for _, m := range down {
		if err := m.Start(); err != nil {
			return err
		}
	}
	f.HeldS = back.Sub(from).Seconds()
	if err := r.etcdHealthy(ctx); err != nil {
		return err
	}
	f.Detail = fmt.Sprintf("etcd healthy %.2fs after the restart", time.Since(back).Seconds())
	r.spread(ctx, f)
	r.settled(f, o, "heal")
	return nil
}

func healAll(ps []*faultproxy.Proxy) error {
	var errs []error
	for _, p := range ps {
		errs = append(errs, p.Heal())
	}
	return errors.Join(errs...)
}

// redisNetwork slows one keeper's Redis traffic down (latency, or
// connections that stop answering and time out), or cuts it. Its shards
// stay its own (etcd is fine), so their housekeeping waits: the lag shows.
func (r *runner) redisNetwork(ctx context.Context, f *FaultRecord) error {
	k := r.pickKeeper()
	f.Target = k.ID
	p := k.RedisProxy
	from := time.Now()
	o := r.observe(ctx, from)
	var err error
	d := r.uniform(time.Second, 5*time.Second)
	switch {
	case f.Kind == FaultRedisCut:
		err = p.Blackhole()
	case r.rng.IntN(2) == 0:
		lat := r.uniform(20*time.Millisecond, 500*time.Millisecond).Round(time.Millisecond)
		f.Detail = fmt.Sprintf("latency %s", lat)
		err = p.Latency(lat, lat/4)
	default:
		to := r.uniform(200*time.Millisecond, 2*time.Second).Round(time.Millisecond)
		f.Detail = fmt.Sprintf("timeouts after %s", to)
		err = p.Timeout(to)
	}
	if err != nil {
		return err
	}
	if err := hold(ctx, from, d); err != nil {
		return err
	}
	if err := p.Heal(); err != nil {
		return err
	}
	f.HeldS = time.Since(from).Seconds()
	r.settled(f, o, "fault")
	return nil
}

// redisKill kills the primary with SIGKILL and restarts it from its
// append-only file (fsynced on every write: nothing acknowledged is lost).
func (r *runner) redisKill(ctx context.Context, f *FaultRecord) error {
	f.Target = "primary " + r.c.Redis.PrimaryAddr()
	_ = r.hist.Collect(ctx)
	from := time.Now()
	if err := r.c.Redis.KillPrimary(); err != nil {
		return err
	}
	if err := hold(ctx, from, r.uniform(200*time.Millisecond, 2*time.Second)); err != nil {
		return err
	}
	back := time.Now()
	o := r.observe(ctx, back)
	f.HeldS = back.Sub(from).Seconds()
	if err := r.c.Redis.RestartPrimary(ctx); err != nil {
		return err
	}
	lost, err := r.hist.NewEpoch(ctx, fmt.Sprintf("redis-kill at %.1fs", f.At))
	if err != nil {
		return err
	}
	if lost > 0 {
		r.violation("redis-kill at %.1fs: %d recorded passes that Redis had acknowledged are gone after the restart from its append-only file", f.At, lost)
	}
	r.settled(f, o, "heal")
	return nil
}

// failover kills the primary once its replica has caught up, promotes the
// replica and switches every proxy to it, as Sentinel and a DNS or service
// switch would; the old primary comes back as the new one's replica.
// Writes the old primary acknowledged between the moment the replica was
// last seen caught up and the kill may be lost: clients' writes that
// completed in that window count as uncertain, nothing else.
func (r *runner) failover(ctx context.Context, f *FaultRecord) error {
	synced, err := r.c.Redis.WaitReplicaSynced(ctx, 2*time.Minute)
	if err != nil {
		return err
	}
	_ = r.hist.Collect(ctx)
	old := r.c.Redis.PrimaryAddr()
	if err := r.c.Redis.KillPrimary(); err != nil {
		return err
	}
	killed := time.Now()
	r.failovers = append(r.failovers, window{from: synced.UnixMilli(), to: killed.UnixMilli()})
	addr, err := r.c.Redis.Promote(ctx)
	if err != nil {
		return err
	}
	if err := r.c.SwitchRedis(addr); err != nil {
		return err
	}
	switched := time.Now()
	o := r.observe(ctx, switched)
	f.Target = fmt.Sprintf("%s -> %s", old, addr)
	lost, err := r.hist.NewEpoch(ctx, fmt.Sprintf("redis-failover at %.1fs", f.At))
	if err != nil {
		return err
	}
	f.Detail = fmt.Sprintf("switched %.0fms after the kill; %d recorded passes lost", switched.Sub(killed).Seconds()*1000, lost)
	r.settled(f, o, "heal")
	if err := r.c.Redis.Reattach(ctx); err != nil {
		return err
	}
	if _, err := r.c.Redis.WaitReplicaSynced(ctx, 2*time.Minute); err != nil {
		return err
	}
	f.HeldS = time.Since(killed).Seconds()
	return nil
}
