package shard

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/buraksezer/consistent"
	"github.com/keeperhq/keeper/queue"
)

func podNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = "keeper-" + strconv.Itoa(i)
	}
	return out
}

func sameTable(t *testing.T, what string, a, b *Ring) {
	t.Helper()
	if a.UnitCount() != b.UnitCount() {
		t.Fatalf("%s: units %d vs %d", what, a.UnitCount(), b.UnitCount())
	}
	if d := a.Moved(b); d != 0 {
		t.Fatalf("%s: %d units differ", what, d)
	}
}

func TestUnitOfIsPureAndStable(t *testing.T) {
	for _, s := range []queue.Shard{{Queue: "orders"}, {Queue: "orders", Partition: 1}, {Queue: "a", Partition: 99}} {
		u := UnitOf(s, 1024)
		if u < 0 || u >= 1024 {
			t.Fatalf("UnitOf(%s) = %d out of range", s, u)
		}
		if UnitOf(s, 1024) != u {
			t.Fatalf("UnitOf(%s) not deterministic", s)
		}
	}
	// A golden value: changing the hash would move every shard of every
	// running deployment at the next rollout.
	orders0 := queue.Shard{Queue: "orders"}
	if got := UnitOf(orders0, UnitsDefault); got != UnitOf(orders0, 0) {
		t.Fatalf("UnitOf with 0 units does not use the default")
	}
	if got, want := UnitOf(orders0, 98304), 43315; got != want {
		t.Fatalf("UnitOf(orders#0, 98304) = %d, want %d", got, want)
	}
}

func TestRingDeterministic(t *testing.T) {
	cfg := RingConfig{Units: 4096, ReplicationFactor: 50}
	members := podNames(17)
	a := NewRing(members, cfg)
	shuffled := slices.Clone(members)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) {
		shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
	})
	b := NewRing(append(shuffled, shuffled[0]), cfg)
	sameTable(t, "shuffled with duplicate", a, b)
	if !slices.Equal(a.Members(), b.Members()) {
		t.Fatalf("members differ: %v vs %v", a.Members(), b.Members())
	}

	// Next, incrementally or by rebuild, must give exactly NewRing's table:
	// keepers that saw different histories must still agree.
	r := NewRing(members[:1], cfg)
	for n := 2; n <= len(members); n++ {
		r = r.Next(members[:n])
		sameTable(t, fmt.Sprintf("grow to %d", n), r, NewRing(members[:n], cfg))
	}
	without := slices.Delete(slices.Clone(members), 3, 4)
	r2 := r.Next(without)
	sameTable(t, "leave", r2, NewRing(without, cfg))
	// r handed its state to r2; a second Next on r rebuilds and still agrees.
	sameTable(t, "second Next on the same ring", r.Next(members[:5]), NewRing(members[:5], cfg))
	// A big change takes the rebuild path.
	sameTable(t, "replace all", r2.Next(podNames(40)[20:]), NewRing(podNames(40)[20:], cfg))
	// r itself is unchanged.
	sameTable(t, "old ring unchanged", r, NewRing(members, cfg))
}

func TestRingOwnerUnitsLoads(t *testing.T) {
	cfg := RingConfig{Units: 2048}
	r := NewRing([]string{"a", "b", "c"}, cfg)
	total := 0
	for m, n := range r.Loads() {
		us := r.Units(m)
		if len(us) != n {
			t.Fatalf("Units(%s) has %d, Loads says %d", m, len(us), n)
		}
		for _, u := range us {
			if r.Owner(u) != m {
				t.Fatalf("Owner(%d) = %s, Units(%s) lists it", u, r.Owner(u), m)
			}
		}
		total += n
	}
	if total != 2048 {
		t.Fatalf("units total %d, want 2048", total)
	}
	if r.Owner(-1) != "" || r.Owner(2048) != "" {
		t.Fatalf("out of range units have owners")
	}
	empty := NewRing(nil, cfg)
	if empty.Owner(0) != "" || len(empty.Loads()) != 0 {
		t.Fatalf("empty ring has owners")
	}
	if got := empty.Next([]string{"a"}).Owner(7); got != "a" {
		t.Fatalf("single member ring: owner %q", got)
	}
}

// The default Load must keep consistent's cap, ceil(P/N × Load) computed in
// float64 as consistent does, at or below 1.25 × the mean for every N up to
// 1000: this is what makes the max-load bound hold for any member names.
func TestLoadDefaultCapBound(t *testing.T) {
	p := float64(UnitsDefault)
	for n := 1; n <= 1000; n++ {
		capacity := math.Ceil(p / float64(n) * LoadDefault)
		if capacity > 1.25*p/float64(n) {
			t.Fatalf("N=%d: cap %v > 1.25 × mean %v", n, capacity, 1.25*p/float64(n))
		}
	}
}

