package bench

import (
	"context"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
)

// Quantiles interpolate within the bucket, as histogram_quantile does.
func TestLagHistogramQuantile(t *testing.T) {
	h := lagHistogram{0.001: 50, 0.005: 90, 0.01: 100, math.Inf(1): 100}
	for _, c := range []struct{ q, want float64 }{{0.5, 0.001}, {0.7, 0.003}, {0.95, 0.0075}, {0.25, 0.0005}} {
		if got := h.quantile(c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("q%.2f = %v, want %v", c.q, got, c.want)
		}
	}
	// Beyond the last finite bound: that bound.
	h = lagHistogram{0.001: 50, math.Inf(1): 100}
	if got := h.quantile(0.99); got != 0.001 {
		t.Errorf("q0.99 past the last bound = %v", got)
	}
}

// The window's lags are the keepers' own (keeper.member.unlock.lag), not the
// fleet's view from Redis's counters (keeper.unlock.lag), which also counts
// unlocks the keepers did not make, such as the bench's seeding passes
// with hour-old locks, and moves only when a shard is measured. Read from
// the latter, more than 1 % of a window's unlocks were over 5 s at every
// fleet size.
func TestScrapeLagReadsTheKeepersOwnHistogram(t *testing.T) {
	const page = `# TYPE keeper_unlock_lag_seconds histogram
keeper_unlock_lag_seconds_bucket{queue="q",shard="q#0",le="0.001"} 0
keeper_unlock_lag_seconds_bucket{queue="q",shard="q#0",le="+Inf"} 45000
# TYPE keeper_member_unlock_lag_seconds histogram
keeper_member_unlock_lag_seconds_bucket{otel_scope_name="keeper",le="0.001"} 90
keeper_member_unlock_lag_seconds_bucket{otel_scope_name="keeper",le="+Inf"} 100
`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(page)) }))
	t.Cleanup(srv.Close)
	h := lagHistogram{}
	if err := scrapeLag(context.Background(), srv.URL, h); err != nil {
		t.Fatal(err)
	}
	if h[0.001] != 90 || h.count() != 100 {
		t.Fatalf("scraped %v, want the member histogram's 90 of 100", h)
	}
}
