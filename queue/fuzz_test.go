package queue

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keeperhq/keeper/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

// FuzzScripts drives the native scripts, through Client and Native as keeper
// and its users call them, with random sequences of operations (enqueue one
// or many, seed, pull, ack, nack, extend with delivery tokens old and new;
// unlock, requeue, expire, trim, claim, measure with ownership tokens of
// three owners; inspect, audit, stats; config updates, queue delete and
// create; the clock moved) against a real redis-server, and after every
// operation compares what it returned and the whole shard (every key: set
// members and scores, hashes, counters, fence and owner, flags, history)
// with the reference model in model_test.go.
//
// Time. The scripts read Redis TIME, so the server runs with a manual clock
// (redisserver.Config.ManualClock: the LD_PRELOAD clock shim reads the time
// from a file the test writes): Redis's wall clock stands still at a virtual
// time that only the advance operation moves, in steps from 1 µs to hours.
// Every deadline, lag and expiry is then exact and the model can predict it
// to the microsecond, including same-millisecond ties and the µs → ms floor.
//
// Input. Four header bytes (bit 0 of the first: record the history; the
// other three: the queue config, see fuzzConfig), then up to fuzzMaxOps
// operations of four bytes each: the kind (byte % opCount) and three
// arguments, decoded in step. Batch sizes reach tasks.batch's maximum
// (10,000) half the time; enqueueMany and seed write up to 10,000 messages in
// one step.
//
// Go's fuzzing gives up on an input that runs for 10 s, so each input has a
// cost budget, spent deterministically (fuzzCost): a message written by
// enqueueMany costs 25 (a script call each, about 400 µs on a loaded 2-core
// machine), one seeded costs 1, one pulled 2, and every check the messages
// in the shard. Counts are cut to what is left, and the input ends when
// nothing is: the largest shards are about 10,000 messages seeded, or 3,000
// enqueued. As a last resort, while fuzzing, an input also ends after
// fuzzWall of real time: under heavy load that cuts a costly input short
// (its checks up to then stand) rather than have the fuzzer report it as
// hung. Plain `go test` runs every seed to its end.
//
// One redis-server serves the whole run (each fuzz worker process starts
// its own); every input starts from FLUSHALL and the same virtual time. The
// seed corpus is in testdata/fuzz/FuzzScripts (see fuzzSeeds); plain
// `go test` runs it, `make fuzz` fuzzes.
func FuzzScripts(f *testing.F) {
	srv := redisserver.StartConfigTB(f, redisserver.Config{ManualClock: true})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: fuzzEnqueuers})
	f.Cleanup(func() { _ = rdb.Close() })
	f.Fuzz(func(t *testing.T, in []byte) {
		runScripts(t, srv, rdb, in)
	})
}

const (
	fuzzPrefix    = "fz"
	fuzzMaxOps    = 64
	fuzzMaxBatch  = MaxBatch              // the largest tasks.batch cmd/keeper accepts
	fuzzCost      = 100_000               // what one input may spend: a few seconds on a loaded 2-core machine
	fuzzWall      = 5 * time.Second       // and the real time it may take
	fuzzStartUs   = 1_900_000_000_000_250 // the virtual clock when an input starts
	fuzzEnqueuers = 8                     // concurrent producers of enqueueMany
	fuzzMaxBody   = 24                    // the queue's max_payload_bytes
)

var fuzzShard = Shard{Queue: "fz", Partition: 0}

// fuzzOwners are the keeper identities housekeeping passes present.
var fuzzOwners = [3]string{"", "k1", "k2"}

// The operations: the first byte of each, modulo opCount.
const (
	opEnqueue     = iota // a: id; b: flags and payload length; c: priority, delay or ttl
	opEnqueueMany        // a, b: count; c: first id, ttl, delay
	opSeed               // a, b: count; c: first unlock time and step
	opPull               // a, b: count; c: lease, how many times
	opAck                // a: delivery; c: token
	opNack               // a: delivery; b: lock, priority; c: token
	opExtend             // a: delivery; b: lease; c: token
	opUnlock             // a, b: batch; c: ownership token (also below)
	opRequeue
	opExpire
	opTrim
	opProbe   // b bit 0: read only, else claim
	opMeasure // c: ownership token
	opAdvance // a: unit; b: how many
	opConfig  // a, b, c: as the header
	opInspect // a: id; b bit 0: a seeded id
	opAudit   // b bit 0: Stats instead
	opDelete  // a bit 0: create the queue again instead
	opCount
)

var opNames = [opCount]string{"enqueue", "enqueueMany", "seed", "pull", "ack", "nack", "extend",
	"unlock", "requeue", "expire", "trim", "probe", "measure", "advance", "config", "inspect", "audit", "delete"}