func TestDefaultRingBalance(t *testing.T) {
	if testing.Short() {
		t.Skip("builds rings with the default 98304 partitions")
	}
	var prev *Ring
	for _, n := range []int{2, 3, 20, 21} {
		members := podNames(n)
		r := NewRing(members, RingConfig{})
		mean := float64(r.UnitCount()) / float64(n)
		for m, l := range r.Loads() {
			if float64(l) > 1.25*mean {
				t.Fatalf("N=%d: %s owns %d units, mean %.1f", n, m, l, mean)
			}
		}
		if prev != nil && len(prev.Members())+1 == n {
			moved := float64(prev.Moved(r)) / float64(r.UnitCount())
			t.Logf("join %d->%d moved %.4f of units (ideal %.4f)", n-1, n, moved, 1/float64(n))
			if moved > 1.3/float64(n) {
				t.Fatalf("join %d->%d moved %.4f, more than 1.3 × ideal", n-1, n, moved)
			}
		}
		prev = r
	}
}

// Partition keys and virtual-node keys must never hash alike by accident.
func TestRingHasherSeparatesKeys(t *testing.T) {
	h := ringHasher{step: math.MaxUint64 / 1000}
	b := make([]byte, 8)
	b[0] = 7
	if got := h.Sum64(b); got != 7*(math.MaxUint64/1000) {
		t.Fatalf("partition 7 at %d", got)
	}
	key := []byte("0:keeper") // 8 bytes of text: a virtual node
	if got := h.Sum64(key); got%(math.MaxUint64/1000) == 0 {
		t.Fatalf("virtual node key hashed like a partition: %d", got)
	}
}

// The ring works at both ends of the partitions keeper run accepts: every
// unit has an owner, and Next after a join gives the table NewRing does.
func TestRingAtPartitionBounds(t *testing.T) {
	for _, p := range []int{1, MaxUnits} {
		cfg := RingConfig{Units: p}
		r := NewRing(podNames(3), cfg)
		total := 0
		for _, n := range r.Loads() {
			total += n
		}
		if total != p || r.Owner(p-1) == "" {
			t.Fatalf("P=%d: %d units owned, last owned by %q", p, total, r.Owner(p-1))
		}
		sameTable(t, fmt.Sprintf("P=%d after a join", p), r.Next(podNames(4)), NewRing(podNames(4), cfg))
	}
}

// ringMember is a member of the reference ring (consistent.Member).
type ringMember string

func (m ringMember) String() string { return string(m) }

// reference is the table github.com/buraksezer/consistent v1.0.0 computes.
func reference(members []string, cfg RingConfig) []string {
	cfg = cfg.withDefaults()
	ms := normalize(members)
	cm := make([]consistent.Member, len(ms))
	for i, m := range ms {
		cm[i] = ringMember(m)
	}
	c := consistent.New(cm, consistent.Config{
		Hasher:            ringHasher{step: math.MaxUint64 / uint64(cfg.Units)},
		PartitionCount:    cfg.Units,
		ReplicationFactor: cfg.ReplicationFactor,
		Load:              cfg.Load,
	})
	out := make([]string, cfg.Units)
	for u := range out {
		out[u] = c.GetPartitionOwner(u).String()
	}
	return out
}

func randomIDs(rng *rand.Rand, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%016x", rng.Uint64())
	}
	return out
}

// The ring's table is consistent v1.0.0's, unit for unit, so that keepers
// that computed it with the library and keepers that compute it here agree
// during a rollout: pod names and random ids, the default ring and small
// ones where the bounded load makes units walk far.
func TestRingMatchesConsistent(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	cases := []struct {
		cfg     RingConfig
		members []string
	}{
		{RingConfig{}, podNames(1)},
		{RingConfig{}, podNames(2)},
		{RingConfig{}, podNames(3)},
		{RingConfig{}, randomIDs(rng, 7)},
		{RingConfig{}, podNames(64)},
		{RingConfig{}, randomIDs(rng, 150)},
		{RingConfig{Units: MaxUnits}, randomIDs(rng, 5)},
		{RingConfig{Units: 64, ReplicationFactor: 3}, randomIDs(rng, 100)},
		{RingConfig{Units: 1}, podNames(10)},
		{RingConfig{Units: 4096, ReplicationFactor: 50, Load: 1}, podNames(33)},
		{RingConfig{Units: 1000, ReplicationFactor: 1, Load: 1.05}, randomIDs(rng, 997)},
	}
	for _, c := range cases {
		got, want := NewRing(c.members, c.cfg), reference(c.members, c.cfg)
		for u, m := range want {
			if got.Owner(u) != m {
				t.Fatalf("%+v over %d members: unit %d owned by %q, consistent says %q", c.cfg, len(c.members), u, got.Owner(u), m)
			}
		}
	}
}
