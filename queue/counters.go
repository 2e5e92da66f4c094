package queue

import "strconv"

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
