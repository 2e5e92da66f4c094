package bench

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// fenceWatch hears of every write to a shard's fence, by Redis keyspace
// notifications, to time a takeover without reading the fences again and
// again: polling 50,000 fences back to back took most of a core of this
// 2-core machine, and much of Redis, beside the takeover it timed (a
// keeper's claim is the write heard: the old owner writes no fence).
type fenceWatch struct {
	rdb     redis.UniversalClient
	in      *queue.Inspector
	sub     *redis.PubSub
	restore string // notify-keyspace-events before the watch
	done    chan struct{}

	mu    sync.Mutex
	since time.Time            // writes before it are not recorded
	first map[string]time.Time // fence key -> its first write since
	want  map[string]bool      // the fence keys waitAbove waits for
	heard int                  // how many of them have been written
}

// fenceChannels matches the keyspace channel of every fence key.
const fenceChannels = "__keyspace@*__:*fence"

// watchFences turns on keyspace notifications of string commands (K$) on
// rdb, which must be a single server whose CONFIG is allowed (the bench's
// own), and subscribes to the fences' channels. Close turns them back.
func watchFences(ctx context.Context, rdb redis.UniversalClient, in *queue.Inspector) (*fenceWatch, error) {
	cur, err := rdb.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		return nil, fmt.Errorf("read notify-keyspace-events: %w", err)
	}
	flags := cur["notify-keyspace-events"]
	want := flags
	for _, f := range "K$" {
		if !strings.ContainsRune(want, f) {
			want += string(f)
		}
	}
	if err := rdb.ConfigSet(ctx, "notify-keyspace-events", want).Err(); err != nil {
		return nil, fmt.Errorf("set notify-keyspace-events: %w", err)
	}
	sub := rdb.PSubscribe(ctx, fenceChannels)
	if _, err := sub.Receive(ctx); err != nil { // the subscription's confirmation
		_ = sub.Close()
		_ = rdb.ConfigSet(ctx, "notify-keyspace-events", flags).Err()
		return nil, fmt.Errorf("subscribe to fence writes: %w", err)
	}
	w := &fenceWatch{rdb: rdb, in: in, sub: sub, restore: flags, done: make(chan struct{}),
		first: map[string]time.Time{}}
	go w.read(sub.Channel(redis.WithChannelSize(100_000)))
	return w, nil
}

func (w *fenceWatch) read(ch <-chan *redis.Message) {
	defer close(w.done)
	for m := range ch {
		at := time.Now()
		_, key, ok := strings.Cut(m.Channel, "__:")
		if !ok {
			continue
		}
		w.mu.Lock()
		if _, seen := w.first[key]; !seen && !w.since.IsZero() {
			w.first[key] = at
			if w.want[key] {
				w.heard++
			}
		}
		w.mu.Unlock()
	}
}

// Close unsubscribes and restores notify-keyspace-events.
func (w *fenceWatch) Close() error {
	err := w.sub.Close()
	<-w.done
	if rerr := w.rdb.ConfigSet(context.Background(), "notify-keyspace-events", w.restore).Err(); err == nil {
		err = rerr
	}
	return err
}

// start forgets the writes heard so far: the event timed begins now.
func (w *fenceWatch) start() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.since = time.Now()
	clear(w.first)
	return w.since
}

// waitAbove waits until every shard's fence is above its token (tokens:
// shard name -> token) and returns when the last of them rose: the time
// its first write since start was heard. The fences are read (to confirm
// that the writes heard raised them above the tokens) when every shard
// left has been written, and at least every second in case a notification
// was lost; a shard found above its token without a write heard counts at
// the time of that read.
func (w *fenceWatch) waitAbove(ctx context.Context, tokens map[string]int64, limit time.Duration) (time.Time, error) {
	deadline := time.Now().Add(limit)
	left := make(map[queue.Shard]int64, len(tokens))
	key := make(map[queue.Shard]string, len(tokens))
	want := make(map[string]bool, len(tokens))
	for name, t := range tokens {
		s, err := queue.ParseShard(name)
		if err != nil {
			return time.Time{}, err
		}
		left[s], key[s] = t, w.in.FenceKey(s)
		want[key[s]] = true
	}
	w.mu.Lock()
	w.want, w.heard = want, 0
	for k := range want {
		if _, ok := w.first[k]; ok {
			w.heard++
		}
	}
	w.mu.Unlock()
	var last, read time.Time
	for len(left) > 0 {
		w.mu.Lock()
		all := w.heard == len(w.want)
		w.mu.Unlock()
		if all || time.Since(read) >= time.Second {
			shards := make([]queue.Shard, 0, len(left))
			for s := range left {
				shards = append(shards, s)
			}
			read = time.Now()
			// A failed read (a timeout while Redis is busy with the
			// takeover being timed) is tried again until the limit.
			fences, _ := w.in.Fences(ctx, shards)
			w.mu.Lock()
			for i, f := range fences {
				s := shards[i]
				if f <= left[s] {
					continue
				}
				at, ok := w.first[key[s]]
				if !ok || at.After(read) {
					at = read
				}
				if at.After(last) {
					last = at
				}
				delete(left, s)
			}
			w.mu.Unlock()
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return last, fmt.Errorf("%d shards not written by a new owner after %s", len(left), limit)
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return last, nil
}
