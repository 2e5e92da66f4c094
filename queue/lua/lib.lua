-- lib.lua: helpers that scripts.go prepends to every keeper script, so each
-- script stays one EVALSHA touching one hash slot.
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

-- History, off unless the keeper asks for it (chaos runs): one stream entry
-- per housekeeping pass, accepted or refused, with its token and how many
-- messages it moved, so a checker can replay who wrote what under which
-- token. The stream is capped, so it cannot grow without bound.
local function record(hist, on, task, token, accepted, moved)
  if on == '1' then
    redis.call('XADD', hist, 'MAXLEN', '~', 1000000, '*', 'task', task, 'token', token,
      'ok', accepted, 'moved', moved)
  end
end

-- Check a housekeeping token against the shard's fence, without writing:
-- a token below the fence is refused (the refusal is recorded when history
-- is on). Every script checks before its first write and raises the fence
-- (fence_raise) with its other writes, so a refused or failing pass changes
-- nothing.
local function fence_check(key, token_str, hist, on, task)
  local token = tonumber(token_str)
  local cur = redis.call('GET', key)
  local f = tonumber(cur or '0') or 0
  if token == nil or token < f then
    record(hist, on, task, token_str, 0, 0)
    return redis.error_reply('KEEPER_FENCED ' .. (cur or '0'))
  end
  return nil
end

-- Raise the fence to an accepted token: accepted tokens never decrease.
local function fence_raise(key, token_str)
  local f = tonumber(redis.call('GET', key) or '0') or 0
  if tonumber(token_str) > f then
    redis.call('SET', key, token_str)
  end
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
    redis.call('PUBLISH', chan, 'm ' .. shard .. ' 0')
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
-- and a script that fails half-way is not rolled back: the writes before
-- the error stay. So every variadic call takes at most CHUNK values: a
-- quarter of the limit, far below it whatever else is on the Lua stack at
-- the call, while a pass at the default batch (1000) still moves each set
-- in one call. CHUNK is even, so a (score, member) pair is never split.
local CHUNK = 2000

-- Run cmd on key with args (ids, or score, id pairs) in chunks.
local function bulk(cmd, key, args)
  for i = 1, #args, CHUNK do
    redis.call(cmd, key, unpack(args, i, math.min(i + CHUNK - 1, #args)))
  end
end

-- HMGET of any number of fields, in chunks; one list in field order (false
-- for a missing field).
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, CHUNK do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for j = 1, #part do
      out[#out + 1] = part[j]
    end
  end
  return out
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
  return nil
end
