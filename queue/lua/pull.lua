-- pull: lease up to n ready messages of one shard, lowest score first.
-- KEYS[1] tombstone of a deleted queue (see check_live in lib.lua)
-- KEYS[2] ready  KEYS[3] inflight  KEYS[4] ttl  KEYS[5] body  KEYS[6] meta
-- KEYS[7] prio   KEYS[8] dlv  KEYS[9] tok  KEYS[10] seq  KEYS[11] stats
-- KEYS[12] clean
-- ARGV[1] n (at most 1000)  ARGV[2] lease ms  ARGV[3] this partition's share
-- of max in-flight (0 = no cap, -1 = take nothing)  ARGV[4] wake channel
-- ARGV[5] shard name
-- Returns {capped, deadline_ms, id1, token1, deliveries1, body1, id2, ...};
-- capped is 1 when the in-flight cap limited the pull.
-- Messages whose TTL passed are dropped (and counted) instead of delivered.
-- Every read and check comes before the first write.
local err = check_live(KEYS[1])
if err then return err end
err = check_types({KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset', KEYS[5], 'hash',
  KEYS[6], 'hash', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash', KEYS[10], 'string',
  KEYS[11], 'hash', KEYS[12], 'string'})
if err then return err end
local n, lease, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local chan, shard = ARGV[4], ARGV[5]
if n > 1000 then n = 1000 end
local capped = 0
if cap < 0 then
  return {1, 0}
end
if cap > 0 then
  local room = cap - redis.call('ZCARD', KEYS[3])
  if room < n then
    capped = 1
    n = room
  end
end
if n <= 0 then
  return {capped, 0}
end
local ids = redis.call('ZRANGE', KEYS[2], 0, n - 1)
if #ids == 0 then
  return {capped, 0}
end
err = check_counters(KEYS[11], {'pulled', 'expired'})
if err then return err end
local seq = redis.call('GET', KEYS[10])
if seq and not is_int(seq) then
  return redis.error_reply('KEEPER_WRONGTYPE ' .. KEYS[10] .. ' is ' .. seq .. ', want an integer')
end
local now = math.floor(now_us() / 1000)
local metas = hmget(KEYS[6], ids)
local take, gone = {}, {}
for i, id in ipairs(ids) do
  local _, exp = parse_meta(metas[i])
  if exp > 0 and exp <= now then
    gone[#gone + 1] = id
  else
    take[#take + 1] = id
  end
end
local out = {capped, 0}
local deadline = now + lease
local zargs, dargs, targs = {}, {}, {}
local wake_r = false
if #take > 0 then
  out[2] = deadline
  wake_r = earlier(KEYS[3], deadline)
  local dl = hmget(KEYS[8], take)
  local bodies = hmget(KEYS[5], take)
  local last = (tonumber(seq) or 0) + #take
  for i, id in ipairs(take) do
    local d = (tonumber(dl[i]) or 0) + 1
    local t = last - #take + i
    zargs[#zargs + 1] = deadline
    zargs[#zargs + 1] = id
    dargs[#dargs + 1] = id
    dargs[#dargs + 1] = d
    targs[#targs + 1] = id
    -- as a string: Lua would print a number above 1e14 in exponent form
    targs[#targs + 1] = string.format('%d', t)
    out[#out + 1] = id
    out[#out + 1] = t
    out[#out + 1] = d
    out[#out + 1] = bodies[i] or ''
  end
end

bulk('ZREM', KEYS[2], ids)
bulk('ZREM', KEYS[4], ids)
if #gone > 0 then
  forget(gone, KEYS[5], KEYS[6], KEYS[7], KEYS[8])
  redis.call('HINCRBY', KEYS[11], 'expired', #gone)
end
if #take > 0 then
  redis.call('INCRBY', KEYS[10], #take)
  if wake_r then wake('r', deadline, chan, shard) end
  bulk('ZADD', KEYS[3], zargs)
  bulk('HSET', KEYS[8], dargs)
  bulk('HSET', KEYS[9], targs)
  redis.call('HINCRBY', KEYS[11], 'pulled', #take)
end
mark_dirty(KEYS[12], chan, shard)
return out
