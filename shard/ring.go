package shard

import (
	"cmp"
	"encoding/binary"
	"math"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"

	"github.com/keeperhq/keeper/queue"
)

// Ring defaults, chosen by measurement. bench.Ring over every member count
// N = 2…1000, with pod names ("keeper-<i>") and with random 16-hex-digit ids,
// a join N→N+1 at every N and a leave of a random member at every 10th N
// (and every N ≤ 20), gave for these defaults:
//
//	max units per member / mean            1.2497  (≤ 1.25 guaranteed, see Load)
//	units moved per change / ideal 1/N     1.2552  (worst, a join at N=756)
//
// P is the unit count (consistent calls units partitions). What drives the
// choice: consistent's bounded-load cap is ceil(P/N × Load).
// With few units per member the natural spread of a member's share (about
// 1/√(P/N)) puts many members at that cap, and every change of the cap
// between N and N±1 then reassigns one unit of each capped member, in
// cascades. Worst moves measured over N ≤ 1000 (200 vnodes, Load at its
// 1.25-guaranteeing value): P=8192 25×, P=16384 9.5×, P=32768 2.5×,
// P=65536 1.36×, P=81920 1.31×, P=98304 1.25× ideal. Fewer vnodes (150) gave
// 1.31× at P=98304; more (256) did not help at P=65536. Every keeper keeps one
// etcd key per unit: 98304 keys are small for etcd (20 keepers acquire them
// all in a few seconds, see bench.Converge) and, unlike the shard count,
// they are bounded. Fleets below ~200 keepers would meet
// both targets with P=16384; changing P later moves every unit once.
const (
	UnitsDefault             = 98304
	ReplicationFactorDefault = 200
	LoadDefault              = 1.2398
)

// MaxUnits bounds RingConfig.Units. Every keeper recomputes the whole table
// on each membership change, in time linear in the units and in the
// virtual nodes: measured on the (shared, loaded) 2-core test machine,
// 15–30 ms at 98,304 and 131,072 units with 3 or 100 members and 170 ms with
// 1000, 0.1–0.2 s at 262,144 and 0.2–0.35 s at 1,048,576. More units also
// mean more ownership keys in etcd (one per unit that holds a shard) and
// more of them to move in a takeover, which must finish within the session
// TTL plus a second (invariant 4); so the ring may not be much larger than
// the default.
const MaxUnits = 131072

// RingConfig shapes the ring. Zero values take the defaults above. Every
// keeper of a deployment must use the same values (the coordinator refuses to
// start otherwise).
type RingConfig struct {
	// Units is the number of ring partitions, which are the ownership
	// units: one etcd key each. Stored as "partitions", its name before
	// units had one, so that keepers of both versions agree on the
	// record at <prefix>ring during a rolling upgrade.
	Units int `json:"partitions"`
	// ReplicationFactor is the number of virtual nodes per member.
	ReplicationFactor int `json:"replication_factor"`
	// Load is consistent's bounded-load factor: no member owns more than
	// ceil(Units/N × Load) units. Because of the ceiling, the bound
	// relative to the mean is Load + N/Units; the default is
	// 1.25 − 1000/98304 rounded down, so no member ever owns more than
	// 1.25 × the mean for N ≤ 1000 members. Values below 1 are raised to 1.
	Load float64 `json:"load"`
}

func (c RingConfig) withDefaults() RingConfig {
	if c.Units <= 0 {
		c.Units = UnitsDefault
	}
	if c.ReplicationFactor <= 0 {
		c.ReplicationFactor = ReplicationFactorDefault
	}
	if c.Load == 0 {
		c.Load = LoadDefault
	}
	if c.Load < 1 {
		c.Load = 1
	}
	return c
}

// UnitOf is the ownership unit (ring partition) of a shard: the xxhash of
// its name modulo the unit count. It depends only on the shard and the unit
// count, never on the members, so every keeper and every tool agrees on it.
func UnitOf(s queue.Shard, units int) int {
	if units <= 0 {
		units = UnitsDefault
	}
	return int(xxhash.Sum64String(s.String()) % uint64(units))
}

