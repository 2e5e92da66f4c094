package bench

import (
	"context"
	"testing"
	"time"

	"github.com/keeperhq/keeper/queue"
)

// Small runs of the Deckard scenarios against a real redis-server; figures
// are logged, never asserted.
func TestDeckardDrainSmall(t *testing.T) {
	r, err := DeckardDrain(context.Background(), DrainOptions{Msgs: 20_000, Shards: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r.Layout != "deckard" || r.KeeperMsgsPerS <= 0 || r.RawMsgsPerS <= 0 {
		t.Fatalf("%+v", r)
	}
	t.Logf("%+v", r)
}

func TestDeckardPrecisionSmall(t *testing.T) {
	for _, wake := range []string{queue.WakeKeyspace, queue.WakePoll} {
		r, err := DeckardPrecision(context.Background(), DeckardPrecisionOptions{
			PrecisionOptions: PrecisionOptions{Locked: 20_000, Rate: 20_000, Shards: 2, Lead: 2 * time.Second},
			Wake:             wake, Fresh: 10})
		if err != nil {
			t.Fatal(err)
		}
		if r.Wake != wake || r.Locked != 20_000 || r.LagMax < r.LagP99 || r.LagP99 < r.LagP50 || r.FreshMax < r.FreshP50 {
			t.Fatalf("%+v", r)
		}
		t.Logf("%+v", r)
	}
}

func TestDeckardIdleSmall(t *testing.T) {
	r, err := DeckardIdle(context.Background(), DeckardIdleOptions{IdleOptions: IdleOptions{Shards: 500, Window: 3 * time.Second},
		Discovery: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if r.Shards != 500 || r.DiscoveryKeys != 500 || r.Wake != queue.WakeKeyspace {
		t.Fatalf("%+v", r)
	}
	t.Logf("%+v", r)
}
