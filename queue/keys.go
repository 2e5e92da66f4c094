package queue

import "strings"

// DefaultPrefix is the Redis key prefix when none is configured.
const DefaultPrefix = "keeper"

// shardKeys are the Redis keys of one shard. Every key carries the hash tag
// {<queue>#<p>}, so each script touches one slot and runs on Redis Cluster.
type shardKeys struct {
	Ready      string // ZSET id -> priority score (lower first)
	Inflight   string // ZSET id -> lease deadline, ms
	Locked     string // ZSET id -> unlock time, ms
	Dead       string // ZSET id -> time dead-lettered, ms
	TTL        string // ZSET id -> expiry time, ms; only messages not in flight
	Body       string // HASH id -> payload
	Meta       string // HASH id -> "<enqueued ms>|<expires ms or 0>"
	Prio       string // HASH id -> score restored when the message returns to ready
	Dlv        string // HASH id -> deliveries so far
	Tok        string // HASH id -> delivery token of the current lease
	Seq        string // STRING counter that mints delivery tokens
	Fence      string // STRING highest ownership token accepted for housekeeping
	FenceOwner string // STRING identity (member id, process nonce) that presented the fence's token
	Clean      string // STRING present while nothing changed since the last measure
	Stats      string // HASH cumulative counters (enqueued, acked, unlocked, ...)
	History    string // STREAM of housekeeping passes, only when history is on
	TrimWake   string // STRING set while a trim wake is outstanding
	Deleted    string // STRING tombstone: the queue was deleted (see lua/drop.lua)
	Gen        string // STRING generation of the queue's config the shard was last set to (see lua/bump.lua)
	// Wake is a pub/sub channel, not a key: clients publish the shard's
	// deadline hints there, and only the shard's owner subscribes.
	Wake string
}

func keysFor(prefix string, s Shard) shardKeys { return keysUnder(prefix + ":{" + s.String() + "}:") }

// keysUnder names every key b + its name, the one place key names are
// made: keysUnder("") gives the bare names the .lua headers use.
func keysUnder(b string) shardKeys {
	return shardKeys{
		Ready: b + "ready", Inflight: b + "inflight", Locked: b + "locked", Dead: b + "dead",
		TTL: b + "ttl", Body: b + "body", Meta: b + "meta", Prio: b + "prio", Dlv: b + "dlv",
		Tok: b + "tok", Seq: b + "seq", Fence: b + "fence", FenceOwner: b + "owner", Clean: b + "clean", Stats: b + "stats",
		History: b + "history", TrimWake: b + "trimwake", Deleted: b + "deleted", Gen: b + "gen", Wake: b + "wake",
	}
}

// bareKeys are the key names without prefix and shard.
var bareKeys = keysUnder("")

// wakeChannel is keysFor(prefix, s).Wake without building the other keys:
// Watch names thousands of shards at a time.
func wakeChannel(prefix string, s Shard) string {
	return prefix + ":{" + s.String() + "}:" + bareKeys.Wake
}

// shardFenceKey is keysFor(prefix, s).Fence without building the other keys:
// a benchmark reads the fences of 50,000 shards at a time.
func shardFenceKey(prefix string, s Shard) string {
	return prefix + ":{" + s.String() + "}:" + bareKeys.Fence
}

// messages lists the keys a queue delete removes: all but control.
func (k shardKeys) messages() []string {
	return []string{k.Ready, k.Inflight, k.Locked, k.Dead, k.TTL, k.Body, k.Meta, k.Prio,
		k.Dlv, k.Tok, k.Clean, k.Stats, k.History, k.TrimWake}
}

// control lists the keys a queue delete keeps: the fence, its owner, the
// tombstone, the config generation, and the delivery token counter, so
// that a queue created again never hands out a token that a consumer of the
// deleted one still holds (that consumer's ack would take the new delivery
// of the same id).
func (k shardKeys) control() []string {
	return []string{k.Fence, k.FenceOwner, k.Deleted, k.Gen, k.Seq}
}

func (k shardKeys) all() []string { return append(k.messages(), k.control()...) }

func registryKey(prefix string) string { return prefix + ":queues" }

// generationKey is the counter that mints config generations, for every
// queue under prefix: a queue deleted and created again continues it.
func generationKey(prefix string) string { return prefix + ":queues:generation" }

// shardOfWakeChannel is the shard whose wake channel ch is.
func shardOfWakeChannel(prefix, ch string) (Shard, bool) {
	rest, ok := strings.CutPrefix(ch, prefix+":{")
	if !ok {
		return Shard{}, false
	}
	name, ok := strings.CutSuffix(rest, "}:wake")
	if !ok {
		return Shard{}, false
	}
	s, err := ParseShard(name)
	return s, err == nil
}
func configChannel(prefix string) string { return prefix + ":queues:changed" }
