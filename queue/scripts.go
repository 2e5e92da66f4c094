package queue

import (
	"context"
	"embed"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

//go:embed lua/*.lua
var luaFS embed.FS

// Limits shared by Go and the scripts. luaPreamble hands them to every
// script, so each is written once.
const (
	// luaChunk bounds the values one variadic Redis call in a script takes
	// (see bulk in lua/lib.lua). Redis 7's Lua refuses to unpack more than
	// LUAI_MAXCSTACK (8000) values, and a script that fails half-way is not
	// rolled back: the writes before the error stay. A quarter of the limit
	// is far below it whatever else is on the Lua stack at the call, while a
	// pass at the default batch (1000) still moves each set in one call. It
	// is even, so a (score, member) pair is never split.
	luaChunk = 2000
	// maxSeed is the most messages one call of the seed script writes:
	// under a second of Redis time, well below a client's read timeout,
	// which a client may answer by running the script again.
	maxSeed = 50_000
)

// luaPreamble defines, for every script, the limits, the wake codes and
// the unlock-lag bucket bounds that Go defines.
func luaPreamble() string {
	bounds := make([]string, len(LagBoundsUs))
	for i, b := range LagBoundsUs {
		bounds[i] = strconv.FormatInt(b, 10)
	}
	// LAG_FIELDS[i] names the stats field of LAG_BOUNDS_US[i]'s bucket, and
	// its last entry the bucket above every bound: named here, once, not
	// by a concatenation per message moved.
	fields := make([]string, len(LagBoundsUs)+1)
	for i := range fields {
		fields[i] = strconv.Quote(lagField(i))
	}
	return fmt.Sprintf(`-- Set by scripts.go (luaPreamble): limits, wake codes and lag buckets defined in Go.
local MAX_BATCH, MAX_PULL, MAX_SEED, CHUNK = %d, %d, %d, %d
local WAKE_UNLOCK, WAKE_REQUEUE, WAKE_EXPIRE, WAKE_TRIM, WAKE_MEASURE = '%c', '%c', '%c', '%c', '%c'
local LAG_BOUNDS_US, LAG_SUM_CAP_US = {%s}, %d
local LAG_FIELDS = {%s}
`, MaxBatch, MaxPull, maxSeed, luaChunk, wakeCodes[TaskUnlock], wakeCodes[TaskRequeue],
		wakeCodes[TaskExpire], wakeCodes[TaskTrim], wakeCodes[TaskMeasure], strings.Join(bounds, ", "), LagSumCapUs,
		strings.Join(fields, ", "))
}

// script is one .lua file with the Go side of its contract: the keys it
// takes from a shard's (or a queue's) key set K, and the names of its
// arguments, each in order. The .lua file's header states both
// (TestScriptHeaders holds it to them).
type script[K any] struct {
	name string
	// keys lists the script's keys from a shard's (for a fenced script, the
	// fence head first: fenceKeys).
	keys func(k K) []string
	// argv names the script's arguments (for a fenced script, fenceArgv
	// first).
	argv []string
	lua  *redis.Script
	// multi: the script takes keys and argv once per shard, in a row, and
	// replies with a list of one entry per shard, its result or its error
	// (each_shard in lua/lib.lua). Calls of it join (see joinCalls).
	multi bool
}

// newScript is name.lua, prefixed with the preamble and lua/lib.lua. go-redis
// runs it by EVALSHA and sends it whole on NOSCRIPT.
func newScript[K any](name string, keys func(K) []string, argv ...string) *script[K] {
	return newScriptWith(name, []string{"lib"}, keys, argv...)
}

// newScriptWith is name.lua prefixed with the preamble and the helper files
// libs, in order.
func newScriptWith[K any](name string, libs []string, keys func(K) []string, argv ...string) *script[K] {
	src := luaPreamble()
	for _, l := range append(libs, name) {
		src += "\n-- " + l + ".lua\n" + mustRead(l)
	}
	return &script[K]{name: name, keys: keys, argv: argv, lua: redis.NewScript(src)}
}

// fenceKeys and fenceArgv are the head of every housekeeping script's keys
// and arguments, which the fence helpers of lua/lib.lua read.
func fenceKeys(k shardKeys) []string { return []string{k.Fence, k.FenceOwner, k.History, k.Deleted} }

var fenceArgv = []string{"token", "owner", "record"}

// newFencedScript is a housekeeping script: the fence head, then keys and
// argv.
func newFencedScript(name string, keys func(shardKeys) []string, argv ...string) *script[shardKeys] {
	return newScript(name, func(k shardKeys) []string { return append(fenceKeys(k), keys(k)...) },
		append(append([]string{}, fenceArgv...), argv...)...)
}

// multiShard marks s as a script of many shards a call (see script.multi).
func multiShard[K any](s *script[K]) *script[K] {
	s.multi = true
	return s
}

func mustRead(name string) string {
	b, err := luaFS.ReadFile("lua/" + name + ".lua")
	if err != nil {
		panic(fmt.Sprintf("embedded script %s: %v", name, err))
	}
	return string(b)
}

// call is one run of a script on one shard.
type call struct {
	lua  *redis.Script
	keys []string
	args []any
}

// on is a call of s on the shard whose keys are k, with args in the order
// of s.argv.
func (s *script[K]) on(k K, args ...any) call {
	if len(args) != len(s.argv) {
		panic(fmt.Sprintf("script %s takes %d arguments %v, got %d", s.name, len(s.argv), s.argv, len(args)))
	}
	return call{lua: s.lua, keys: s.keys(k), args: args}
}

// joinCalls is one call per group of requests (see groupCalls): the calls
// of a group's requests (callOf(i), all of one multi-shard script) joined,
// in order, their keys and arguments in a row.
func joinCalls(groups [][]int, callOf func(i int) call) []call {
	out := make([]call, len(groups))
	for j, g := range groups {
		c := callOf(g[0])
		if len(g) > 1 {
			c.keys, c.args = slices.Clone(c.keys), slices.Clone(c.args)
			for _, i := range g[1:] {
				ci := callOf(i)
				c.keys, c.args = append(c.keys, ci.keys...), append(c.args, ci.args...)
			}
		}
		out[j] = c
	}
	return out
}

// groupCalls puts the requests i in idx (each of the shard shard(i)) into
// calls of a multi-shard script, in the order the calls are to run: a
// request joins the open call of its key while that holds fewer than per;
// one whose key does not join (joins false) is a call of its own. A request
// never joins a call before one that holds an earlier request of its shard:
// a shard's requests run in the order asked.
func groupCalls[K comparable](idx []int, per int, shard func(i int) Shard, key func(i int) (k K, joins bool)) [][]int {
	var groups [][]int
	open := map[K]int{}
	last := map[Shard]int{} // the last call that holds a request of the shard
	for _, i := range idx {
		s := shard(i)
		k, joins := key(i)
		j, ok := open[k]
		if l, seen := last[s]; !joins || !ok || len(groups[j]) >= per || (seen && l > j) {
			j = len(groups)
			groups = append(groups, nil)
			if joins {
				open[k] = j
			}
		}
		groups[j] = append(groups[j], i)
		last[s] = j
	}
	return groups
}

// splitReply is the reply of each of the n shards of one call of a
// multi-shard script: the list's entries, each an error or a shard's reply.
// A failed call, or a list of the wrong length, is every shard's error.
func splitReply(ctx context.Context, cmd *redis.Cmd, n int) []*redis.Cmd {
	out := make([]*redis.Cmd, n)
	for k := range out {
		out[k] = redis.NewCmd(ctx)
	}
	v, err := cmd.Slice()
	if err == nil && len(v) != n {
		err = fmt.Errorf("script call for %d shards: %d replies", n, len(v))
	}
	for k, c := range out {
		if err != nil {
			c.SetErr(err)
		} else if e, ok := v[k].(error); ok {
			// Redis's error reply for one shard, nested in the list.
			c.SetErr(e)
		} else {
			c.SetVal(v[k])
		}
	}
	return out
}

// run runs c on its own.
func (c call) run(ctx context.Context, rdb redis.Scripter) *redis.Cmd {
	return c.lua.Run(ctx, rdb, c.keys, c.args...)
}

// pipeliner is a client or one connection of one.
type pipeliner interface {
	redis.Scripter
	Pipelined(ctx context.Context, fn func(redis.Pipeliner) error) ([]redis.Cmder, error)
}

// runAll runs calls in one pipeline and returns each one's reply, with its
// own error. A cluster client sends one pipeline per node, in parallel:
// every call's keys share a slot. A call the server did not have the script
// of (a restarted or new node) runs again once, alone of the pipeline, with
// the script's body: NOSCRIPT means it did not run. A single call goes
// without a pipeline, which costs a third more client CPU for one command.
func runAll(ctx context.Context, rdb pipeliner, calls []call) []*redis.Cmd {
	if len(calls) == 1 {
		return []*redis.Cmd{calls[0].run(ctx, rdb)}
	}
	cmds := make([]*redis.Cmd, len(calls))
	idx := make([]int, len(calls))
	for i := range idx {
		idx[i] = i
	}
	for attempt := 0; len(idx) > 0; attempt++ {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range idx {
				c := calls[i]
				if attempt == 0 {
					cmds[i] = c.lua.EvalSha(ctx, p, c.keys, c.args...)
				} else {
					cmds[i] = c.lua.Eval(ctx, p, c.keys, c.args...)
				}
			}
			return nil
		})
		again := idx[:0]
		for _, i := range idx {
			c := cmds[i]
			if c.Err() == nil && c.Val() == nil && err != nil {
				// Not run: the pipeline failed before it got a reply.
				c.SetErr(err)
			}
			if attempt == 0 && redis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				again = append(again, i)
			}
		}
		idx = again
	}
	return cmds
}
