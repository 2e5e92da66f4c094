package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/keeperhq/keeper/chaos"
	"github.com/keeperhq/keeper/internal/etcdserver"
	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/keeperhq/keeper/queue"
	"github.com/redis/go-redis/v9"
)

// ScaleoutOptions configures the scaleout scenario. Zero values take the
// defaults noted.
type ScaleoutOptions struct {
	// Keepers are the fleet sizes run in turn; default 1, 2, 4, 8.
	Keepers []int
	Shards  int // default 2,000 (queues of up to 1,000 partitions)
	Rate    int // unlocks per second over all shards; default 30,000
	Leases  int // leases expiring per second over all shards; default 5,000
	// Window is how long each fleet is measured, once every shard is owned
	// and the streams run; default 20s.
	Window time.Duration
	// KeeperBin is the keeper binary; default as chaos.KeeperBinary.
	KeeperBin string
	// EtcdBin is the etcd server binary; default etcdserver.Binary().
	EtcdBin string
	// LogDir keeps the keepers' logs; default a temp dir removed after.
	LogDir string
}

// ScaleoutResult is one line of `keeper bench scaleout --json`: one fleet
// size. Per-keeper figures are in the order of the keepers' ids.
type ScaleoutResult struct {
	Scenario string  `json:"scenario"`
	Keepers  int     `json:"keepers"`
	Shards   int     `json:"shards"`
	Rate     int     `json:"unlocks_per_s"`
	Leases   int     `json:"leases_per_s"`
	WindowS  float64 `json:"window_s"`
	// ShardsPerKeeper is what each keeper owned in the window.
	ShardsPerKeeper []int `json:"shards_per_keeper"`
	// KeeperCPU is each keeper process's CPU time (user+system) over the
	// window, as a fraction of one core; mean and max over the keepers.
	KeeperCPU     []float64 `json:"keeper_cpu"`
	KeeperCPUMean float64   `json:"keeper_cpu_mean"`
	KeeperCPUMax  float64   `json:"keeper_cpu_max"`
	// KeeperCmdsPerS is the commands each keeper sent to Redis per second
	// (its own count: a script call is one, and carries the passes of up
	// to 32 shards, more of them the more shards a keeper holds), and their
	// sum. RedisCmdsPerS, which counts the work, is what shows duplicates.
	KeeperCmdsPerS []float64 `json:"keeper_redis_cmds_per_s"`
	KeeperCmdsSum  float64   `json:"keeper_redis_cmds_per_s_sum"`
	// RedisCmdsPerS is every command Redis ran per second (INFO
	// commandstats, the commands scripts run included), less the bench's own.
	RedisCmdsPerS float64 `json:"redis_cmds_per_s"`
	// Unlocked and Requeued are what the fleet moved in the window (the
	// keepers' own unlock-lag histograms, and Redis's requeued counters).
	Unlocked int64 `json:"unlocked"`
	Requeued int64 `json:"requeued"`
	// Lag quantiles of the unlocks in the window, from the keepers'
	// keeper.member.unlock.lag histograms (as histogram_quantile reads them:
	// interpolated within the bucket), in ms.
	LagP50 float64 `json:"lag_p50_ms"`
	LagP99 float64 `json:"lag_p99_ms"`
	// HostStallMaxMs is the longest time the bench's process ran nothing
	// in the window (see PrecisionResult.HostStallMaxMs).
	HostStallMaxMs float64 `json:"host_stall_max_ms"`
	// HostStealPct is the share of the machine the hypervisor gave to
	// other guests in the window (-1: unknown).
	HostStealPct float64 `json:"host_steal_pct"`
	// HostCalibMs: see PrecisionResult.HostCalibMs (before and after the
	// window).
	HostCalibMs float64 `json:"host_calib_ms"`
	// BehindAtStart counts the shards more than 200 ms behind their locks
	// when the window began (0 unless the fleet had not caught up by the
	// latest start the stream allows), BehindAtEnd those more than a
	// second behind when it ended: all of them when the fleet fell behind
	// as a whole, a few when some shards were left without passes.
	BehindAtStart int `json:"shards_behind_at_start"`
	BehindAtEnd   int `json:"shards_behind_at_end"`
}

