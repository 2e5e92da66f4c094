package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// prober runs a layout's probes: one pipeline for the shards only read, and
// one per Redis node for the claims, on one connection, so that a claim can
// be confirmed by a replica (see claimOn). Both layouts probe this way.
type prober struct {
	rdb       redis.UniversalClient
	claimWait time.Duration
	// call is the probe script's call for one request (claiming it or not).
	call func(ProbeRequest) call
	// node is a key of the shard, to find the node that holds it.
	node   func(Shard) string
	decode func(*redis.Cmd) (ProbeResult, error)
	// perCall, when set, is how many shards one script call probes: the
	// script takes its keys and arguments once per shard, in a row, and
	// replies with a list of one entry per shard (see lua/probe.lua). 0: the
	// script probes one shard and replies for it alone.
	perCall int
	// bySlot makes one call's shards share a hash slot (on a cluster,
	// which refuses a script whose keys span slots).
	bySlot bool
}

// probeShardsPerCall is how many shards one call of the native probe script
// takes, on a single Redis server: a takeover of 35,000 shards then costs
// Redis 350 script runs instead of 35,000, each 4–6 ms (BenchmarkProbe: a
// quarter less Redis time per shard than a call per shard).
const probeShardsPerCall = 100

// claimArg is the probe scripts' claim argument.
func claimArg(claim bool) string {
	if claim {
		return "1"
	}
	return "0"
}

func (p prober) probe(ctx context.Context, reqs []ProbeRequest) ([]ProbeResult, error) {
	out := make([]ProbeResult, len(reqs))
	var reads, claims []int
	for i, r := range reqs {
		if r.Claim {
			claims = append(claims, i)
		} else {
			reads = append(reads, i)
		}
	}
	if len(reads) > 0 {
		// A failure to reach Redis fails the whole probe, so that the
		// caller probes again rather than take it for the shards'.
		if _, err := p.probeOn(ctx, p.rdb, reqs, reads, out); err != nil {
			return nil, fmt.Errorf("probe %d shards: %w", len(reads), err)
		}
	}
	for node, idx := range p.byNode(ctx, reqs, claims, out) {
		p.claimOn(ctx, node, reqs, idx, out)
	}
	return out, nil
}

// probeOn runs the probe of reqs[i] for each i in idx on rdb, in one
// pipeline, into out; it returns the indexes that succeeded, and the first
// error that is not Redis's reply to one script (Redis was not reached).
func (p prober) probeOn(ctx context.Context, rdb pipeliner, reqs []ProbeRequest, idx []int, out []ProbeResult) ([]int, error) {
	per := max(p.perCall, 1)
	groups := p.chunks(reqs, idx, per)
	calls := joinCalls(groups, func(i int) call { return p.call(reqs[i]) })
	var (
		ok      []int
		reached error
		re      redis.Error
	)
	for j, cmd := range runAll(ctx, rdb, calls) {
		if err := cmd.Err(); err != nil && !errors.As(err, &re) && reached == nil {
			reached = err
		}
		for k, reply := range p.split(ctx, cmd, len(groups[j])) {
			i := groups[j][k]
			res, err := p.decode(reply)
			if err != nil {
				out[i].Err = asError(err, reqs[i].Shard, reqs[i].Token)
				continue
			}
			out[i] = res
			ok = append(ok, i)
		}
	}
	return ok, reached
}

// chunks splits idx into groups of at most per, in order; with bySlot,
// each group's shards share a hash slot (see groupCalls).
func (p prober) chunks(reqs []ProbeRequest, idx []int, per int) [][]int {
	return groupCalls(idx, per, func(i int) Shard { return reqs[i].Shard }, func(i int) (int, bool) {
		if !p.bySlot {
			return 0, true
		}
		return keySlot(p.node(reqs[i].Shard)), true
	})
}

// keySlot is the Redis Cluster hash slot of key: CRC16 (XMODEM) of its hash
// tag (the text between its first "{" and the next "}", when not empty) or
// of the whole key, modulo 16384.
func keySlot(key string) int {
	if a := strings.IndexByte(key, '{'); a >= 0 {
		if b := strings.IndexByte(key[a+1:], '}'); b > 0 {
			key = key[a+1 : a+1+b]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

// split is the reply of each of the n shards one call probed: the call's
// own for a script of one shard (perCall 0), else its list's entries (see
// splitReply).
func (p prober) split(ctx context.Context, cmd *redis.Cmd, n int) []*redis.Cmd {
	if p.perCall == 0 {
		return []*redis.Cmd{cmd}
	}
	return splitReply(ctx, cmd, n)
}

// byNode groups the claims by the Redis node that holds their shard: the
// node itself for a single server, its primary for each slot on a cluster.
// A shard whose node is unknown gets the error in out.
func (p prober) byNode(ctx context.Context, reqs []ProbeRequest, idx []int, out []ProbeResult) map[*redis.Client][]int {
	groups := map[*redis.Client][]int{}
	if len(idx) == 0 {
		return groups
	}
	switch c := p.rdb.(type) {
	case *redis.Client:
		groups[c] = idx
	case *redis.ClusterClient:
		for _, i := range idx {
			node, err := c.MasterForKey(ctx, p.node(reqs[i].Shard))
			if err != nil {
				out[i].Err = fmt.Errorf("claim %s: find its node: %w", reqs[i].Shard, err)
				continue
			}
			groups[node] = append(groups[node], i)
		}
	default:
		for _, i := range idx {
			out[i].Err = fmt.Errorf("claim %s: unsupported redis client %T", reqs[i].Shard, p.rdb)
		}
	}
	return groups
}

// claimOn runs the claims idx on node over one connection. When the node
// has replicas attached, the claims are trusted only once one replica
// acknowledged them (WAIT 1): a failover to a replica that never saw a
// fence would let the previous owner write again. A claim not acknowledged
// within the wait gets ErrClaimNotReplicated: the keeper does not count the
// shard as claimed, and claims it again.
func (p prober) claimOn(ctx context.Context, node *redis.Client, reqs []ProbeRequest, idx []int, out []ProbeResult) {
	conn := node.Conn()
	defer conn.Close()
	ok, _ := p.probeOn(ctx, conn, reqs, idx, out)
	if len(ok) == 0 {
		return
	}
	info, err := conn.Info(ctx, "replication").Result()
	if err == nil && connectedReplicas(info) == 0 {
		return
	}
	if err == nil {
		var acked int64
		acked, err = conn.Wait(ctx, 1, p.claimWait).Result()
		if err == nil && acked >= 1 {
			return
		}
	}
	why := fmt.Sprintf("no replica acknowledged it within %s", p.claimWait)
	if err != nil {
		why = err.Error()
	}
	for _, i := range ok {
		out[i] = ProbeResult{Err: fmt.Errorf("%w: shard %s, token %d: %s", ErrClaimNotReplicated, reqs[i].Shard, reqs[i].Token, why)}
	}
}

// connectedReplicas reads connected_slaves from INFO replication.
func connectedReplicas(info string) int {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "connected_slaves:"); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}
