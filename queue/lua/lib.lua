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

-- Accept a housekeeping write under token_str only if it is not below the
-- shard's fence, and raise the fence to it: accepted tokens never decrease.
-- A refusal is recorded (when history is on) before it is returned.
local function fence(key, token_str, hist, on, task)
  local token = tonumber(token_str)
  local cur = redis.call('GET', key)
  local f = tonumber(cur or '0') or 0
  if token == nil or token < f then
    record(hist, on, task, token_str, 0, 0)
    return redis.error_reply('KEEPER_FENCED ' .. (cur or '0'))
  end
  if token > f then
    redis.call('SET', key, token_str)
  end
  return nil
end

local function head_score(zkey)
  local h = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')
  if h[2] == nil then
    return -1
  end
  return tonumber(h[2])
end

-- Tell the keeper about a deadline earlier than the set's current earliest
-- (or the first one), so it never has to poll to be precise. Call before
-- adding the member.
local function wake_if_earlier(zkey, due, kind, chan, shard)
  local h = head_score(zkey)
  if h < 0 or due < h then
    redis.call('PUBLISH', chan, kind .. ' ' .. shard .. ' ' .. string.format('%d', due))
  end
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

-- Append each id (or score, id pair) to a list for one bulk call.
local function bulk(cmd, key, args)
  if #args > 0 then
    redis.call(cmd, key, unpack(args))
  end
end

-- Forget every per-message field of the given ids.
local function forget(ids, body, meta, prio, dlv)
  bulk('HDEL', body, ids)
  bulk('HDEL', meta, ids)
  bulk('HDEL', prio, ids)
  bulk('HDEL', dlv, ids)
end