var (
	cfgTTLs      = [8]time.Duration{0, 0, time.Millisecond, 2 * time.Millisecond, 10 * time.Millisecond, 100 * time.Millisecond, 5 * time.Second, time.Hour}
	cfgSizes     = [8]int{0, 0, 1, 2, 5, 50, 4000, fuzzMaxBatch}
	cfgInflight  = [8]int{0, 0, 1, 3, 10, 1000, 5000, fuzzMaxBatch}
	cfgLeases    = [4]time.Duration{5 * time.Millisecond, 100 * time.Millisecond, DefaultLease, MaxLease}
	leases       = [8]time.Duration{0, 500 * time.Microsecond, time.Millisecond, 1500 * time.Microsecond, 5 * time.Millisecond, time.Second, DefaultLease, MaxLease}
	locks        = [8]time.Duration{0, 0, 500 * time.Microsecond, time.Millisecond, 10 * time.Millisecond, time.Second, time.Minute, MaxLease}
	advanceUnits = [8]time.Duration{time.Microsecond, 100 * time.Microsecond, time.Millisecond, 7 * time.Millisecond, 100 * time.Millisecond, time.Second, time.Minute, time.Hour}
)

// fuzzConfig decodes a queue config: a → max_deliveries and ttl, b →
// max_size, c → max_inflight and lease. One partition: the model is a shard.
func fuzzConfig(a, b, c byte) Config {
	return Config{Partitions: 1, MaxDeliveries: int(a % 4), TTL: Duration(cfgTTLs[(a>>2)%8]),
		MaxSize: cfgSizes[b%8], MaxInFlight: cfgInflight[c%8], Lease: Duration(cfgLeases[(c>>3)%4]),
		MaxPayloadBytes: fuzzMaxBody}
}

// batch decodes a batch size in 1..limit: limit itself half the time, so the
// largest batch the config accepts is always in play.
func batch(a, b byte, limit int) int {
	switch {
	case b&0x80 != 0:
		return limit
	case b&0x40 != 0:
		return 1 + (int(a)|int(b&0x3f)<<8)%limit
	default:
		return 1 + int(a)%16
	}
}

// fuzzPayload is n bytes, binary ones included; over fuzzMaxBody is refused.
func fuzzPayload(n int) []byte {
	const alphabet = "\x00\xff payload-0123456789abcdefghij"
	return []byte(alphabet[:n%len(alphabet)])
}

type fuzzRun struct {
	t        *testing.T
	ctx      context.Context
	srv      *redisserver.Server
	rdb      *redis.Client
	c        *Client
	n        *Native
	m        *model
	dels     []Delivery // every delivery pulled, stale ones included
	cost     int        // spent of fuzzCost
	seedNext int
	log      []string
}

func runScripts(t *testing.T, srv *redisserver.Server, rdb *redis.Client, in []byte) {
	head := make([]byte, 4)
	copy(head, in)
	r := &fuzzRun{t: t, ctx: context.Background(), srv: srv, rdb: rdb}
	if err := rdb.FlushAll(r.ctx).Err(); err != nil {
		t.Fatal(err)
	}
	r.setClock(fuzzStartUs)
	if now, err := rdb.Time(r.ctx).Result(); err != nil || now.UnixMicro() != fuzzStartUs {
		t.Fatalf("redis TIME is %v (%v), want the manual clock's %d µs: is the clock shim in effect?", now, err, fuzzStartUs)
	}
	cfg := fuzzConfig(head[1], head[2], head[3])
	r.c = newFuzzClient(rdb)
	if err := r.c.Registry().Create(r.ctx, fuzzShard.Queue, cfg); err != nil {
		t.Fatal(err)
	}
	record := head[0]&1 == 1
	r.n = NewNative(rdb, fuzzPrefix)
	if record {
		r.n = r.n.WithHistory()
	}
	r.m = newModel(cfg, record, fuzzStartUs)
	r.m.configWritten()
	r.log = append(r.log, fmt.Sprintf("config %+v history=%v", cfg, record))
	r.check("the start")
	trace := os.Getenv("KEEPER_FUZZ_TRACE") != "" // log every operation, its result and timings
	start, fuzzing := time.Now(), fuzzWorker()
	for i, p := 0, 4; i < fuzzMaxOps && p+4 <= len(in) && r.cost < fuzzCost; i, p = i+1, p+4 {
		if fuzzing && time.Since(start) > fuzzWall {
			t.Logf("cut short after %d operations, %s: the machine is slow", i, time.Since(start))
			break
		}
		t0 := time.Now()
		op := fmt.Sprintf("#%d %s", i, r.step(in[p], in[p+1], in[p+2], in[p+3]))
		t1 := time.Now()
		r.check(op)
		r.cost += len(r.m.msgs) + 50
		if trace {
			t.Logf("%s (%s, check %s)", r.log[len(r.log)-1], t1.Sub(t0), time.Since(t1))
		}
	}
}

