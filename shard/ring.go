// Package shard decides which keeper owns which shard: membership in etcd,
// the consistent-hash ring over the live members, and ownership of ring
// partitions ("units") with fencing tokens. Shards are opaque strings here;
// this package knows nothing about Redis.
package shard

import (
	"encoding/binary"
	"math"
	"slices"
	"sync"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
)

// Ring defaults, chosen by measurement. bench.Ring over every member count
// N = 2…1000, with pod names ("keeper-<i>") and with random 16-hex-digit ids,
// a join N→N+1 at every N and a leave of a random member at every 10th N
// (and every N ≤ 20), gave for these defaults:
//
//	max units per member / mean            1.2497  (≤ 1.25 guaranteed, see Load)
//	units moved per change / ideal 1/N     1.2552  (worst, a join at N=756)
//
// What drives the choice: consistent's bounded-load cap is ceil(P/N × Load).
// With few units per member the natural spread of a member's share (about
// 1/√(P/N)) puts many members at that cap, and every change of the cap
// between N and N±1 then reassigns one unit of each capped member, in
// cascades. Worst moves measured over N ≤ 1000 (200 vnodes, Load at its
// 1.25-guaranteeing value): P=8192 25×, P=16384 9.5×, P=32768 2.5×,
// P=65536 1.36×, P=81920 1.31×, P=98304 1.25× ideal. Fewer vnodes (150) gave
// 1.31× at P=98304; more (256) did not help at P=65536. Every keeper keeps one
// etcd key per unit: 98304 keys are small for etcd (20 keepers acquire them
// all in a few seconds, see bench.Converge) and, unlike the partition count,
// do not grow with the number of shards. Fleets below ~200 keepers would meet
// both targets with P=16384; changing P later moves every unit once.
const (
	DefaultPartitions        = 98304
	DefaultReplicationFactor = 200
	DefaultLoad              = 1.2398
)

// MaxPartitions bounds RingConfig.Partitions. Every keeper recomputes the
// whole table on each membership change, in time linear in the partitions:
// measured on the 2-core test machine, 0.15–0.5 s at 98,304, 1.0–2.0 s at
// 262,144 and 1.8–4.3 s at 1,048,576 (3 and 100 members). A takeover must
// finish within the session TTL plus a second (invariant 4), so the ring may
// not be much larger than the default; the bound also caps the ownership
// keys in etcd, one per partition.
const MaxPartitions = 131072

// RingConfig shapes the ring. Zero values take the defaults above. Every
// keeper of a deployment must use the same values (the coordinator refuses to
// start otherwise).
type RingConfig struct {
	// Partitions is the number of ring partitions, which are also the
	// ownership units: one etcd key each.
	Partitions int `json:"partitions"`
	// ReplicationFactor is the number of virtual nodes per member.
	ReplicationFactor int `json:"replication_factor"`
	// Load is consistent's bounded-load factor: no member owns more than
	// ceil(Partitions/N × Load) units. Because of the ceiling, the bound
	// relative to the mean is Load + N/Partitions; the default is
	// 1.25 − 1000/98304 rounded down, so no member ever owns more than
	// 1.25 × the mean for N ≤ 1000 members. Values below 1 are raised to 1.
	Load float64 `json:"load"`
}

func (c RingConfig) withDefaults() RingConfig {
	if c.Partitions <= 0 {
		c.Partitions = DefaultPartitions
	}
	if c.ReplicationFactor <= 0 {
		c.ReplicationFactor = DefaultReplicationFactor
	}
	if c.Load == 0 {
		c.Load = DefaultLoad
	}
	if c.Load < 1 {
		c.Load = 1
	}
	return c
}

// UnitOf is the ownership unit (ring partition) of a shard. It depends only
// on the shard name and the partition count, never on the members, so every
// keeper and every tool agrees on it.
func UnitOf(shard string, partitions int) int {
	if partitions <= 0 {
		partitions = DefaultPartitions
	}
	return int(xxhash.Sum64String(shard) % uint64(partitions))
}

// Ring is an immutable ownership table: unit -> member.
type Ring struct {
	cfg     RingConfig
	members []string
	owner   []string
	units   map[string][]int

	// mu guards c, the consistent instance this table was computed from.
	// Next hands it to the successor ring so that one membership change
	// costs one redistribution, not a rebuild.
	mu sync.Mutex
	c  *consistent.Consistent
}

// NewRing computes the table for members (order and duplicates do not
// matter). Building from scratch costs one sort of all virtual nodes per
// member inside consistent; for large fleets prefer Next on the previous
// ring.
func NewRing(members []string, cfg RingConfig) *Ring {
	cfg = cfg.withDefaults()
	ms := normalize(members)
	var c *consistent.Consistent
	if len(ms) > 0 {
		cm := make([]consistent.Member, len(ms))
		for i, m := range ms {
			cm[i] = member(m)
		}
		c = consistent.New(cm, consistentConfig(cfg))
	}
	return newRingFrom(cfg, ms, c)
}

