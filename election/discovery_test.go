package election

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keeperhq/keeper/internal/poll"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/internal/service"
	"github.com/keeperhq/keeper/internal/service/servicetest"
	"github.com/keeperhq/keeper/queue"
	"github.com/keeperhq/keeper/queue/deckardtest"
)

// scanLog records every scan the fleet runs: which keeper, when it started
// and what it found.
type scanLog struct {
	mu    sync.Mutex
	scans []scanEntry
}

type scanEntry struct {
	by     string
	start  time.Time
	queues []string
}

func (l *scanLog) scanner(by string, dk *queue.Deckard) func(context.Context) ([]string, queue.DiscoverStats, error) {
	return func(ctx context.Context) ([]string, queue.DiscoverStats, error) {
		start := time.Now()
		qs, st, err := dk.Discover(ctx)
		l.mu.Lock()
		l.scans = append(l.scans, scanEntry{by: by, start: start, queues: qs})
		l.mu.Unlock()
		return qs, st, err
	}
}

func (l *scanLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.scans)
}

func (l *scanLog) all() []scanEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.scans)
}

type discoverer struct {
	agg     *Aggregator
	d       *Discovery
	mu      sync.Mutex
	changes [][]string
}

func (x *discoverer) last() []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	if len(x.changes) == 0 {
		return nil
	}
	return x.changes[len(x.changes)-1]
}

// The fleet scans once per interval, on the leader only, and every keeper
// gets the set: a queue created while the fleet runs is found by the first
// scan that starts after it appeared; a queue whose keys are gone leaves
// the set after ForgetAfter; a new leader takes over the scans; a keeper
// that starts later reads the set at once.
func TestDiscoveryFleet(t *testing.T) {
	c := newCluster(t)
	rs := redisserver.StartTB(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	dk, err := queue.NewDeckard(rdb, "dk", queue.DeckardWakeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	pod := deckardtest.New(rdb, "dk")
	ctx := context.Background()
	const interval = 300 * time.Millisecond
	log := &scanLog{}
	start := func(id string) *discoverer {
		x := &discoverer{}
		x.agg = c.aggregator(id, Config{}, nil)
		x.d = NewDiscovery(c.clientTo(c.srv.Endpoints()), DiscoveryConfig{Interval: interval, ForgetAfter: 3 * interval,
			Scan: log.scanner(id, dk), Leader: x.agg, MemberID: id, Logger: c.log,
			OnChange: func(qs []string) { x.mu.Lock(); x.changes = append(x.changes, qs); x.mu.Unlock() }})
		if err := x.d.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = x.d.Stop(context.Background()) })
		return x
	}
	fleet := []*discoverer{start("k0"), start("k1"), start("k2")}
	allHave := func(fleet []*discoverer, what string, want []string) {
		t.Helper()
		poll.For(t, 20*time.Second, what, func() (bool, string) {
			for i, x := range fleet {
				if got := x.last(); !slices.Equal(got, want) {
					return false, fmt.Sprintf("keeper %d has %v", i, got)
				}
			}
			return true, ""
		})
	}
	add := func(q string) {
		t.Helper()
		if _, err := pod.Add(ctx, q, deckardtest.Message{ID: "m"}); err != nil {
			t.Fatal(err)
		}
	}
	add("a")
	allHave(fleet, "queue a everywhere", []string{"a"})

	// A queue created now is in the first scan that starts after it.
	before := log.count()
	add("b::c")
	allHave(fleet, "queue b::c everywhere", []string{"a", "b::c"})
	first := -1
	for i, s := range log.all() {
		if slices.Contains(s.queues, "b::c") {
			first = i
			break
		}
	}
	if first > before {
		t.Fatalf("b::c first found by scan %d; scans started before it was created: %d", first+1, before)
	}

	// Only the leader scans, one interval apart.
	leader := oneLeader(t, []*Aggregator{fleet[0].agg, fleet[1].agg, fleet[2].agg}, 20*time.Second)
	scans := log.all()
	for i, s := range scans {
		if s.by != leader.MemberID() {
			t.Fatalf("scan %d by %s, the leader is %s", i, s.by, leader.MemberID())
		}
		if i > 0 && s.start.Sub(scans[i-1].start) < interval {
			t.Fatalf("scans %d and %d %s apart, the interval is %s", i, i+1, s.start.Sub(scans[i-1].start), interval)
		}
	}
	t.Logf("%d scans, all by the leader %s, at least %s apart", len(scans), leader.MemberID(), interval)

	// A queue whose keys are gone leaves the set once ForgetAfter passed.
	if _, err := pod.Remove(ctx, "a", "m"); err != nil {
		t.Fatal(err)
	}
	allHave(fleet, "queue a forgotten", []string{"b::c"})

	// The leader goes; its successor scans.
	var rest []*discoverer
	for _, x := range fleet {
		if x.agg == leader {
			stopCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_ = x.d.Stop(stopCtx)
			_ = x.agg.Stop(stopCtx)
			cancel()
		} else {
			rest = append(rest, x)
		}
	}
	add("d")
	allHave(rest, "queue d found by the new leader", []string{"b::c", "d"})
	next := oneLeader(t, []*Aggregator{rest[0].agg, rest[1].agg}, 20*time.Second)
	if s := log.all(); s[len(s)-1].by != next.MemberID() {
		t.Fatalf("last scan by %s, the leader is %s", s[len(s)-1].by, next.MemberID())
	}
	// A keeper that starts now has the set from its Start on.
	late := start("k3")
	if got := late.d.Queues(); !slices.Equal(got, []string{"b::c", "d"}) {
		t.Fatalf("a late keeper starts with %v", got)
	}
	rec, ok, err := ReadDiscovered(ctx, c.admin, late.d.keys)
	if err != nil || !ok || rec.By != next.MemberID() || rec.Seq < 4 {
		t.Fatalf("published record %+v, %v, %v", rec, ok, err)
	}
}

