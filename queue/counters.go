package queue

import (
	"strconv"
	"strings"
)

// Counters are a shard's (or a queue's) cumulative counts since the queue
// was created. The scripts keep them in the shard's stats hash under the
// names of counterNames (the JSON names below); readCounter is the one
// place that maps a hash field to its Counters field.
type Counters struct {
	Enqueued     int64 `json:"enqueued"`
	Deduplicated int64 `json:"deduplicated"`
	Pulled       int64 `json:"pulled"`
	Acked        int64 `json:"acked"`
	Nacked       int64 `json:"nacked"`
	Unlocked     int64 `json:"unlocked"`
	Requeued     int64 `json:"requeued"`
	Expired      int64 `json:"expired"`
	DeadLettered int64 `json:"dead_lettered"`
	Trimmed      int64 `json:"trimmed"`
	// UnlockedAck and UnlockedNack split Unlocked by lock pool in the
	// Deckard layout (its :lock_ack and :lock_nack); 0 in the native one.
	UnlockedAck  int64 `json:"unlocked_ack"`
	UnlockedNack int64 `json:"unlocked_nack"`
}

// counterNames are the stats hash fields, in the order of fields().
var counterNames = [...]string{"enqueued", "deduplicated", "pulled", "acked", "nacked",
	"unlocked", "requeued", "expired", "dead_lettered", "trimmed", "unlocked_ack", "unlocked_nack"}

func (c *Counters) fields() [len(counterNames)]*int64 {
	return [...]*int64{&c.Enqueued, &c.Deduplicated, &c.Pulled, &c.Acked, &c.Nacked,
		&c.Unlocked, &c.Requeued, &c.Expired, &c.DeadLettered, &c.Trimmed, &c.UnlockedAck, &c.UnlockedNack}
}

// readCounter sets the counter of stats hash field name from its value;
// fields that are not counters (a hand edit) are ignored.
func (c *Counters) readCounter(name, value string) {
	for i, f := range c.fields() {
		if counterNames[i] == name {
			*f, _ = strconv.ParseInt(value, 10, 64)
			return
		}
	}
}

// readCounters sets c from a stats hash as HGETALL returns it.
func (c *Counters) readCounters(hash map[string]string) {
	for name, v := range hash {
		c.readCounter(name, v)
	}
}

// Add returns the sum of c and o, field by field.
func (c Counters) Add(o Counters) Counters {
	f, g := c.fields(), o.fields()
	for i := range f {
		*f[i] += *g[i]
	}
	return c
}

// Each calls fn with every counter's stats name and value, in a fixed order.
func (c Counters) Each(fn func(name string, v int64)) {
	for i, f := range c.fields() {
		fn(counterNames[i], *f)
	}
}

// LagBoundsUs are the upper bounds, in µs and inclusive, of the buckets of
// a shard's unlock-lag histogram (LagHistogram): from half a millisecond,
// keeper's precision, to 5 s, already a fault (invariant 6 allows the
// session TTL plus a second). luaPreamble hands them to the scripts.
var LagBoundsUs = [...]int64{500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000,
	500_000, 1_000_000, 2_500_000, 5_000_000}

// LagSumCapUs is the most one lag adds to LagHistogram.SumUs (a bit over
// a day): a pass of MaxBatch messages then adds less than 2^53 µs, which
// the unlock script's numbers (doubles) hold exactly, however stale the
// locks it moves. A lag above it is a fault an alert has long reported.
const LagSumCapUs = 100_000_000_000

// LagHistogram is a shard's unlock lags since the queue was created (moved
// time minus unlock time, both Redis TIME). The unlock script counts each
// message it moves in the stats hash, in the same script as the move, so
// it is exact, fenced like the move, and the same for whichever keeper
// reads it: a new owner continues the histogram of the old one.
type LagHistogram struct {
	// Counts[i] counts the lags in (LagBoundsUs[i-1], LagBoundsUs[i]]; the
	// last, those above every bound.
	Counts [len(LagBoundsUs) + 1]int64
	// SumUs is their sum in µs, each counted up to LagSumCapUs.
	SumUs int64
}

// Count is the number of lags counted.
func (h LagHistogram) Count() int64 {
	var n int64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// The stats hash fields of the lag histogram: "lag_le_<bound>us" per
// bucket, "lag_le_inf" for lags above every bound, and lagSumField.
const (
	lagSumField = "lag_sum_us"
	lagInfField = "lag_le_inf"
)

// lagField is the stats field of bucket i.
func lagField(i int) string {
	if i >= len(LagBoundsUs) {
		return lagInfField
	}
	return "lag_le_" + strconv.FormatInt(LagBoundsUs[i], 10) + "us"
}

// readLag sets h from a stats hash field if it is one of the histogram's;
// it reports whether it was.
func (h *LagHistogram) readLag(name, value string) bool {
	if !strings.HasPrefix(name, "lag_") {
		return false
	}
	v, _ := strconv.ParseInt(value, 10, 64)
	if name == lagSumField {
		h.SumUs = v
		return true
	}
	for i := range h.Counts {
		if name == lagField(i) {
			h.Counts[i] = v
			return true
		}
	}
	return false
}
