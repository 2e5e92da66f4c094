package bench

// The unlock-lag histogram a fleet benchmark scrapes from each keeper's
// Prometheus endpoint, and the quantiles it reports.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/keeperhq/keeper/otel"
)

// lagHistogram is the keeper.member.unlock.lag buckets summed over
// keepers: cumulative count by upper bound (seconds; +Inf last).
type lagHistogram map[float64]float64

// memberLagBucket starts the Prometheus lines of a keeper's own unlock-lag
// histogram (otel.MetricMemberUnlockLag): the lags of the passes it ran,
// recorded as they end. Not keeper.unlock.lag, which is the fleet's view
// read from Redis's counters by each shard's measurements (every 10 s, and
// counting any unlock in Redis, such as the bench's own seeding passes
// with their hour-old locks): scraped here it put more than 1 % of a
// window's unlocks over 5 s at every fleet size.
var memberLagBucket = strings.ReplaceAll(otel.MetricMemberUnlockLag, ".", "_") + "_seconds_bucket{"

// scrapeLag adds a keeper's unlock-lag buckets to h.
func scrapeLag(ctx context.Context, url string, h lagHistogram) error {
	return get(ctx, url, func(r io.Reader) error {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, memberLagBucket) {
				continue
			}
			_, rest, ok := strings.Cut(line, `le="`)
			if !ok {
				continue
			}
			le, rest, _ := strings.Cut(rest, `"`)
			bound := math.Inf(1)
			if le != "+Inf" {
				var err error
				if bound, err = strconv.ParseFloat(le, 64); err != nil {
					return fmt.Errorf("%s: bucket %q: %w", url, le, err)
				}
			}
			f := strings.Fields(rest)
			if len(f) == 0 {
				continue
			}
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				return fmt.Errorf("%s: %q: %w", url, line, err)
			}
			h[bound] += v
		}
		return sc.Err()
	})
}

func (h lagHistogram) minus(o lagHistogram) lagHistogram {
	d := lagHistogram{}
	for b, v := range h {
		d[b] = v - o[b]
	}
	return d
}

func (h lagHistogram) count() float64 { return h[math.Inf(1)] }

// quantile interpolates within the bucket holding the q-quantile, as
// Prometheus's histogram_quantile does (the +Inf bucket answers its lower
// bound).
func (h lagHistogram) quantile(q float64) float64 {
	bounds := make([]float64, 0, len(h))
	for b := range h {
		bounds = append(bounds, b)
	}
	slices.Sort(bounds)
	total := h.count()
	if total == 0 {
		return 0
	}
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range bounds {
		if h[b] >= rank {
			if math.IsInf(b, 1) {
				return lower
			}
			if h[b] == below {
				return b
			}
			return lower + (b-lower)*(rank-below)/(h[b]-below)
		}
		lower, below = b, h[b]
	}
	return lower
}