// step runs one operation on Redis and on the model, fails the test when
// their results differ, and describes what it did.
func (r *fuzzRun) step(kind, a, b, c byte) string {
	var desc, got, want string
	k := keeperPass{token: int64(c % 8), owner: fuzzOwners[(c>>3)%3]}
	hk := r.n.WithOwner(k.owner) // the housekeeping side, as keeper k
	cfg := r.m.cfg
	switch kind % opCount {
	case opEnqueue:
		msg := Message{ID: "m" + strconv.Itoa(int(a)), Payload: fuzzPayload(int(b >> 3))}
		if b&1 != 0 {
			p := int64(int8(c))
			if c&1 != 0 {
				p *= 1e15 // past 2^53: scores are doubles
			}
			msg.Priority = &p
		}
		if b&2 != 0 {
			msg.Delay = time.Duration(c) * 250 * time.Microsecond
		}
		if b&4 != 0 {
			msg.TTL = time.Duration(c%64) * 250 * time.Microsecond // under 1ms: refused
		}
		desc = fmt.Sprintf("enqueue %s prio=%v delay=%s ttl=%s body=%dB", msg.ID, deref(msg.Priority), msg.Delay, msg.TTL, len(msg.Payload))
		res, err := r.c.Enqueue(r.ctx, fuzzShard.Queue, msg)
		got = outcome(res, err)
		want = outcome(r.m.enqueue(msg))
	case opEnqueueMany:
		n := r.count(a, b, 25)
		if n == 0 {
			desc = "enqueueMany skipped: the input's cost is spent"
			break
		}
		first := int(c>>2) * 40
		var ttl, delay time.Duration
		if c&1 != 0 {
			ttl = time.Duration((c>>2)%16+1) * time.Millisecond
		}
		if c&2 != 0 {
			delay = time.Duration(c>>2) * time.Millisecond
		}
		desc = fmt.Sprintf("enqueueMany m%d..m%d ttl=%s delay=%s", first, first+n-1, ttl, delay)
		msgs := make([]Message, n)
		for i := range msgs {
			msgs[i] = Message{ID: "m" + strconv.Itoa(first+i), Payload: fuzzPayload(i % 8), TTL: ttl, Delay: delay}
		}
		got, want = r.enqueueMany(msgs)
	case opSeed:
		n := r.count(a, b, 1)
		if n == 0 {
			desc = "seed skipped: the input's cost is spent"
			break
		}
		first := r.seedNext
		r.seedNext += n
		due := r.m.nowMs() + int64(int8(c))
		stepBy := time.Duration(c%8) * 100 * time.Microsecond
		desc = fmt.Sprintf("seed s%d..s%d due=%d step=%s", first, first+n-1, due, stepBy)
		got = outcome(nil, NewInspector(r.rdb, fuzzPrefix).SeedLocked(r.ctx, fuzzShard, "s", first, n, due, stepBy, []byte("seed")))
		want = outcome(nil, r.m.seedLocked("s", first, n, due, stepBy, "seed"))
	case opPull:
		n, lease, times := batch(a, b, MaxPull), leases[c%8], 1
		if c&0x80 != 0 {
			times += int(c>>3) & 0xf
		}
		desc = fmt.Sprintf("pull %d lease=%s ×%d", n, lease, times)
		// Several pulls in one step, each compared, so that 10,000
		// leases cost one check of the shard, not ten.
		for i := 0; i < times && got == want; i++ {
			ds, err := r.c.Pull(r.ctx, fuzzShard.Queue, n, lease)
			r.dels = append(r.dels, ds...)
			r.cost += 2 * len(ds)
			got = outcome(ds, err)
			want = outcome(r.m.pull(n, lease))
		}
	case opAck:
		d := r.delivery(a, c)
		desc = fmt.Sprintf("ack %s token=%s", d.ID, d.Token)
		got = outcome(nil, r.c.Ack(r.ctx, d))
		want = outcome(nil, r.m.ack(d))
	case opNack:
		d := r.delivery(a, c)
		opt := NackOptions{LockFor: locks[b%8]}
		if b&0x80 != 0 {
			p := int64(int8(b << 1))
			opt.Priority = &p
		}
		desc = fmt.Sprintf("nack %s token=%s lock=%s prio=%v", d.ID, d.Token, opt.LockFor, deref(opt.Priority))
		st, err := r.c.Nack(r.ctx, d, opt)
		got = outcome(st, err)
		want = outcome(r.m.nack(d, opt))
	case opExtend:
		d := r.delivery(a, c)
		lease := leases[b%8]
		desc = fmt.Sprintf("extend %s token=%s lease=%s", d.ID, d.Token, lease)
		due, err := r.c.Extend(r.ctx, d, lease)
		got = outcome(due, err)
		want = outcome(r.m.extend(d, lease))
	case opUnlock, opRequeue, opExpire, opTrim:
		n := batch(a, b, fuzzMaxBatch)
		desc = fmt.Sprintf("%s %+v batch=%d", opNames[kind%opCount], k, n)
		var res PassResult
		var err error
		switch kind % opCount {
		case opUnlock:
			res, err = unlockPass(hk, r.ctx, fuzzShard, k.token, n)
			want = outcome(r.m.unlock(k, n))
		case opRequeue:
			res, err = requeuePass(hk, r.ctx, fuzzShard, cfg, k.token, n)
			want = outcome(r.m.requeue(k, n))
		case opExpire:
			res, err = expirePass(hk, r.ctx, fuzzShard, k.token, n)
			want = outcome(r.m.expire(k, n))
		case opTrim:
			res, err = trimPass(hk, r.ctx, fuzzShard, cfg, k.token, n)
			want = outcome(r.m.trim(k, n))
		}
		got = outcome(res, err)
	case opProbe:
		claim := b&1 == 0
		desc = fmt.Sprintf("probe claim=%v %+v", claim, k)
		res, err := hk.Probe(r.ctx, []ProbeRequest{{Shard: fuzzShard, MaxSize: cfg.MaxSize, Claim: claim, Token: k.token}})
		if err != nil {
			r.fatalf("%s: %v", desc, err)
		}
		got, want = probeOutcome(res[0]), probeOutcome(r.m.probe(claim, k))
	case opMeasure:
		desc = fmt.Sprintf("measure %+v", k)
		res, err := measurePass(hk, r.ctx, fuzzShard, k.token)
		got = outcome(res, err)
		want = outcome(r.m.measure(k))
	case opAdvance:
		dt := advanceUnits[a%8] * time.Duration(1+int(b))
		desc = fmt.Sprintf("advance %s", dt)
		r.m.now += dt.Microseconds()
		r.setClock(r.m.now)
	case opConfig:
		next := fuzzConfig(a, b, c)
		desc = fmt.Sprintf("config %+v", next)
		got = outcome(nil, r.c.Registry().Update(r.ctx, fuzzShard.Queue, next))
		if r.m.deleted {
			want = outcome(nil, ErrUnknownQueue)
		} else {
			want = outcome(nil, nil)
			r.m.cfg = next.WithDefaults()
			r.m.configWritten()
		}
		// A new client, which reads the new config.
		r.c, r.m.cached = newFuzzClient(r.rdb), false
	case opDelete:
		if a&1 == 0 {
			desc = "delete the queue"
			got = outcome(nil, r.c.Registry().Delete(r.ctx, fuzzShard.Queue))
			want = outcome(nil, r.m.deleteQueue())
		} else {
			desc = "create the queue again"
			got = outcome(nil, r.c.Registry().Create(r.ctx, fuzzShard.Queue, r.m.cfg))
			want = outcome(nil, r.m.createQueue())
		}
	case opInspect:
		id := "m" + strconv.Itoa(int(a))
		if b&1 != 0 {
			id = "s" + strconv.Itoa(int(a)|int(c)<<8)
		}
		desc = "inspect " + id
		info, err := r.c.Inspect(r.ctx, fuzzShard.Queue, id)
		got = outcome(info, err)
		want = outcome(r.m.inspect(id))
	case opAudit:
		if b&1 != 0 {
			desc = "stats"
			st, err := r.c.Stats(r.ctx, fuzzShard.Queue)
			got = outcome(st, err)
			want = outcome(r.m.queueStats())
		} else {
			desc = "audit"
			a, err := r.c.Audit(r.ctx, fuzzShard.Queue)
			got = outcome(a, err)
			want = outcome(r.m.audit())
		}
	}
	r.log = append(r.log, desc+" → "+clip(got, 0, 160))
	if got != want {
		i := firstDiff(got, want)
		state := "the same"
		if d := diffKeys(r.redisKeys(), r.m.keys()); len(d) > 0 {
			state = "different:\n  " + strings.Join(d, "\n  ")
		}
		r.fatalf("%s: redis and the model disagree (from byte %d)\nredis: %s\nmodel: %s\nthe shard is %s",
			desc, i, clip(got, i, 600), clip(want, i, 600), state)
	}
	return desc
}

