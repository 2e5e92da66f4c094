package shard

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/poll"
)

func TestStatusJSON(t *testing.T) {
	h := newHarness(t, 100)
	live := []*keeper{h.start("a"), h.start("b")}
	poll.For(t, 20*time.Second, "settled", h.settled(live))
	// A coordinator that was never started can report status.
	c := NewCoordinator(h.raw, Config{Prefix: "/t", Ring: RingConfig{Units: testPartitions}}, newRecorder(h.w, ""))
	c.SetShards(h.catalog)
	st, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 2 || st.Shards != 100 || len(st.Tokens) != usedUnits(h.catalog, testPartitions) || len(st.UnownedShards) != 0 {
		t.Fatalf("status: %d members, %d shards, %d tokens, %d unowned shards", len(st.Members), st.Shards, len(st.Tokens), len(st.UnownedShards))
	}
	total := 0
	for _, m := range st.Members {
		total += len(m.Shards)
	}
	if total != 100 {
		t.Fatalf("members own %d shards, want 100", total)
	}
}
