package queue

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Deckard keeps no registry of its queues: a queue exists while one of its
// keys does. Discover finds them the way Deckard's own housekeeper does, by
// SCAN, but once for all the pools (one pattern, P:queue:{*}*) and, in a
// keeper fleet, once per discovery interval for the whole fleet (package
// election runs it on the aggregator leader only and publishes the set).

// discoverCount is the COUNT hint of each SCAN call: a call visits about
// this many keys, well under a millisecond of Redis time, and a keyspace
// of K keys costs about K/discoverCount calls per primary.
const discoverCount = 1000

// DiscoverStats is what one discovery cost Redis.
type DiscoverStats struct {
	// Calls is the SCAN calls made, over every primary.
	Calls int
	// Keys is the keys the pattern matched (Deckard keys of any pool).
	Keys int
	// Refused lists queue names keeper cannot housekeep (see
	// ValidateDeckardName), up to ten of them; RefusedCount counts all.
	Refused      []string
	RefusedCount int
}

// deckardPools are the key suffixes of a Deckard queue after its {Q}.
var deckardPools = map[string]bool{"": true, ":tmp": true, ":lock_ack": true, ":lock_nack": true,
	":lock_ack:score": true, ":lock_nack:score": true}

// globEscape escapes the glob characters of SCAN MATCH in s.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// discoverPattern is the SCAN pattern of every Deckard queue key.
func (d *Deckard) discoverPattern() string { return globEscape(d.prefix+":queue:{") + "*}*" }

// queueOfKey is the queue a Deckard key belongs to; false for a key of no
// pool (another tool's key that happens to match the pattern).
func (d *Deckard) queueOfKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, d.prefix+":queue:{")
	if !ok {
		return "", false
	}
	q, suffix, ok := strings.Cut(rest, "}")
	if !ok || !deckardPools[suffix] {
		return "", false
	}
	return q, true
}

// Discover lists the Deckard queues that have a key, sorted, by one SCAN of
// the server or of every primary of a cluster. Names keeper cannot
// housekeep are left out and reported in the stats.
func (d *Deckard) Discover(ctx context.Context) ([]string, DiscoverStats, error) {
	var (
		mu    sync.Mutex
		st    DiscoverStats
		found = map[string]bool{}
	)
	pattern := d.discoverPattern()
	err := eachPrimary(ctx, d.rdb, func(ctx context.Context, node *redis.Client) error {
		var cursor uint64
		for {
			keys, next, err := node.Scan(ctx, cursor, pattern, discoverCount).Result()
			if err != nil {
				return fmt.Errorf("scan %s: %w", node.Options().Addr, err)
			}
			mu.Lock()
			st.Calls++
			for _, k := range keys {
				if q, ok := d.queueOfKey(k); ok {
					st.Keys++
					found[q] = true
				}
			}
			mu.Unlock()
			if cursor = next; cursor == 0 {
				return nil
			}
		}
	})
	if err != nil {
		return nil, st, fmt.Errorf("deckard discovery: %w", err)
	}
	out := make([]string, 0, len(found))
	for q := range found {
		if ValidateDeckardName(q) != nil {
			st.RefusedCount++
			if len(st.Refused) < 10 {
				st.Refused = append(st.Refused, q)
			}
			continue
		}
		out = append(out, q)
	}
	sort.Strings(out)
	sort.Strings(st.Refused)
	return out, st, nil
}