// Next returns the ring for members, reusing the state of r when that is
// cheaper than a rebuild (a few members joined or left). r stays valid. The
// result is identical to NewRing(members, r's config).
func (r *Ring) Next(members []string) *Ring {
	ms := normalize(members)
	r.mu.Lock()
	c := r.c
	r.c = nil
	r.mu.Unlock()
	if c == nil || len(ms) == 0 {
		return NewRing(ms, r.cfg)
	}
	add, del := diff(r.members, ms)
	if !incrementalCheaper(len(add)+len(del), len(ms), r.cfg) {
		return NewRing(ms, r.cfg)
	}
	// Add before Remove so the ring never becomes empty in between, which
	// consistent would answer by resetting its table.
	for _, m := range add {
		c.Add(member(m))
	}
	for _, m := range del {
		c.Remove(m)
	}
	return newRingFrom(r.cfg, ms, c)
}

// incrementalCheaper compares k Add/Remove calls (one sort of all virtual
// nodes and one redistribution of every partition each) with consistent.New
// (one sort per member, growing, and one redistribution).
func incrementalCheaper(k, n int, cfg RingConfig) bool {
	vnodes := float64(n * cfg.ReplicationFactor)
	sortCost := vnodes * math.Log2(vnodes+2)
	distCost := float64(cfg.Partitions) * math.Log2(vnodes+2) * 4
	incremental := float64(k) * (sortCost + distCost)
	rebuild := float64(n)/2*sortCost + distCost
	return incremental <= rebuild
}

func newRingFrom(cfg RingConfig, members []string, c *consistent.Consistent) *Ring {
	r := &Ring{
		cfg:     cfg,
		members: members,
		owner:   make([]string, cfg.Partitions),
		units:   make(map[string][]int, len(members)),
		c:       c,
	}
	if c == nil {
		return r
	}
	for u := range r.owner {
		m := c.GetPartitionOwner(u).String()
		r.owner[u] = m
		r.units[m] = append(r.units[m], u)
	}
	return r
}

// Config is the ring's configuration with defaults applied.
func (r *Ring) Config() RingConfig { return r.cfg }

// Members are the ring's members, sorted.
func (r *Ring) Members() []string { return slices.Clone(r.members) }

// Partitions is the number of units.
func (r *Ring) Partitions() int { return r.cfg.Partitions }

// Owner is the member that owns unit, or "" if the ring has no members or
// unit is out of range.
func (r *Ring) Owner(unit int) string {
	if unit < 0 || unit >= len(r.owner) {
		return ""
	}
	return r.owner[unit]
}

// Units are the units member owns, ascending.
func (r *Ring) Units(member string) []int { return slices.Clone(r.units[member]) }

// Loads is the number of units per member.
func (r *Ring) Loads() map[string]int {
	out := make(map[string]int, len(r.units))
	for m, us := range r.units {
		out[m] = len(us)
	}
	return out
}

// Moved counts the units whose owner differs between r and o (rings of the
// same configuration).
func (r *Ring) Moved(o *Ring) int {
	n := 0
	for u := range r.owner {
		if u >= len(o.owner) || r.owner[u] != o.owner[u] {
			n++
		}
	}
	return n
}

func normalize(members []string) []string {
	ms := slices.Clone(members)
	slices.Sort(ms)
	return slices.Compact(ms)
}

// diff returns the members in b but not a, and in a but not b; both sorted.
func diff(a, b []string) (add, del []string) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i] < b[j]):
			del = append(del, a[i])
			i++
		case i == len(a) || b[j] < a[i]:
			add = append(add, b[j])
			j++
		default:
			i++
			j++
		}
	}
	return add, del
}

type member string

func (m member) String() string { return string(m) }

func consistentConfig(cfg RingConfig) consistent.Config {
	return consistent.Config{
		Hasher:            ringHasher{step: math.MaxUint64 / uint64(cfg.Partitions)},
		PartitionCount:    cfg.Partitions,
		ReplicationFactor: cfg.ReplicationFactor,
		Load:              cfg.Load,
	}
}

// ringHasher is xxhash for the members' virtual nodes, but places partition
// p at p × 2⁶⁴/P: consistent hashes a partition id as 8 little-endian bytes
// and assigns partitions in id order, so evenly spaced partitions make that
// order the ring order. A bounded-load overflow then spills to the next
// virtual node clockwise, over partitions not yet placed, instead of
// reshuffling placements all around the ring. Measured at P=98304 over
// N ≤ 1000: worst moves 1.46× ideal with consistent's own partition hashing,
// 1.24× with this placement (4.1× → 2.5× at P=32768).
//
// Partition ids are below 2⁵⁶, so their last byte is 0; virtual-node keys are
// "<i>:<member>" in printable text (member ids are validated), so the two
// never collide.
type ringHasher struct{ step uint64 }

func (h ringHasher) Sum64(b []byte) uint64 {
	if len(b) == 8 && b[7] == 0 {
		return binary.LittleEndian.Uint64(b) * h.step
	}
	return xxhash.Sum64(b)
}
