package tasks

import (
	"context"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// subscribe feeds wake hints into the heap for as long as the keeper runs.
func (k *Keeper) subscribe(ctx context.Context) {
	for ctx.Err() == nil {
		err := k.layout.Wakes(ctx, k.onWake)
		if ctx.Err() != nil {
			return
		}
		k.log.Warn("wake subscription ended; resubscribing", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (k *Keeper) onWake(w queue.Wake) {
	switch {
	case w.ConfigChanged:
		k.signal(k.configChanged)
		return
	case w.Resync:
		// Hints sent while we were not subscribed are lost: look again.
		k.mu.Lock()
		if st, ok := k.shards[w.Shard]; ok {
			k.queueProbeLocked(st)
		}
		k.mu.Unlock()
		k.signal(k.probeCh)
		return
	}
	task := w.Due.Task
	if task >= numTasks {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	st, ok := k.shards[w.Shard]
	if !ok {
		return
	}
	switch {
	case st.deleted:
		// Written to again: the queue may have been created anew.
		k.queueProbeLocked(st)
		k.signal(k.probeCh)
		return
	case task == Measure:
		k.markDirtyLocked(st)
	case task == Trim:
		k.heap.schedule(st, task, monoNow())
	default:
		k.heap.schedule(st, task, k.localMono(w.Due.AtMs))
	}
	k.signal(k.kick)
}
