package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/otelcol"
	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/queue/deckardtest"
	"github.com/keeperhq/keeper/shard"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// deckardModel is what a randomized Deckard workload did: every id it
// added, and the ones it removed. An add or remove that the workload's end
// cut off (its context's error) may or may not have run: its ids are
// uncertain, in at most one pool.
type deckardModel struct {
	mu        sync.Mutex
	added     map[string]map[string]bool // queue -> ids
	removed   map[string]map[string]bool
	uncertain map[string]map[string]bool
	ops       map[string]int
}

func newDeckardModel(queues []string) *deckardModel {
	m := &deckardModel{added: map[string]map[string]bool{}, removed: map[string]map[string]bool{},
		uncertain: map[string]map[string]bool{}, ops: map[string]int{}}
	for _, q := range queues {
		m.added[q], m.removed[q], m.uncertain[q] = map[string]bool{}, map[string]bool{}, map[string]bool{}
	}
	return m
}

// cut notes ids whose add or remove the workload's end cut off.
func (m *deckardModel) cut(q string, ids []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range ids {
		m.uncertain[q][id] = true
	}
}

func (m *deckardModel) note(op string, q string, add, remove []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ops[op]++
	for _, id := range add {
		m.added[q][id] = true
	}
	for _, id := range remove {
		m.removed[q][id] = true
	}
}

// pick is a random id added to q and not removed, or "".
func (m *deckardModel) pick(r *rand.Rand, q string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id := range m.added[q] {
		if !m.removed[q][id] && r.IntN(4) == 0 {
			return id
		}
	}
	return ""
}

