-- lib.lua: helpers that scripts.go prepends to every keeper script, so each
-- script stays one EVALSHA touching one hash slot. scripts.go defines the
-- limits MAX_BATCH, MAX_PULL, MAX_SEED and CHUNK, and the wake codes
-- WAKE_UNLOCK ... WAKE_MEASURE, before it (luaPreamble).
-- Conventions: scores are milliseconds of Redis TIME (never the client's
-- clock); lags are microseconds; -1 means "none".

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- Refuse to run when a key holds another type. Called before any write, so a
-- wrong-typed key changes nothing. spec: {key1, type1, key2, type2, ...}.
local function check_types(spec)
  for i = 1, #spec, 2 do
    local t = redis.call('TYPE', spec[i])['ok']
    if t ~= 'none' and t ~= spec[i + 1] then
      return redis.error_reply('KEEPER_WRONGTYPE ' .. spec[i] .. ' is a ' .. t .. ', want ' .. spec[i + 1])
    end
  end
  return nil
end

-- The error of reads that ran under pcall and failed (out: what pcall
-- caught): KEEPER_WRONGTYPE naming the first key of spec that holds another
-- type, else Redis's own error. Reading first and asking the types only
-- then spares a script a TYPE call for every key it reads.
local function read_failed(out, spec)
  local err = check_types(spec)
  if err then return err end
  if type(out) == 'table' and out.err then return out end
  return redis.error_reply(tostring(out))
end

-- A deleted queue leaves a tombstone in each of its shards (with the fence,
-- so that a queue created again under the same name keeps refusing old
-- tokens). Every script checks it before anything else, so that neither a
-- pass still running nor a client holding the deleted queue's config can
-- write a key there again.
local function check_live(deleted)
  if redis.call('EXISTS', deleted) == 1 then
    return redis.error_reply('KEEPER_DELETED the queue of ' .. deleted .. ' was deleted')
  end
  return nil
end

-- Each shard carries the generation of its queue's config: every config
-- published (a partition growth included) is given a new, higher one, and
-- every shard of the queue is set to it before the config is published.
-- Enqueue and pull refuse a client whose config is older, which then
-- reloads it: no client with a stale partition count writes anywhere once
-- a newer config is out. A shard behind the client (never told, as before
-- generations existed) accepts it.
local function check_gen(genkey, client_gen)
  local g = tonumber(redis.call('GET', genkey) or '0') or 0
  if (tonumber(client_gen) or 0) < g then
    return redis.error_reply('KEEPER_STALECONFIG ' .. string.format('%d', g))
  end
  return nil
end

-- Every housekeeping script (unlock, requeue, expire, trim, measure, probe)
-- begins with the same keys and arguments, the fence head (fenceKeys and
-- fenceArgv in scripts.go), which the helpers below read:
--   KEYS[1] fence: the highest ownership token accepted
--   KEYS[2] owner: the identity of the owner that presented it
--   KEYS[3] history: the stream of passes
--   KEYS[4] deleted: the tombstone of a deleted queue
--   ARGV[1] token: the ownership token
--   ARGV[2] owner: its identity (member id and a per-process nonce)
--   ARGV[3] record: "1" to record the pass in the history
-- The script's own keys and arguments follow.

-- History, off unless the keeper asks for it (chaos runs): one stream entry
-- per housekeeping pass, accepted or refused, with its token, owner and how
-- many messages it moved, so a checker can replay who wrote what under
-- which token. The stream is capped, so it cannot grow without bound.
-- The fence head in use: the script's own, or, in a probe of many shards,
-- the probed shard's (use_head k, a: its keys after the k-th, its
-- arguments after the a-th). The helpers below read it, never KEYS or ARGV.
local H_FENCE, H_OWNER, H_HISTORY, H_DELETED, H_TOKEN, H_ME, H_RECORD

-- The fence and owner as fence_check read them, for fence_raise: nothing
-- writes them in between.
local fence_cur, fence_holder

local function use_head(k, a)
  H_FENCE, H_OWNER, H_HISTORY, H_DELETED = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  H_TOKEN, H_ME, H_RECORD = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3] == '1'
  fence_cur, fence_holder = nil, nil