// fuzzWorker tells whether this process fuzzes (a worker of `go test
// -fuzz`), where an input that runs 10 s counts as hung.
func fuzzWorker() bool {
	f := flag.Lookup("test.fuzzworker")
	return f != nil && f.Value.String() == "true"
}

// newFuzzClient is a client whose cached config never expires during a run,
// so that whether it reads the registry or its cache (which matters once
// the queue is deleted) follows from the operations alone, as the model has
// it.
func newFuzzClient(rdb *redis.Client) *Client {
	return NewClient(rdb, ClientOptions{Prefix: fuzzPrefix, ConfigTTL: time.Hour})
}

// enqueueMany enqueues msgs from fuzzEnqueuers concurrent producers. All
// happen at the same Redis time and the ids are distinct, so the outcome
// does not depend on their order: the model takes them in order.
func (r *fuzzRun) enqueueMany(msgs []Message) (got, want string) {
	res := make([]string, len(msgs))
	var wg sync.WaitGroup
	for w := 0; w < fuzzEnqueuers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(msgs); i += fuzzEnqueuers {
				er, err := r.c.Enqueue(r.ctx, fuzzShard.Queue, msgs[i])
				res[i] = outcome(er, err)
			}
		}()
	}
	wg.Wait()
	for i, msg := range msgs {
		if w := outcome(r.m.enqueue(msg)); w != res[i] {
			return res[i], w
		}
	}
	return fmt.Sprintf("%d enqueued", len(msgs)), fmt.Sprintf("%d enqueued", len(msgs))
}

// count decodes how many messages enqueueMany or seed writes, at unit cost
// each: up to 32 mostly, up to 8,192 one time in eight, 10,000 for b =
// 0xff; cut to what the input can still spend (0: the step is skipped).
func (r *fuzzRun) count(a, b byte, unit int) int {
	n := 1 + int(a)%32
	switch {
	case b == 0xff:
		n = fuzzMaxBatch
	case b >= 0xe0:
		n = 1 + (int(a) | int(b&0x1f)<<8)
	}
	n = max(0, min(n, (fuzzCost-r.cost)/unit))
	r.cost += n * unit
	return n
}

// delivery picks a delivery pulled earlier (a counts back from the latest),
// presented with its own token, another lease's token, or a made-up one.
func (r *fuzzRun) delivery(a, c byte) Delivery {
	if len(r.dels) == 0 {
		return Delivery{Shard: fuzzShard, ID: "m" + strconv.Itoa(int(a)), Token: "1"}
	}
	d := r.dels[len(r.dels)-1-int(a)%len(r.dels)]
	switch c % 4 {
	case 0:
		d.Token = r.dels[int(c>>2)%len(r.dels)].Token
	case 1:
		d.Token = strconv.Itoa(int(c >> 2))
	}
	return d
}