// deckardWorkload runs Deckard pods' client operations at random on the
// queues until ctx ends: adds (with Deckard's default score, a priority or
// 0), pulls with ack deadlines of 20–300 ms (some never answered: they time
// out), acks and nacks with and without a lock of 10–200 ms and with and
// without a score, and removes. Each pod has its own clock, off Redis's by
// up to 30 ms, as pods' clocks are.
func deckardWorkload(ctx context.Context, t *testing.T, f *deckardFleet, queues []string, workers int, m *deckardModel) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			pod := deckardtest.New(f.rdb, f.pod.Prefix())
			skew := time.Duration(r.IntN(61)-30) * time.Millisecond
			pod.SetClock(func() time.Time { return time.Now().Add(skew) })
			var pulled []struct{ q, id string }
			seq := 0
			for ctx.Err() == nil {
				q := queues[r.IntN(len(queues))]
				var err error
				switch op := r.IntN(100); {
				case op < 30:
					msgs := make([]deckardtest.Message, 1+r.IntN(5))
					ids := make([]string, len(msgs))
					for i := range msgs {
						seq++
						ids[i] = fmt.Sprintf("w%d-%d", w, seq)
						msgs[i].ID = ids[i]
						switch r.IntN(4) {
						case 0:
							msgs[i].Score = float64(r.IntN(1000))
						case 1:
							msgs[i].Score = 0
						}
					}
					_, err = pod.Add(ctx, q, msgs...)
					if err != nil && ctx.Err() != nil {
						m.cut(q, ids)
					} else {
						m.note("add", q, ids, nil)
					}
				case op < 60:
					var ids []string
					ids, err = pod.Pull(ctx, q, 1+r.IntN(5), deckardtest.Pull{AckDeadline: time.Duration(20+r.IntN(281)) * time.Millisecond})
					for _, id := range ids {
						pulled = append(pulled, struct{ q, id string }{q, id})
					}
					m.note("pull", q, nil, nil)
				case op < 93 && len(pulled) > 0:
					i := r.IntN(len(pulled))
					p := pulled[i]
					pulled = slices.Delete(pulled, i, i+1)
					var rep deckardtest.Reply
					if r.IntN(10) < 6 {
						rep.Lock = time.Duration(10+r.IntN(191)) * time.Millisecond
					}
					if r.IntN(2) == 0 {
						rep.Score = float64(1 + r.IntN(500))
					}
					f := pod.Ack
					name := "ack"
					if r.IntN(2) == 0 {
						f, name = pod.Nack, "nack"
					}
					if rep.Lock > 0 {
						name += "-lock"
					}
					_, err = f(ctx, p.q, p.id, rep)
					m.note(name, p.q, nil, nil)
				case op >= 97:
					if id := m.pick(r, q); id != "" {
						_, err = pod.Remove(ctx, q, id)
						if err != nil && ctx.Err() != nil {
							m.cut(q, []string{id})
						} else {
							m.note("remove", q, nil, []string{id})
						}
					}
				}
				if err != nil && ctx.Err() == nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

type fleetOptions struct {
	primaries int    // 0: one redis-server
	events    string // deckard.keyspace_events
	moves     bool   // start a third keeper and stop the first mid-run
	faults    bool   // three keepers; kill one (SIGKILL), pause another past its session TTL
	metrics   bool   // through a real collector
}

// A keeper fleet beside Deckard pods running a randomized workload: when
// the workload stops, the fleet has returned every timed-out and locked id
// (nothing left in flight or locked), every id added is in exactly one pool
// unless it was removed, removed ids are in none, no saved score is left
// behind, each queue's accepted tokens never decreased (history), and no
// key of keeper's matches a pattern Deckard scans. With moves, a keeper
// joins and one leaves during the run; with faults, one crashes and one is
// paused until etcd ends its session, and the survivors take their queues
// over while the paused one's late passes are refused (its accepted tokens
// would otherwise go down in the history); with metrics, the per-queue
// series at a real collector agree with Redis, one series each.
func TestDeckardFleetRandomized(t *testing.T) {
	t.Run("keyspace events, moves, metrics", func(t *testing.T) {
		runDeckardFleet(t, fleetOptions{events: "auto", moves: true, metrics: true})
	})
	t.Run("crash and pause", func(t *testing.T) {
		runDeckardFleet(t, fleetOptions{events: "auto", faults: true})
	})
	t.Run("polling", func(t *testing.T) { runDeckardFleet(t, fleetOptions{events: "off"}) })
	t.Run("cluster of three primaries", func(t *testing.T) {
		runDeckardFleet(t, fleetOptions{primaries: 3, events: "auto", moves: true})
	})
}

func runDeckardFleet(t *testing.T, o fleetOptions) {
	f := newDeckardFleetOn(t, "dk", o.primaries)
	queues := []string{"orders", "a::b", "c:tmp", "d:lock_ack", "sp ace", "f"}
	args := []string{"--redis.prefix", "dk", "--deckard.keyspace_events", o.events, "--tasks.record_history",
		"--deckard.poll_max", "200ms", "--tasks.measure_interval", "100ms"}
	var col *otelcol.Collector
	if o.metrics {
		col = otelcol.StartTB(t, otelcol.Config{MetricExpiration: 3 * time.Second})
		args = append(args, "--metrics.disabled=false", "--metrics.endpoint", "http://"+col.OTLPEndpoint(),
			"--metrics.export_interval", "200ms")
	}
	ks := []*keeperProc{f.start("fk-0", args...), f.start("fk-1", args...)}
	mode := "wake-ups by keyspace notifications"
	if o.events == "off" {
		mode = "wake-ups by polling"
	}
	poll.For(t, 30*time.Second, "the keeper says its wake mode", func() (bool, string) {
		b, _ := os.ReadFile(ks[1].logPath)
		return strings.Contains(string(b), mode), tail(ks[1].logPath, 5)
	})
	m := newDeckardModel(queues)
	run := 8 * time.Second
	var admin *clientv3.Client
	if o.faults {
		// Long enough for a pause past the session TTL (2 s).
		run = 12 * time.Second
		ks = append(ks, f.start("fk-2", args...))
		var err error
		if admin, err = clientv3.New(clientv3.Config{Endpoints: f.es.Endpoints(), DialTimeout: 5 * time.Second}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = admin.Close() })
	}
	ctx, cancel := context.WithTimeout(f.ctx, run)
	defer cancel()
	faultsDone := make(chan struct{})
	if o.faults {
		crashed, paused := ks[0], ks[1]
		go func() {
			defer close(faultsDone)
			select {
			case <-ctx.Done():
				return
			case <-time.After(run / 4):
			}
			if err := crashed.cmd.Process.Kill(); err != nil {
				t.Errorf("kill fk-0: %v", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(run / 4):
			}
			if err := paused.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
				t.Errorf("pause fk-1: %v", err)
				return
			}
			// Continued whatever happens, so that its cleanup can stop it.
			defer func() { _ = paused.cmd.Process.Signal(syscall.SIGCONT) }()
			// Paused until etcd ended its session: its member key went
			// with its lease.
			member := shard.NewKeys(shard.PrefixDefault).Member("fk-1")
			pctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
			defer cancel()
			if _, err := poll.Until(pctx, 50*time.Millisecond, func() (bool, string) {
				r, err := admin.Get(pctx, member, clientv3.WithCountOnly())
				if err != nil {
					return false, err.Error()
				}
				return r.Count == 0, member + " still there"
			}); err != nil {
				t.Errorf("fk-1's session outlived its pause: %v", err)
			}
		}()
	} else {
		close(faultsDone)
	}
	if o.moves {
		go func() {
			select {
			case <-ctx.Done():
				return
			case <-time.After(run / 3):
			}
			ks = append(ks, f.start("fk-2", args...))
			select {
			case <-ctx.Done():
				return
			case <-time.After(run / 3):
			}
			if _, err := ks[0].term(20 * time.Second); err != nil {
				t.Errorf("fk-0 stopped: %v", err)
			}
		}()
	}
	deckardWorkload(ctx, t, f, queues, 4, m)
	t.Logf("workload: %v", m.ops)
	<-faultsDone
	if o.faults {
		poll.For(t, 30*time.Second, "fk-1 learns it lost its session", func() (bool, string) {
			b, _ := os.ReadFile(ks[1].logPath)
			return strings.Contains(string(b), "session lost"), tail(ks[1].logPath, 5)
		})
	}

	dk, err := queue.NewDeckard(f.rdb, "dk", queue.DeckardWakeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	poll.For(t, 60*time.Second, "nothing left in flight or locked", func() (bool, string) {
		st, err := dk.StatsOf(f.ctx, queues)
		if err != nil {
			return false, err.Error()
		}
		for _, s := range st {
			if s.Inflight+s.LockAck+s.LockNack > 0 {
				return false, fmt.Sprintf("%s: %d in flight, %d+%d locked", s.Queue, s.Inflight, s.LockAck, s.LockNack)
			}
		}
		return true, ""
	})
	takenOver := 0 // queues that fk-0 and then another keeper wrote
	for _, q := range queues {
		keys := f.pod.Keys(q)
		where := map[string][]string{}
		for _, key := range []string{keys.Ready, keys.Tmp, keys.LockAck, keys.LockNack} {
			for id := range f.scores(key) {
				where[id] = append(where[id], key)
			}
		}
		for id := range m.uncertain[q] {
			if n := len(where[id]); n > 1 {
				t.Errorf("%s: id %s (its add or remove cut off) is in %d pools %v", q, id, n, where[id])
			}
			delete(where, id)
		}
		for id := range m.added[q] {
			if m.uncertain[q][id] {
				continue
			}
			switch n := len(where[id]); {
			case m.removed[q][id] && n != 0:
				t.Errorf("%s: removed id %s is in %v", q, id, where[id])
			case !m.removed[q][id] && n != 1:
				t.Errorf("%s: id %s is in %d pools %v", q, id, n, where[id])
			}
			delete(where, id)
		}
		if len(where) > 0 {
			t.Errorf("%s: ids nobody added: %v", q, where)
		}
		if n, _ := f.rdb.Exists(f.ctx, keys.LockAckScore, keys.LockNackScore).Result(); n != 0 {
			t.Errorf("%s: saved scores left behind", q)
		}
		h, err := dk.History(f.ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		var last int64
		owners := map[string]bool{}
		refused := 0
		for _, e := range h {
			if !e.Accepted {
				refused++
				continue
			}
			if e.Token < last {
				t.Errorf("%s: token %d accepted after %d", q, e.Token, last)
			}
			last = e.Token
			owners[e.Owner] = true
		}
		t.Logf("%s: %d ids added, %d removed; %d passes recorded (%d refused), %d owners", q, len(m.added[q]), len(m.removed[q]), len(h), refused, len(owners))
		for owner := range owners {
			if strings.HasPrefix(owner, "fk-0") && len(owners) > 1 {
				takenOver++
			}
		}
	}
	if o.faults && takenOver == 0 {
		t.Errorf("no queue of the crashed fk-0 passed to another keeper")
	}
	own, err := scanAll(f, dk.OwnKeysPattern())
	if err != nil {
		t.Fatal(err)
	}
	if len(own) < len(queues) {
		t.Fatalf("keeper keys %v: want at least a fence per queue", own)
	}
	for _, pattern := range f.pod.Patterns() {
		keys, err := f.pod.Scan(f.ctx, pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if slices.Contains(own, k) {
				t.Errorf("Deckard's pattern %s matches keeper's key %s", pattern, k)
			}
		}
	}
	if o.metrics {
		checkDeckardMetrics(t, f, col, dk, queues)
	}
}

func scanAll(f *deckardFleet, pattern string) ([]string, error) {
	return f.pod.Scan(f.ctx, pattern)
}

// checkDeckardMetrics waits until the collector's per-queue series agree
// with Redis: one series per queue and state (locked split by lock), and
// the unlock and timeout counters equal to keeper's own counts in Redis.
func checkDeckardMetrics(t *testing.T, f *deckardFleet, col *otelcol.Collector, dk *queue.Deckard, queues []string) {
	t.Helper()
	poll.For(t, 60*time.Second, "metrics agree with redis, one series each", func() (bool, string) {
		ss, err := col.Scrape(f.ctx)
		if err != nil {
			return false, err.Error()
		}
		st, err := dk.StatsOf(f.ctx, queues)
		if err != nil {
			return false, err.Error()
		}
		for _, s := range st {
			for _, c := range []struct {
				name  string
				match map[string]string
				want  int64
			}{
				{"keeper_queue_messages", map[string]string{"state": "ready"}, s.Ready},
				{"keeper_queue_messages", map[string]string{"state": "inflight"}, s.Inflight},
				{"keeper_queue_messages", map[string]string{"state": "locked", "lock": "ack"}, s.LockAck},
				{"keeper_queue_messages", map[string]string{"state": "locked", "lock": "nack"}, s.LockNack},
				{"keeper_queue_unlocked_total", map[string]string{"lock": "ack"}, s.Counters.UnlockedAck},
				{"keeper_queue_unlocked_total", map[string]string{"lock": "nack"}, s.Counters.UnlockedNack},
				{"keeper_queue_requeued_total", nil, s.Counters.Requeued},
			} {
				match := map[string]string{"queue": s.Queue}
				for k, v := range c.match {
					match[k] = v
				}
				got := otelcol.Select(ss, c.name, match)
				if len(got) != 1 || int64(got[0].Value) != c.want {
					return false, fmt.Sprintf("%s%v: %v, want one series at %d", c.name, match, got, c.want)
				}
			}
			if got := otelcol.Select(ss, "keeper_queue_messages", map[string]string{"queue": s.Queue, "state": "locked"}); len(got) != 2 {
				return false, fmt.Sprintf("locked series of %s: %v, want lock=ack and lock=nack only", s.Queue, got)
			}
		}
		return true, ""
	})
	ss, _ := col.Scrape(f.ctx)
	var lines []string
	for _, s := range otelcol.Select(ss, "keeper_queue_unlocked_total", map[string]string{"queue": "orders"}) {
		lines = append(lines, s.String())
	}
	t.Logf("collector: %s", strings.Join(lines, "; "))
}