end
use_head(0, 0)

local function record(task, accepted, moved)
  if H_RECORD then
    redis.call('XADD', H_HISTORY, 'MAXLEN', '~', 1000000, '*', 'task', task, 'token', H_TOKEN,
      'owner', H_ME, 'ok', accepted, 'moved', moved)
  end
end

-- The fence and its owner, read in one MGET, or KEEPER_WRONGTYPE naming the
-- one that holds another type. MGET answers nil for a key of another type
-- as for a missing one: a key's type is asked (TYPE) only then, so a
-- claimed shard's fence costs one call.
local function get_fence()
  local v = redis.call('MGET', H_FENCE, H_OWNER)
  for i, key in ipairs({H_FENCE, H_OWNER}) do
    if not v[i] then
      local t = redis.call('TYPE', key)['ok']
      if t ~= 'none' then
        return nil, nil, redis.error_reply('KEEPER_WRONGTYPE ' .. key .. ' is a ' .. t .. ', want string')
      end
    end
  end
  return v[1], v[2]
end

-- Check the tombstone, the types of the shared keys (the history's when it
-- is recorded; the fence's and owner's by get_fence) and the pass's token
-- against the shard's fence, without writing. Refused: a token below the
-- fence, and a token equal to it from another owner (after etcd is
-- restored from a backup, two keepers can hold equal tokens). A fence
-- without an owner (set before owners were recorded) accepts an equal
-- token. A refusal is recorded when history is on. Scripts call this before
-- their first write and raise the fence (fence_raise) with their other
-- writes, so a refused or failing pass changes nothing.
local function fence_check(task)
  local err = check_live(H_DELETED)
  if err then return err end
  if H_RECORD then
    local t = redis.call('TYPE', H_HISTORY)['ok']
    if t ~= 'none' and t ~= 'stream' then
      return redis.error_reply('KEEPER_WRONGTYPE ' .. H_HISTORY .. ' is a ' .. t .. ', want stream')
    end
  end
  local cur, holder
  cur, holder, err = get_fence()
  if err then return err end
  fence_cur, fence_holder = cur or false, holder or false
  local token = tonumber(H_TOKEN)
  local f = tonumber(cur or '0') or 0
  if token == nil or token < f or (token == f and cur and holder and holder ~= H_ME) then
    record(task, 0, 0)
    return redis.error_reply('KEEPER_FENCED ' .. (cur or '0') .. ' ' .. (holder or ''))
  end
  return nil
end

-- A probe reads a shard, and claims it for a new owner when asked: the
-- claim is checked like a pass's token, before any write (probe_check), and
-- then sets the fence to the token and owner (claim_fence) even when it
-- already holds them, so that a WAIT after the claim covers it (see
-- prober.claimOn in probe.go).
local function probe_check(claim)
  local err = check_live(H_DELETED)
  if err then return err end
  if claim then
    return fence_check('claim')
  end
  return nil
end

local function claim_fence()
  redis.call('MSET', H_FENCE, H_TOKEN, H_OWNER, H_ME)
  record('claim', 1, 0)
end

-- A pass's batch size, its first own argument (ARGV[4], or ARGV[a + 4] in a
-- script of many shards): 1..MAX_BATCH, as Go checks too, so that no caller
-- can make a pass unbounded.
local function batch_arg(a)
  local v = ARGV[(a or 0) + 4]
  local n = tonumber(v)
  if not n or n < 1 or n > MAX_BATCH or n ~= math.floor(n) then
    return nil, redis.error_reply('KEEPER_BADARG batch ' .. tostring(v) .. ' not in 1..' .. MAX_BATCH)
  end
  return n
end

-- A script of many shards runs pass(k, a) for each shard: its keys follow
-- the k-th and its arguments the a-th, nkeys and nargs of each. Each shard
-- gets its own entry in the reply, its result or its error: a shard's
-- refusal, or a Redis error raised by one of its reads (a wrong-typed key),
-- does not stop the others. pass reads and checks before it writes, so a
-- shard whose pass raised changed nothing.
local function each_shard(nkeys, nargs, pass)
  local out = {}
  for i = 0, #KEYS / nkeys - 1 do
    local ok, res = pcall(pass, nkeys * i, nargs * i)
    if not ok and not (type(res) == 'table' and res.err) then
      res = redis.error_reply(tostring(res))
    end
    out[i + 1] = res
  end
  return out
