package queue

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Limits on queue config values. They keep one bad config from making a
// script unbounded or a shard count explode.
const (
	MaxPartitions      = 4096
	MaxLease           = 12 * time.Hour // SQS's visibility timeout maximum
	MaxPayloadLimit    = 64 << 20       // 64 MiB: far below Redis's 512 MB string cap
	DefaultPartitions  = 1
	DefaultLease       = 30 * time.Second
	DefaultMaxPayload  = 256 << 10 // 256 KiB, as SQS
	minLease           = time.Millisecond
	maxTTL             = 365 * 24 * time.Hour
	maxDeliveriesLimit = 1_000_000
	// MaxBatch is the most messages one housekeeping pass may handle
	// (tasks.batch). Every script is tested at it.
	MaxBatch = 10_000
)

// Config is a queue's configuration. It is stored as JSON in the registry
// hash, where the keeper and every client read it. Zero values take the
// defaults noted on each field.
type Config struct {
	// Partitions is the number of shards of the queue; default 1. It can be
	// raised later but never lowered, because lowering would strand the
	// messages of the removed partitions.
	Partitions int `json:"partitions,omitempty" yaml:"partitions"`
	// Lease is how long a pulled message stays invisible before the keeper
	// puts it back; default 30s. Pull can ask for another duration.
	Lease Duration `json:"lease,omitempty" yaml:"lease"`
	// MaxDeliveries moves a message to the dead set when a delivery fails
	// (lease expiry or nack) after it was delivered this many times; 0 means
	// unlimited.
	MaxDeliveries int `json:"max_deliveries,omitempty" yaml:"max_deliveries"`
	// TTL drops a message this long after its enqueue unless it was acked;
	// 0 means messages never expire.
	TTL Duration `json:"ttl,omitempty" yaml:"ttl"`
	// MaxSize caps ready+inflight+locked per partition; the keeper trims the
	// ready messages with the lowest score (the oldest, with default
	// priorities) above it. 0 means unbounded.
	MaxSize int `json:"max_size,omitempty" yaml:"max_size"`
	// MaxInFlight caps the messages leased at once over the whole queue; Pull
	// enforces it per partition as an even share (a partition gets
	// MaxInFlight/Partitions, the first MaxInFlight%Partitions one more), so
	// the check stays inside one hash slot. 0 means no cap.
	MaxInFlight int `json:"max_inflight,omitempty" yaml:"max_inflight"`
	// MaxPayloadBytes caps one message body; default 256 KiB.
	MaxPayloadBytes int `json:"max_payload_bytes,omitempty" yaml:"max_payload_bytes"`
}

// WithDefaults returns c with zero values replaced by their defaults.
func (c Config) WithDefaults() Config {
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	if c.Lease == 0 {
		c.Lease = Duration(DefaultLease)
	}
	if c.MaxPayloadBytes == 0 {
		c.MaxPayloadBytes = DefaultMaxPayload
	}
	return c
}

// Validate reports every problem with c at once, so an operator fixes a
// config in one round.
func (c Config) Validate() error {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if c.Partitions < 0 || c.Partitions > MaxPartitions {
		bad("partitions %d not in 1..%d", c.Partitions, MaxPartitions)
	}
	if c.Lease != 0 && (c.Lease.D() < minLease || c.Lease.D() > MaxLease) {
		bad("lease %s not in %s..%s", c.Lease, minLease, MaxLease)
	}
	if c.MaxDeliveries < 0 || c.MaxDeliveries > maxDeliveriesLimit {
		bad("max_deliveries %d not in 0..%d", c.MaxDeliveries, maxDeliveriesLimit)
	}
	if c.TTL < 0 || c.TTL.D() > maxTTL {
		bad("ttl %s not in 0..%s", c.TTL, maxTTL)
	}
	if c.TTL != 0 && c.TTL.D() < time.Millisecond {
		bad("ttl %s is below 1ms", c.TTL)
	}
	if c.MaxSize < 0 {
		bad("max_size %d is negative", c.MaxSize)
	}
	if c.MaxInFlight < 0 {
		bad("max_inflight %d is negative", c.MaxInFlight)
	}
	if c.MaxPayloadBytes < 0 || c.MaxPayloadBytes > MaxPayloadLimit {
		bad("max_payload_bytes %d not in 1..%d", c.MaxPayloadBytes, MaxPayloadLimit)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrBadConfig, joinProblems(problems))
	}
	return nil
}

// InFlightShare is partition p's part of MaxInFlight (0 = no cap).
func (c Config) InFlightShare(p int) int {
	if c.MaxInFlight == 0 {
		return 0
	}
	n := c.WithDefaults().Partitions
	share := c.MaxInFlight / n
	if p < c.MaxInFlight%n {
		share++
	}
	if share == 0 {
		// A cap below the partition count would block some partitions
		// forever; -1 tells Pull to take nothing from this one.
		return -1
	}
	return share
}

// ParseConfig decodes a JSON queue config strictly: unknown fields and
// trailing data are errors, because a typo such as "max_infligh" would
// otherwise silently mean "no cap".
func ParseConfig(data []byte) (Config, error) {
	var c Config
	if err := decodeStrict(data, &c); err != nil {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// decodeStrict decodes one JSON object into v, refusing unknown fields and
// trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadConfig, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON object", ErrBadConfig)
	}
	return nil
}

// stored is a registry entry: a queue's config and what the registry keeps
// beside it. It is written as one flat JSON object.
type stored struct {
	Config
	// Generation is raised on every write of the config, and set in every
	// shard of the queue before the config is published: enqueue and pull
	// refuse a client whose config is older (see lua/bump.lua).
	Generation int64 `json:"generation,omitempty"`
	// GrownFrom lists the queue's earlier partition counts, oldest first.
	// An enqueue looks for its id in the id's home under each of them
	// before it adds the id to its current home.
	GrownFrom []int `json:"grown_from,omitempty"`
}

// parseStored decodes a registry entry as strictly as ParseConfig.
func parseStored(data []byte) (stored, error) {
	var st stored
	if err := decodeStrict(data, &st); err != nil {
		return stored{}, err
	}
	if err := st.Config.Validate(); err != nil {
		return stored{}, err
	}
	st.Config = st.Config.WithDefaults()
	prev := 0
	for _, p := range st.GrownFrom {
		if p <= prev || p >= st.Partitions {
			return stored{}, fmt.Errorf("%w: grown_from %v must rise, each below partitions %d", ErrBadConfig, st.GrownFrom, st.Partitions)
		}
		prev = p
	}
	if st.Generation < 0 {
		return stored{}, fmt.Errorf("%w: generation %d is negative", ErrBadConfig, st.Generation)
	}
	return st, nil
}

func joinProblems(p []string) string {
	var b bytes.Buffer
	for i, s := range p {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s)
	}
	return b.String()
}

// Duration is a time.Duration that reads and writes as "30s" in JSON and
// YAML, and also accepts a number of milliseconds.
type Duration time.Duration

// D is the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

// UnmarshalJSON accepts "1.5s" or a number of milliseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		return d.parse(s)
	}
	var ms float64
	if err := json.Unmarshal(b, &ms); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\" or milliseconds: %s", b)
	}
	*d = Duration(ms * float64(time.Millisecond))
	return nil
}

// UnmarshalText lets YAML and flag parsers read "30s".
func (d *Duration) UnmarshalText(b []byte) error { return d.parse(string(b)) }

// MarshalText writes "30s".
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d *Duration) parse(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("bad duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}