// Scaleout runs one fixed workload with each fleet size in turn: Shards
// shards of one queue where locks expire at Rate per second and leases at
// Leases per second, housekept by that many `keeper run` processes against
// one redis-server and one etcd (real processes, on loopback). For each
// fleet it seeds the work afresh (a new queue), starts the keepers, waits
// until every shard has exactly one owner and the streams have begun, then
// measures over Window what each keeper costs (CPU, Redis commands), what
// Redis ran in total, and the unlock lag.
func Scaleout(ctx context.Context, o ScaleoutOptions) ([]ScaleoutResult, error) {
	if len(o.Keepers) == 0 {
		o.Keepers = []int{1, 2, 4, 8}
	}
	if o.Shards <= 0 {
		o.Shards = 2000
	}
	if o.Rate <= 0 {
		o.Rate = 30_000
	}
	if o.Leases < 0 {
		return nil, fmt.Errorf("leases per second %d < 0", o.Leases)
	}
	if o.Leases == 0 {
		o.Leases = 5000
	}
	if o.Window <= 0 {
		o.Window = 20 * time.Second
	}
	if o.KeeperBin == "" {
		bin, err := chaos.KeeperBinary()
		if err != nil {
			return nil, err
		}
		o.KeeperBin = bin
	}
	logDir := o.LogDir
	if logDir == "" {
		d, err := os.MkdirTemp("", "keeper-bench-scaleout-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		logDir = d
	} else if err := os.MkdirAll(logDir, 0o755); err != nil {
		return nil, err
	}
	srv, err := redisserver.Start(ctx, redisserver.Config{})
	if err != nil {
		return nil, err
	}
	defer func() { _ = srv.Stop() }()
	rdb := redis.NewClient(benchRedisOptions(srv.Addr))
	defer rdb.Close()
	etcd, err := etcdserver.StartProcesses(ctx, etcdserver.ProcessConfig{Members: 1, Binary: o.EtcdBin,
		Dir: filepath.Join(logDir, "etcd")})
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	defer func() { _ = etcd.Stop() }()
	env := scaleoutEnv{o: o, rdb: rdb, redisAddr: srv.Addr, etcd: strings.Join(etcd.Endpoints(), ","), logDir: logDir}
	var out []ScaleoutResult
	for _, n := range o.Keepers {
		if n < 1 {
			return out, fmt.Errorf("a fleet of %d keepers", n)
		}
		r, err := env.run(ctx, n)
		if err != nil {
			return out, fmt.Errorf("%d keepers: %w", n, err)
		}
		out = append(out, r)
	}
	return out, nil
}

type scaleoutEnv struct {
	o         ScaleoutOptions
	rdb       *redis.Client
	redisAddr string
	etcd      string
	logDir    string
}

// run measures one fleet of n keepers.
func (e scaleoutEnv) run(ctx context.Context, n int) (ScaleoutResult, error) {
	o := e.o
	shards, cfgs, drop, err := benchQueues(ctx, e.rdb, fmt.Sprintf("bench-scaleout-%d", n), o.Shards, 1000)
	if err != nil {
		return ScaleoutResult{}, err
	}
	defer drop()
	names := slices.Sorted(maps.Keys(cfgs))

	// The keepers start after seeding and need some seconds to share the
	// shards out; the streams start after that and run past the window.
	lead := 10*time.Second + time.Duration(n)*time.Second
	span := lead + o.Window + 10*time.Second
	// The leases' messages first: making them ready runs unlock passes,
	// which must not take any of the stream.
	if err := e.seedLeases(ctx, shards, int(float64(o.Leases)*span.Seconds())); err != nil {
		return ScaleoutResult{}, err
	}
	now, err := redisNow(ctx, e.rdb)
	if err != nil {
		return ScaleoutResult{}, err
	}
	stream, err := newLockStream(ctx, e.rdb, shards, int(float64(o.Rate)*span.Seconds()), o.Rate, now.Add(lead))
	if err != nil {
		return ScaleoutResult{}, err
	}
	first, err := stream.rotate(ctx, lead)
	if err != nil {
		return ScaleoutResult{}, err
	}
	if err := e.pullLeases(ctx, names, first, int(float64(o.Leases)*span.Seconds())); err != nil {
		return ScaleoutResult{}, err
	}

	fleet := make([]*fleetKeeper, 0, n)
	defer func() {
		for _, k := range fleet {
			k.stop()
		}
	}()
	for i := 0; i < n; i++ {
		k, err := e.startKeeper(ctx, fmt.Sprintf("scaleout-%d-%d", n, i))
		if err != nil {
			return ScaleoutResult{}, err
		}
		fleet = append(fleet, k)
	}
	if err := waitOwned(ctx, fleet, shards, 2*time.Minute); err != nil {
		return ScaleoutResult{}, err
	}
	// Begin once the streams run and every keeper has housekept a little
	// (had the fleet taken longer to form than the lead, once the backlog
	// is behind it).
	select {
	case <-ctx.Done():
		return ScaleoutResult{}, ctx.Err()
	case <-time.After(max(time.Until(time.UnixMilli(first).Add(time.Second)), 2*time.Second)):
	}
	// And once no shard is behind, so that a backlog left from the fleet's
	// start (due while it formed) does not stand for the fleet size's lag;
	// but no later than leaves the window inside the stream: a fleet that
	// cannot catch up (Redis saturated) is measured as it is.
	streamEnd := time.UnixMilli(first).Add(span)
	behindAtStart, err := waitCaughtUp(ctx, e.rdb, shards, caughtUpWithin, streamEnd.Add(-o.Window-time.Second))
	if err != nil {
		return ScaleoutResult{}, err
	}
	host := watchHost(ctx)
	defer host.stop()
	mark := host.mark()
	before, err := e.sample(ctx, fleet, names, true)
	if err != nil {
		return ScaleoutResult{}, err
	}
	select {
	case <-ctx.Done():
		return ScaleoutResult{}, ctx.Err()
	case <-time.After(o.Window):
	}
	after, err := e.sample(ctx, fleet, names, false)
	if err != nil {
		return ScaleoutResult{}, err
	}
	r, err := summarize(o, n, before, after)
	hf := host.between(mark, host.mark())
	r.HostStallMaxMs, r.HostStealPct, r.HostCalibMs = hf.stallMs, hf.stealPct, hf.calibMs
	if err != nil {
		return r, err
	}
	r.BehindAtStart = behindAtStart
	r.BehindAtEnd, err = shardsBehind(ctx, e.rdb, shards, time.Second)
	return r, err
}

// seedLeases puts count messages in the queue's ready sets, as a producer
// would have: locked messages already due, returned by unlock passes under
// token 1 (the keepers' tokens, etcd revisions, are higher).
func (e scaleoutEnv) seedLeases(ctx context.Context, shards []queue.Shard, count int) error {
	now, err := redisNow(ctx, e.rdb)
	if err != nil {
		return err
	}
	in := queue.NewInspector(e.rdb, "")
	per := count / len(shards)
	if per == 0 {
		return nil
	}
	reqs := make([]queue.PassRequest, len(shards))
	for p, s := range shards {
		if err := in.SeedLocked(ctx, s, "l", 0, per, now.Add(-time.Hour).UnixMilli(), 0, []byte("x")); err != nil {
			return err
		}
		reqs[p] = queue.PassRequest{Shard: s, Task: queue.TaskUnlock, Token: 1, Batch: queue.MaxBatch}
	}
	n := queue.NewNative(e.rdb, "")
	for i := 0; i < len(reqs); i += 100 {
		part := reqs[i:min(i+100, len(reqs))]
		for {
			full := false
			for _, out := range n.Passes(ctx, part) {
				if out.Err != nil {
					return fmt.Errorf("moving leases' messages to ready: %w", out.Err)
				}
				full = full || out.Result.Full
			}
			if !full {
				break
			}
		}
	}
	return nil
}

// pullLeases leases count ready messages, a hundred at a time, so that the
// leases run out at Leases per second from first (Redis ms) on: none is
// ever acked, so the keepers requeue each.
func (e scaleoutEnv) pullLeases(ctx context.Context, names []string, first int64, count int) error {
	c := queue.NewClient(e.rdb, queue.ClientOptions{})
	const chunk = 100
	step := time.Duration(float64(time.Second) * chunk / float64(e.o.Leases))
	for i := 0; i*chunk < count; i++ {
		now, err := redisNow(ctx, e.rdb)
		if err != nil {
			return err
		}
		lease := time.UnixMilli(first).Add(time.Duration(i) * step).Sub(now)
		if lease < time.Millisecond {
			return fmt.Errorf("leasing took longer than the lead: lease %d would end at once", i)
		}
		ds, err := c.Pull(ctx, names[i%len(names)], min(chunk, count-i*chunk), lease)
		if err != nil {
			return fmt.Errorf("pull leases: %w", err)
		}
		if len(ds) == 0 {
			break
		}
	}
	return nil
}

// sample is what the bench reads at each end of the window.
type sample struct {
	at       time.Time
	cpu      []time.Duration // per keeper
	cmds     []int64         // per keeper
	owned    []int           // per keeper
	redis    int64           // INFO commandstats calls
	requeued int64
	lag      lagHistogram // over all keepers and shards
}

// sample reads the window's start (first) or end. Redis's counters are read
// outside the window (before INFO at its start, after it at its end), so
// the only command of the bench's in it is the first INFO.
func (e scaleoutEnv) sample(ctx context.Context, fleet []*fleetKeeper, names []string, first bool) (sample, error) {
	s := sample{lag: lagHistogram{}}
	requeued := func() error {
		for _, name := range names {
			stats, err := queue.NewClient(e.rdb, queue.ClientOptions{}).Stats(ctx, name)
			if err != nil {
				return err
			}
			s.requeued += stats.Counters.Requeued
		}
		return nil
	}
	if first {
		if err := requeued(); err != nil {
			return s, err
		}
	}
	// A keeper's CPU is read after the bench's own requests to it at the
	// window's start and before them at its end: serving a scrape of a
	// few thousand shards' series took ~30 ms of a keeper's CPU, a few
	// percent of a window at eight keepers.
	for _, k := range fleet {
		var cpu time.Duration
		var err error
		if !first {
			if cpu, err = processCPU(k.cmd.Process.Pid); err != nil {
				return s, err
			}
		}
		if err := scrapeLag(ctx, "http://"+k.metrics+"/metrics", s.lag); err != nil {
			return s, err
		}
		st, err := k.status(ctx)
		if err != nil {
			return s, err
		}
		if first {
			if cpu, err = processCPU(k.cmd.Process.Pid); err != nil {
				return s, err
			}
		}
		s.cpu, s.cmds, s.owned = append(s.cpu, cpu), append(s.cmds, st.Commands), append(s.owned, len(st.Owned))
	}
	var err error
	if s.redis, err = commandCalls(ctx, e.rdb); err != nil {
		return s, err
	}
	s.at = time.Now()
	if !first {
		if err := requeued(); err != nil {
			return s, err
		}
	}
	return s, nil
}

func summarize(o ScaleoutOptions, n int, before, after sample) (ScaleoutResult, error) {
	wall := after.at.Sub(before.at).Seconds()
	r := ScaleoutResult{Scenario: "scaleout", Keepers: n, Shards: o.Shards, Rate: o.Rate, Leases: o.Leases,
		WindowS: round(wall, 1), ShardsPerKeeper: after.owned}
	for i := range after.cpu {
		if after.owned[i] != before.owned[i] {
			return r, fmt.Errorf("keeper %d owned %d shards at the start of the window and %d at its end", i, before.owned[i], after.owned[i])
		}
		cpu := round((after.cpu[i]-before.cpu[i]).Seconds()/wall, 4)
		cmds := round(float64(after.cmds[i]-before.cmds[i])/wall, 1)
		r.KeeperCPU, r.KeeperCmdsPerS = append(r.KeeperCPU, cpu), append(r.KeeperCmdsPerS, cmds)
		r.KeeperCPUMean += cpu / float64(n)
		r.KeeperCPUMax = max(r.KeeperCPUMax, cpu)
		r.KeeperCmdsSum += cmds
	}
	r.KeeperCPUMean, r.KeeperCmdsSum = round(r.KeeperCPUMean, 4), round(r.KeeperCmdsSum, 1)
	// Less the bench's own: the INFO that began the window.
	r.RedisCmdsPerS = round(float64(after.redis-before.redis-1)/wall, 1)
	r.Requeued = after.requeued - before.requeued
	d := after.lag.minus(before.lag)
	r.Unlocked = int64(d.count())
	if r.Unlocked == 0 {
		return r, errors.New("nothing was unlocked in the window")
	}
	r.LagP50, r.LagP99 = round(d.quantile(0.5)*1000, 2), round(d.quantile(0.99)*1000, 2)
	return r, nil
}

// caughtUpWithin is how far behind its locks a caught-up fleet may be.
const caughtUpWithin = 200 * time.Millisecond

// waitCaughtUp waits until no shard's earliest lock is more than within
// past its unlock time (Redis's clock), or until until; it returns how many
// shards were still behind then (0: caught up).
func waitCaughtUp(ctx context.Context, rdb redis.UniversalClient, shards []queue.Shard, within time.Duration, until time.Time) (int, error) {
	for {
		behind, err := shardsBehind(ctx, rdb, shards, within)
		if err != nil || behind == 0 || !time.Now().Before(until) {
			return behind, err
		}
		select {
		case <-ctx.Done():
			return behind, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// shardsBehind counts the shards whose earliest lock is more than within
// past its unlock time: a fleet that fell behind as a whole has them all,
// shards left without passes (a lost deadline, an owner that serves a
// shard it holds in etcd but never claimed) are a few.
func shardsBehind(ctx context.Context, rdb redis.UniversalClient, shards []queue.Shard, within time.Duration) (int, error) {
	now, err := redisNow(ctx, rdb)
	if err != nil {
		return 0, err
	}
	heads, err := queue.NewInspector(rdb, "").LockedHeads(ctx, shards)
	if err != nil {
		return 0, err
	}
	behind := 0
	for _, h := range heads {
		if h >= 0 && h < now.Add(-within).UnixMilli() {
			behind++
		}
	}
	return behind, nil
}