end

-- Raise the fence to an accepted token, with its owner: accepted tokens
-- never decrease.
local function fence_raise()
  local cur, holder = fence_cur, fence_holder
  if cur == nil then
    cur, holder = redis.call('GET', H_FENCE), redis.call('GET', H_OWNER)
  end
  local f = tonumber(cur or '0') or 0
  if tonumber(H_TOKEN) > f then
    redis.call('MSET', H_FENCE, H_TOKEN, H_OWNER, H_ME)
  elseif holder ~= H_ME then
    redis.call('SET', H_OWNER, H_ME)
  end
end

-- Up to batch members of zkey due by now_ms (score <= now_ms), earliest
-- first, as {id1, score1, id2, score2, ...}, and the earliest score left
-- once they are removed (-1: none), or nil when that is known only after
-- they are removed (read it then with head_score). A pass usually finds
-- one or two due: reading the set by rank, PEEK members past them, gives
-- both answers in one call instead of a range read and a head read (a
-- call's fixed cost, turning its arguments and reply into Lua values, is
-- most of what a small read costs; see the README's Benchmarks).
local PEEK = 4
local function due_members(zkey, now_ms, batch)
  local n = math.min(batch, PEEK)
  local r = redis.call('ZRANGE', zkey, 0, n, 'WITHSCORES')
  local due = {}
  for i = 1, #r, 2 do
    local score = tonumber(r[i + 1])
    if score > now_ms or #due == 2 * batch then
      return due, score
    end
    due[#due + 1] = r[i]
    due[#due + 1] = r[i + 1]
  end
  if #r < 2 * (n + 1) then
    return due, -1
  end
  -- More are due than were peeked at.
  return redis.call('ZRANGEBYSCORE', zkey, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, batch), nil
end

local function head_score(zkey)
  local h = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if h[2] == nil then
    return -1
  end
  return tonumber(h[2])
end

-- Tell the keeper about a deadline earlier than the set's current earliest
-- (or the first one), so it never has to poll to be precise. earlier reads
-- (before a script's first write, and before the member is added); wake
-- publishes.
local function earlier(zkey, due)
  local h = head_score(zkey)
  return h < 0 or due < h
end

local function wake(kind, due, chan, shard)
  redis.call('PUBLISH', chan, kind .. ' ' .. shard .. ' ' .. string.format('%d', due))
end

-- The keeper measures only shards that changed. The first change after a
-- measure deletes the clean flag and says so once; later changes are silent.
local function mark_dirty(clean, chan, shard)
  if redis.call('DEL', clean) == 1 then
    redis.call('PUBLISH', chan, WAKE_MEASURE .. ' ' .. shard .. ' 0')
  end
end

-- meta is "<enqueued ms>|<expires ms or 0>".
local function parse_meta(m)
  if not m then
    return 0, 0
  end
  local a, b = string.match(m, '^(%d+)|(%d+)$')
  return tonumber(a) or 0, tonumber(b) or 0
end

-- Redis 7's Lua refuses to unpack more than LUAI_MAXCSTACK (8000) values,
-- and a script that fails half-way is not rolled back: every variadic call
-- takes at most CHUNK values (see luaChunk in scripts.go).

-- Run cmd on key with args (ids, or score, id pairs) in chunks.
local function bulk(cmd, key, args)
  for i = 1, #args, CHUNK do
    redis.call(cmd, key, unpack(args, i, math.min(i + CHUNK - 1, #args)))
  end
end

-- A multi-key read (HMGET, ZMSCORE) of any number of fields, in chunks; one
-- list in field order (false for a missing field).
local function chunked_get(cmd, key, fields)
  local out = {}
  for i = 1, #fields, CHUNK do
    local part = redis.call(cmd, key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for j = 1, #part do
      out[#out + 1] = part[j]
    end
  end
  return out
end

local function hmget(key, fields)
  return chunked_get('HMGET', key, fields)
end

-- Forget every per-message field of the given ids.
local function forget(ids, body, meta, prio, dlv)
  bulk('HDEL', body, ids)
  bulk('HDEL', meta, ids)
  bulk('HDEL', prio, ids)
  bulk('HDEL', dlv, ids)
end

local function is_int(v)
  return type(v) == 'string' and #v <= 18 and string.find(v, '^-?%d+$') ~= nil
end

-- A score read back from a hash (a message's priority), as ZADD takes it.
-- The scripts write integers there; anything else (a hand edit) falls back
-- to def rather than make ZADD fail half-way through a move.
local function score_of(v, def)
  if type(v) == 'string' then
    if string.find(v, '^-?%d+$') then
      return v
    end
    local n = tonumber(v)
    if n and n == n then
      return string.format('%.17g', n)
    end
  end
  return def
end

-- Move ids from the sorted set src to dst with the scores in zargs
-- ({score1, id1, ...}): the first write of a pass. The ZADD goes first, so
-- that a wrong-typed dst refuses the pass before anything is written with
-- no TYPE call to ask first (src was read, so it is a sorted set). A Redis
-- at its maxmemory (noeviction) refuses a ZADD until the script has
-- written something, and then lets every write through so that no script
-- stops half-way; a move frees what it adds, so then it removes first,
-- once dst's type is asked (Redis refuses for memory before it looks at
-- the key). Returns an error reply when nothing was written, else nil.
local function move_members(src, ids, dst, zargs)
  local r = redis.pcall('ZADD', dst, unpack(zargs, 1, math.min(CHUNK, #zargs)))
  if type(r) == 'table' and r.err then
    if string.find(r.err, '^OOM') then
      local err = check_types({dst, 'zset'})
      if err then return err end
      bulk('ZREM', src, ids)
      bulk('ZADD', dst, zargs)
      return nil
    end
    if string.find(r.err, '^WRONGTYPE') then
      return check_types({dst, 'zset'}) or r
    end
    return r
  end
  for i = CHUNK + 1, #zargs, CHUNK do
    redis.call('ZADD', dst, unpack(zargs, i, math.min(i + CHUNK - 1, #zargs)))
  end
  bulk('ZREM', src, ids)
  return nil
end

-- A flag (a string key) that a write deletes, such as the clean flag: true
-- when it is set, false when absent, or KEEPER_WRONGTYPE. Checked before
-- the first write; an absent flag then costs no DEL.
local function flag_set(key)
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then
    return false
  end
  if t ~= 'string' then
    return nil, redis.error_reply('KEEPER_WRONGTYPE ' .. key .. ' is a ' .. t .. ', want string')
  end
  return true
end

-- HINCRBY fails on a field that is not an integer. Scripts check the
-- counters they will raise before their first write, so that a hand-edited
-- counter refuses the script instead of failing it half-way.
local function check_counters(stats, fields)
  local vals = redis.call('HMGET', stats, unpack(fields))
  for i = 1, #fields do
    if vals[i] and not is_int(vals[i]) then
      return redis.error_reply('KEEPER_WRONGTYPE ' .. stats .. ' field ' .. fields[i] .. ' is ' .. vals[i] .. ', want an integer')
    end
  end
  return nil, vals
end

-- Add deltas[i] to the counter fields[i] of stats, whose values check_counters
-- read (vals): one HSET of the sums that Lua's numbers hold exactly (below
-- 2^53), HINCRBY for any larger, instead of one HINCRBY per field.
local function add_counters(stats, fields, vals, deltas)
  local set = {}
  for i, f in ipairs(fields) do
    local old = tonumber(vals[i] or '0') or 0
    local sum = old + deltas[i]
    if math.abs(old) < 2 ^ 53 and math.abs(sum) < 2 ^ 53 then
      set[#set + 1] = f
      set[#set + 1] = string.format('%d', sum)
    else
      redis.call('HINCRBY', stats, f, string.format('%d', deltas[i]))
    end
  end
  if #set > 0 then
    redis.call('HSET', stats, unpack(set))
  end
end