func (r *fuzzRun) setClock(us int64) {
	if err := r.srv.SetClock(time.UnixMicro(us)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *fuzzRun) fatalf(format string, args ...any) {
	r.t.Helper()
	log := r.log
	if len(log) > 40 {
		log = log[len(log)-40:]
	}
	r.t.Fatalf(format+"\n\noperations (the last 40):\n  %s", append(args, strings.Join(log, "\n  "))...)
}

// outcome renders a result, or the kind of its error (the model does not
// spell messages as the scripts do), for comparison.
func outcome(v any, err error) string {
	if err != nil {
		return "error: " + errKind(err)
	}
	return fmt.Sprintf("%+v", v)
}

func probeOutcome(p ProbeResult) string {
	if p.Err != nil {
		return outcome(nil, p.Err)
	}
	return outcome(p, nil)
}

func errKind(err error) string {
	var fe *FencedError
	switch {
	case errors.As(err, &fe):
		return fmt.Sprintf("fenced: token %d, fence %d of %q", fe.Token, fe.Fence, fe.Owner)
	case errors.Is(err, ErrUnknownQueue):
		return "unknown queue"
	case errors.Is(err, ErrQueueExists):
		return "queue exists"
	case errors.Is(err, ErrStale):
		return "stale"
	case errors.Is(err, ErrCapped):
		return "capped"
	case errors.Is(err, ErrTooBig):
		return "too big"
	case errors.Is(err, ErrBadMessage):
		return "bad message"
	case errors.Is(err, ErrNotFound):
		return "not found"
	}
	return "unexpected: " + err.Error()
}

func deref(p *int64) any {
	if p == nil {
		return "-"
	}
	return *p
}

func firstDiff(a, b string) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// clip shows about n bytes of s around byte i.
func clip(s string, i, n int) string {
	from := max(0, i-n/4)
	to := min(len(s), from+n)
	out := s[from:to]
	if from > 0 {
		out = "…" + out
	}
	if to < len(s) {
		out += fmt.Sprintf("… (%d bytes)", len(s))
	}
	return out
}

// --- the shard's keys in Redis ------------------------------------------------

// check fails the test unless every key of the shard in Redis is what the
// model says, and no other key exists.
func (r *fuzzRun) check(after string) {
	r.t.Helper()
	if d := diffKeys(r.redisKeys(), r.m.keys()); len(d) > 0 {
		r.fatalf("after %s the shard in redis differs from the model:\n  %s", after, strings.Join(d, "\n  "))
	}
}

// fuzzKeys are the shard's keys: suffix, key, type.
func fuzzKeys() [][3]string {
	k := keysFor(fuzzPrefix, fuzzShard)
	return [][3]string{
		{"ready", k.Ready, "zset"}, {"inflight", k.Inflight, "zset"}, {"locked", k.Locked, "zset"},
		{"dead", k.Dead, "zset"}, {"ttl", k.TTL, "zset"},
		{"body", k.Body, "hash"}, {"meta", k.Meta, "hash"}, {"prio", k.Prio, "hash"}, {"dlv", k.Dlv, "hash"},
		{"tok", k.Tok, "hash"}, {"stats", k.Stats, "hash"},
		{"seq", k.Seq, "string"}, {"fence", k.Fence, "string"}, {"owner", k.FenceOwner, "string"},
		{"clean", k.Clean, "string"}, {"trimwake", k.TrimWake, "string"}, {"deleted", k.Deleted, "string"},
		{"gen", k.Gen, "string"},
		{"history", k.History, "stream"},
	}
}

// redisKeys reads the shard in one pipeline.
func (r *fuzzRun) redisKeys() map[string]keyState {
	known := fuzzKeys()
	p := r.rdb.Pipeline()
	all := p.Keys(r.ctx, fuzzPrefix+":*")
	types := make([]*redis.StatusCmd, len(known))
	vals := make([]redis.Cmder, len(known))
	for i, k := range known {
		types[i] = p.Type(r.ctx, k[1])
		switch k[2] {
		case "zset":
			vals[i] = p.ZRangeWithScores(r.ctx, k[1], 0, -1)
		case "hash":
			vals[i] = p.HGetAll(r.ctx, k[1])
		case "string":
			vals[i] = p.Get(r.ctx, k[1])
		case "stream":
			vals[i] = p.XRange(r.ctx, k[1], "-", "+")
		}
	}
	_, _ = p.Exec(r.ctx) // each command's error is looked at below
	if err := all.Err(); err != nil {
		r.t.Fatalf("read the shard: %v", err)
	}
	out := map[string]keyState{}
	for i, k := range known {
		typ, err := types[i].Result()
		if err != nil {
			r.t.Fatalf("read the shard: %v", err)
		}
		if typ == "none" {
			continue
		}
		if typ != k[2] {
			out[k[0]] = keyState{typ: typ}
			continue
		}
		ks := keyState{typ: typ}
		switch v := vals[i].(type) {
		case *redis.ZSliceCmd:
			ks.z = map[string]float64{}
			for _, z := range v.Val() {
				ks.z[z.Member.(string)] = z.Score
			}
		case *redis.MapStringStringCmd:
			ks.h = v.Val()
		case *redis.StringCmd:
			ks.s = v.Val()
		case *redis.XMessageSliceCmd:
			for _, x := range v.Val() {
				ks.x = append(ks.x, fmt.Sprintf("%s task=%v token=%v owner=%v ok=%v moved=%v", x.ID,
					x.Values["task"], x.Values["token"], x.Values["owner"], x.Values["ok"], x.Values["moved"]))
			}
		}
		out[k[0]] = ks
	}
	for _, key := range all.Val() {
		if key == registryKey(fuzzPrefix) || key == generationKey(fuzzPrefix) {
			continue // the registry's, not the shard's
		}
		found := false
		for _, k := range known {
			found = found || k[1] == key
		}
		if !found {
			out["unexpected key "+key] = keyState{typ: "?"}
		}
	}
	return out
}

// diffKeys lists how got (Redis) differs from want (the model), at most 30
// lines.
func diffKeys(got, want map[string]keyState) []string {
	var d []string
	add := func(format string, args ...any) { d = append(d, fmt.Sprintf(format, args...)) }
	names := map[string]bool{}
	for n := range got {
		names[n] = true
	}
	for n := range want {
		names[n] = true
	}
	for _, n := range sortedKeys(names) {
		g, gok := got[n]
		w, wok := want[n]
		if gok && wok && g.equal(w) {
			continue
		}
		switch {
		case !gok:
			add("%s: absent in redis; the model has a %s of %d", n, w.typ, w.size())
			continue
		case !wok:
			add("%s: a %s of %d in redis; absent in the model", n, g.typ, g.size())
			continue
		case g.typ != w.typ:
			add("%s: a %s in redis, a %s in the model", n, g.typ, w.typ)
			continue
		}
		switch g.typ {
		case "zset":
			for _, id := range sortedKeys(union(g.z, w.z)) {
				gv, gin := g.z[id]
				wv, win := w.z[id]
				if gin != win || gv != wv {
					add("%s[%s]: redis %s, model %s", n, id, present(gin, gv), present(win, wv))
				}
			}
		case "hash":
			for _, f := range sortedKeys(union(g.h, w.h)) {
				gv, gin := g.h[f]
				wv, win := w.h[f]
				if gin != win || gv != wv {
					add("%s[%s]: redis %s, model %s", n, f, present(gin, strconv.Quote(gv)), present(win, strconv.Quote(wv)))
				}
			}
		case "string":
			if g.s != w.s {
				add("%s: redis %q, model %q", n, g.s, w.s)
			}
		case "stream":
			for i := 0; i < max(len(g.x), len(w.x)); i++ {
				gv, wv := "-", "-"
				if i < len(g.x) {
					gv = g.x[i]
				}
				if i < len(w.x) {
					wv = w.x[i]
				}
				if gv != wv {
					add("%s entry %d: redis %s, model %s", n, i, gv, wv)
				}
			}
		}
	}
	if len(d) > 30 {
		d = append(d[:30], fmt.Sprintf("… and %d more differences", len(d)-30))
	}
	return d
}

// equal is the quick test; diffKeys spells out the differences only when it
// fails.
func (k keyState) equal(o keyState) bool {
	if k.typ != o.typ || k.s != o.s || len(k.z) != len(o.z) || len(k.h) != len(o.h) || len(k.x) != len(o.x) {
		return false
	}
	for m, v := range k.z {
		if w, ok := o.z[m]; !ok || w != v {
			return false
		}
	}
	for f, v := range k.h {
		if w, ok := o.h[f]; !ok || w != v {
			return false
		}
	}
	for i := range k.x {
		if k.x[i] != o.x[i] {
			return false
		}
	}
	return true
}

func (k keyState) size() int { return len(k.z) + len(k.h) + len(k.x) + len(k.s) }

func present(in bool, v any) string {
	if !in {
		return "-"
	}
	return fmt.Sprint(v)
}

func union[V any](a, b map[string]V) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// --- the seed corpus --------------------------------------------------------

// fuzzOp is one encoded operation: kind and three arguments (see step).
type fuzzOp [4]byte

func op(kind int, a, b, c byte) fuzzOp { return fuzzOp{byte(kind), a, b, c} }

// Argument values that read well in the seeds.
const (
	bMax     = 0x80 // batch: the limit (10,000; 1,000 for pull)
	countMax = 0xff // enqueueMany, seed: 10,000 messages
	own      = 2    // ack, nack, extend: the delivery's own token
	other    = 0    // another delivery's token
)

// seedInput encodes a header (history on or off; a, b, c as fuzzConfig
// reads them) and operations.
func seedInput(history bool, a, b, c byte, ops ...fuzzOp) []byte {
	in := []byte{0, a, b, c}
	if history {
		in[0] = 1
	}
	for _, o := range ops {
		in = append(in, o[:]...)
	}
	return in
}

// fuzzSeeds are the seed corpus; TestFuzzSeedCorpus keeps
// testdata/fuzz/FuzzScripts in step with them. Config bytes: a =
// max_deliveries | ttl index<<2; b = max_size index; c = max_inflight index
// | lease index<<3 (tables above).
func fuzzSeeds() map[string][]byte {
	return map[string][]byte{
		// Every operation once or twice on a few messages.
		"basics": seedInput(true, 2, 0, 2<<3,
			op(opEnqueue, 1, 5<<3, 0), op(opEnqueue, 2, 1|3<<3, 0xfe), op(opEnqueue, 3, 2, 8),
			op(opEnqueue, 1, 0, 0), op(opEnqueue, 4, 30<<3, 0), op(opEnqueue, 5, 1, 0x21),
			op(opPull, 2, 0, 2), op(opAck, 0, 0, own), op(opNack, 1, 3, own), op(opExtend, 2, 5, own),
			op(opAck, 2, 0, other), op(opAdvance, 2, 2, 0), op(opUnlock, 15, 0, 1),
			op(opRequeue, 0, bMax, 1), op(opExpire, 0, bMax, 1), op(opTrim, 0, bMax, 1),
			op(opProbe, 0, 0, 2), op(opMeasure, 0, 0, 1), op(opMeasure, 0, 0, 2), op(opProbe, 0, 1, 0),
			op(opPull, 15, 0, 0), op(opNack, 0, 0x85, own), op(opEnqueueMany, 4, 0, 3),
			op(opSeed, 7, 0, 0xfd), op(opAdvance, 0, 255, 0), op(opAdvance, 5, 0, 0),
			op(opUnlock, 0, bMax, 2), op(opConfig, 1|2<<2, 3, 3|1<<3), op(opPull, 0, bMax, 4),
			op(opExtend, 0, 1, own), op(opExtend, 0, 0, own), op(opPull, 0, 0, 1), op(opInspect, 1, 0, 0),
			op(opInspect, 3, 0, 0), op(opInspect, 99, 0, 0), op(opInspect, 5, 1, 0), op(opAudit, 0, 0, 0),
			op(opAudit, 0, 1, 0)),
		// TTLs, max_deliveries 1: dead letters, expiry at pull, requeue,
		// nack and expire.
		"ttl-deliveries": seedInput(false, 1|4<<2, 0, 0,
			op(opEnqueue, 1, 0, 0), op(opEnqueue, 2, 0, 0), op(opEnqueue, 3, 4, 12), op(opEnqueue, 4, 4, 2),
			op(opEnqueue, 4, 4, 5),
			op(opPull, 2, 0, 0), op(opAdvance, 2, 5, 0), op(opRequeue, 0, bMax, 1),
			op(opAdvance, 2, 9, 0), op(opExpire, 0, bMax, 1), op(opEnqueue, 5, 0, 0),
			op(opPull, 0, 0, 0), op(opNack, 0, 0, own), op(opEnqueue, 6, 0, 0), op(opAdvance, 2, 20, 0),
			op(opPull, 0, 0, 0), op(opEnqueue, 7, 0, 0), op(opPull, 0, 0, 6), op(opAdvance, 3, 2, 0),
			op(opNack, 0, 4, own), op(opMeasure, 0, 0, 1)),
		// max_inflight 3 and max_size 2: capped pulls, trim around leases,
		// then both caps lifted.
		"caps": seedInput(true, 0, 3, 3|2<<3,
			op(opEnqueueMany, 4, 0, 0), op(opPull, 9, 0, 0), op(opPull, 0, 0, 0),
			op(opTrim, 0, bMax, 1), op(opProbe, 0, 1, 0), op(opAck, 0, 0, own), op(opPull, 3, 0, 0),
			op(opConfig, 0, 0, 0), op(opEnqueueMany, 4, 0, 4), op(opTrim, 0, bMax, 1),
			op(opPull, 0, bMax, 0), op(opMeasure, 0, 0, 1)),
		// Fencing: lower tokens refused, equal and higher accepted, claims.
		"fence": seedInput(true, 0, 2, 0,
			op(opEnqueueMany, 9, 0, 0), op(opProbe, 0, 0, 5), op(opUnlock, 0, bMax, 3),
			op(opRequeue, 0, bMax, 5), op(opExpire, 0, bMax, 6), op(opTrim, 0, bMax, 4),
			op(opTrim, 0, 0, 6), op(opMeasure, 0, 0, 7), op(opProbe, 0, 0, 6), op(opProbe, 0, 1, 0),
			op(opMeasure, 0, 0, 0)),
		// Owners: an equal token from another owner is refused, a higher
		// one takes the fence over; a fresh fence accepts token 0.
		"fence-owners": seedInput(true, 0, 0, 0,
			op(opMeasure, 0, 0, 0), op(opUnlock, 0, 0, 1<<3), op(opProbe, 0, 0, 3|1<<3),
			op(opUnlock, 0, bMax, 3|2<<3), op(opUnlock, 0, bMax, 3|1<<3), op(opUnlock, 0, bMax, 4|2<<3),
			op(opMeasure, 0, 0, 4|1<<3), op(opProbe, 0, 0, 4|2<<3), op(opTrim, 0, bMax, 4),
			op(opMeasure, 0, 0, 5), op(opRequeue, 0, bMax, 5|1<<3), op(opExpire, 0, bMax, 5),
			op(opAudit, 0, 1, 0)),
		// Delete and create again: everything refused in between, the
		// fence, its owner and the delivery tokens not reused after.
		"delete-recreate": seedInput(true, 0, 0, 2<<3,
			op(opEnqueue, 1, 0, 0), op(opPull, 0, 0, 0), op(opProbe, 0, 0, 2|1<<3), op(opMeasure, 0, 0, 2|1<<3),
			op(opDelete, 0, 0, 0), op(opEnqueue, 2, 0, 0), op(opPull, 0, 0, 0), op(opAck, 0, 0, own),
			op(opUnlock, 0, bMax, 2|1<<3), op(opProbe, 0, 1, 0), op(opSeed, 3, 0, 0), op(opAudit, 0, 0, 0),
			op(opInspect, 1, 0, 0), op(opConfig, 1, 0, 2<<3), op(opDelete, 0, 0, 0), op(opDelete, 1, 0, 0),
			op(opDelete, 1, 0, 0), op(opEnqueue, 1, 0, 0), op(opPull, 0, 0, 0), op(opAck, 1, 0, own),
			op(opUnlock, 0, bMax, 1|2<<3), op(opAck, 0, 0, own), op(opAudit, 0, 1, 0)),
		// Scores: huge and negative priorities, ties broken by id, the
		// priority a nack sets kept through a lock.
		"priorities": seedInput(false, 0, 0, 2<<3,
			op(opEnqueue, 10, 1, 0x7f), op(opEnqueue, 11, 1, 0x81), op(opEnqueue, 12, 1, 0x80),
			op(opEnqueue, 13, 0, 0), op(opEnqueue, 14, 0, 0), op(opEnqueue, 15, 1, 0x7e),
			op(opPull, 2, 0, 0), op(opNack, 0, 0x84, own), op(opNack, 1, 0x03, own), op(opNack, 2, 0xf0, own),
			op(opAdvance, 2, 0, 0), op(opUnlock, 0, bMax, 1), op(opPull, 15, 0, 0)),
		// Leases: refused durations, extend past a due requeue, stale
		// tokens after the lease was recovered.
		"leases": seedInput(false, 0, 0, 2<<3,
			op(opEnqueue, 1, 0, 0), op(opPull, 0, 0, 1), op(opPull, 0, 0, 2), op(opExtend, 0, 5, own),
			op(opAdvance, 3, 0, 0), op(opRequeue, 0, bMax, 1), op(opExtend, 0, 1, own),
			op(opExtend, 0, 0, own), op(opAdvance, 5, 1, 0), op(opRequeue, 0, bMax, 1),
			op(opAck, 0, 0, own), op(opPull, 0, 0, 3), op(opAck, 1, 0, own), op(opAck, 0, 0, 1),
			op(opAck, 0, 0, own)),
		// The largest batch: 10,000 locked messages due at once, unlocked in
		// one pass, pulled, their leases recovered in one pass.
		"large-unlock-requeue": seedInput(true, 0, 0, 2<<3,
			op(opSeed, 0, countMax, 0xf0), op(opUnlock, 0, bMax, 1), op(opPull, 0, bMax, 0x80|9<<3|2),
			op(opAdvance, 2, 1, 0), op(opRequeue, 0, bMax, 1), op(opAudit, 0, 0, 0)),
		// 5,000: past where an unbounded unpack failed after the first
		// write (the lost messages of issue 9).
		"medium-batches": seedInput(false, 0, 0, 2<<3,
			op(opSeed, 0x87, 0xf3, 0xf0), op(opUnlock, 0x87, 0x53, 1), op(opPull, 0, bMax, 0x80|4<<3|2),
			op(opAdvance, 2, 1, 0), op(opRequeue, 0x87, 0x53, 1), op(opMeasure, 0, 0, 1)),
		// 10,000 messages over max_size 5 trimmed in one pass.
		"large-trim": seedInput(false, 0, 4, 2<<3,
			op(opSeed, 0, countMax, 0xf0), op(opUnlock, 0, bMax, 1), op(opTrim, 0, bMax, 1),
			op(opTrim, 0, bMax, 1), op(opMeasure, 0, 0, 1)),
		// 3,000 TTLs expired in one pass (10,000 enqueued one by one would
		// cost more than an input may spend).
		"large-expire": seedInput(false, 4<<2, 0, 2<<3,
			op(opEnqueueMany, 0xb7, 0xeb, 0), op(opAdvance, 2, 10, 0), op(opExpire, 0, bMax, 1),
			op(opMeasure, 0, 0, 1)),
	}
}

// TestFuzzSeedCorpus keeps testdata/fuzz/FuzzScripts/seed-* equal to
// fuzzSeeds, which `go test` runs as FuzzScripts's seed corpus. After
// changing the seeds: KEEPER_FUZZ_WRITE_SEEDS=1 go test -run TestFuzzSeedCorpus ./queue/
func TestFuzzSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzScripts")
	write := os.Getenv("KEEPER_FUZZ_WRITE_SEEDS") == "1"
	seeds := fuzzSeeds()
	for name, in := range seeds {
		path := filepath.Join(dir, "seed-"+name)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", in)
		if write {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("%s is not the seed %q of fuzzSeeds (%v); rewrite with KEEPER_FUZZ_WRITE_SEEDS=1", path, name, err)
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "seed-*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if _, ok := seeds[strings.TrimPrefix(filepath.Base(f), "seed-")]; !ok {
			t.Errorf("%s is no seed of fuzzSeeds: remove it", f)
		}
	}
}
