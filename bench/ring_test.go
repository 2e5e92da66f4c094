package bench

import (
	"context"
	"testing"
)

func TestRingSmall(t *testing.T) {
	res, err := Ring(context.Background(), RingOptions{MaxMembers: 30})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Scenario != "ring" || res.MembersMax != 30 || res.Joins == 0 || res.Leaves == 0 {
		t.Fatalf("unexpected result %+v", res)
	}
	if res.MaxLoadRatio > 1.25 || res.MaxMovedRatioToIdeal > 1.3 {
		t.Fatalf("ring out of bounds for N ≤ 30: %+v", res)
	}
}