// The stored set round-trips, and a set too large for an etcd request is
// refused with a clear error rather than written.
func TestDiscoveredEncoding(t *testing.T) {
	in := DiscoveredSet{Seq: 3, AtMs: 5, By: "k", Queues: []string{"b", "a", "a"}}
	v, err := EncodeDiscovered(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeDiscovered(v)
	if err != nil || out.Seq != 3 || !slices.Equal(out.Queues, []string{"a", "b"}) {
		t.Fatalf("round trip %+v, %v", out, err)
	}
	// Random hex names compress about half: 80,000 are about 1.4 MiB compressed.
	big := make([]string, 80_000)
	for i := range big {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		big[i] = hex.EncodeToString(b)
	}
	if _, err := EncodeDiscovered(DiscoveredSet{Queues: big}); err == nil || !strings.Contains(err.Error(), "over the") {
		t.Fatalf("a set over the limit: %v", err)
	}
	if _, err := DecodeDiscovered([]byte("not gzip")); err == nil {
		t.Fatal("garbage decoded")
	}
}

// Discovery keeps the lifecycle rules (internal/service), leading or not.
func TestDiscoveryStartStop(t *testing.T) {
	c := newCluster(t)
	leader := c.aggregator("lead", Config{}, nil)
	oneLeader(t, []*Aggregator{leader}, 20*time.Second)
	scan := func(context.Context) ([]string, queue.DiscoverStats, error) {
		return []string{"q"}, queue.DiscoverStats{}, nil
	}
	n := 0
	servicetest.Stress(t, 10, func(t *testing.T) service.Service {
		n++
		agg := leader
		if n%2 == 0 {
			agg = nil
		}
		return NewDiscovery(c.admin, DiscoveryConfig{Interval: 10 * time.Millisecond, Scan: scan, Leader: agg,
			MemberID: fmt.Sprint("d", n), Logger: c.log})
	})
}