// Ring is an immutable ownership table: unit -> member.
//
// The table is github.com/buraksezer/consistent v1.0.0's, with its bounded
// load and ringHasher (below): every keeper must compute the same one, and
// keepers that used the library itself must agree with keepers that use
// this. It is computed here rather than by the library because the library
// keeps it in maps (a map lookup per unit per step, a *Member allocation
// per unit), which made a membership change cost 80 ms on an idle 2-core
// machine and over half a second on a loaded one, on the critical path of
// every takeover and handoff; with slices it is a tenth of that.
// TestRingMatchesConsistent holds the two to the same table.
type Ring struct {
	cfg     RingConfig
	members []string
	owner   []string
	units   map[string][]int
}

// NewRing computes the table for members (order and duplicates do not
// matter).
func NewRing(members []string, cfg RingConfig) *Ring {
	cfg = cfg.withDefaults()
	ms := normalize(members)
	r := &Ring{
		cfg:     cfg,
		members: ms,
		owner:   make([]string, cfg.Units),
		units:   make(map[string][]int, len(ms)),
	}
	if len(ms) == 0 {
		return r
	}
	byMember := make([][]int, len(ms))
	for u, m := range distribute(cfg, ms) {
		r.owner[u] = ms[m]
		byMember[m] = append(byMember[m], u)
	}
	for m, us := range byMember {
		if len(us) > 0 {
			r.units[ms[m]] = us
		}
	}
	return r
}

// Next is the ring for members under r's configuration.
func (r *Ring) Next(members []string) *Ring { return NewRing(members, r.cfg) }

// vnode is one virtual node on the ring: its hash and its member's index.
type vnode struct {
	h uint64
	m int32
}

// distribute is consistent's table for members (sorted, distinct, at least
// one), as member indexes per unit. Like consistent.New it places
// ReplicationFactor virtual nodes per member at the hash of "<i>:<member>"
// (a later member wins a hash two share), and gives each unit, in unit
// order, to the member of the first virtual node at or after the unit's
// hash that has room under the bounded load ceil(Units/N × Load), walking
// clockwise past members that are full.
func distribute(cfg RingConfig, members []string) []int32 {
	hasher := ringHasher{step: math.MaxUint64 / uint64(cfg.Units)}
	vs := make([]vnode, 0, len(members)*cfg.ReplicationFactor)
	var buf []byte
	for m, name := range members {
		for i := 0; i < cfg.ReplicationFactor; i++ {
			buf = append(append(strconv.AppendInt(buf[:0], int64(i), 10), ':'), name...)
			vs = append(vs, vnode{h: hasher.Sum64(buf), m: int32(m)})
		}
	}
	slices.SortFunc(vs, func(a, b vnode) int { return cmp.Compare(a.h, b.h) })
	// consistent keeps one member per hash (the last added): give every
	// virtual node of a shared hash that member.
	for i := 0; i < len(vs); {
		j, last := i, vs[i].m
		for j < len(vs) && vs[j].h == vs[i].h {
			last = max(last, vs[j].m)
			j++
		}
		for ; i < j; i++ {
			vs[i].m = last
		}
	}
	avg := math.Ceil(float64(cfg.Units) / float64(len(members)) * cfg.Load)
	loads := make([]float64, len(members))
	owner := make([]int32, cfg.Units)
	next := 0 // unit hashes ascend with the unit: the search only moves on
	for u := range owner {
		key := hasher.unit(u)
		for next < len(vs) && vs[next].h < key {
			next++
		}
		i := next
		if i >= len(vs) {
			i = 0
		}
		for n := 1; ; n++ {
			if n > len(vs) {
				panic("not enough room to distribute partitions")
			}
			if m := vs[i].m; loads[m]+1 <= avg {
				owner[u] = m
				loads[m]++
				break
			}
			if i++; i >= len(vs) {
				i = 0
			}
		}
	}
	return owner
}

// Config is the ring's configuration with defaults applied.
func (r *Ring) Config() RingConfig { return r.cfg }

// Members are the ring's members, sorted.
func (r *Ring) Members() []string { return slices.Clone(r.members) }

// UnitCount is the number of units.
func (r *Ring) UnitCount() int { return r.cfg.Units }

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
		return h.unit(int(binary.LittleEndian.Uint64(b)))
	}
	return xxhash.Sum64(b)
}

// unit is the hash of unit u, where consistent places partition u.
func (h ringHasher) unit(u int) uint64 { return uint64(u) * h.step }
