-- pull: lease up to n ready messages of one shard, lowest score first.
-- KEYS[1] deleted: the tombstone of a deleted queue (see check_live in lib.lua)
-- KEYS[2] gen: the shard's config generation (see check_gen in lib.lua)
-- KEYS[3] ready  KEYS[4] inflight  KEYS[5] ttl  KEYS[6] body  KEYS[7] meta
-- KEYS[8] prio   KEYS[9] dlv  KEYS[10] tok  KEYS[11] seq  KEYS[12] stats
-- KEYS[13] clean
-- ARGV[1] n (at most MAX_PULL)  ARGV[2] lease_ms  ARGV[3] inflight_share: this
-- partition's share of max in-flight (0 = no cap, -1 = take nothing)
-- ARGV[4] wake: the wake channel  ARGV[5] shard: its name
-- ARGV[6] generation: the client's config's
-- Returns {capped, deadline_ms, id1, token1, deliveries1, body1, id2, ...};
-- capped is 1 when the in-flight cap limited the pull.
-- Messages whose TTL passed are dropped (and counted) instead of delivered.
-- Errors: KEEPER_DELETED, KEEPER_STALECONFIG <generation>, KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local err = check_live(KEYS[1])
if err then return err end
err = check_gen(KEYS[2], ARGV[6])
if err then return err end
err = check_types({KEYS[3], 'zset', KEYS[4], 'zset', KEYS[5], 'zset', KEYS[6], 'hash',
  KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash', KEYS[10], 'hash', KEYS[11], 'string',
  KEYS[12], 'hash', KEYS[13], 'string'})
if err then return err end
local n, lease, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local chan, shard = ARGV[4], ARGV[5]
if n > MAX_PULL then n = MAX_PULL end
local capped = 0
if cap < 0 then
  return {1, 0}
end
if cap > 0 then
  local room = cap - redis.call('ZCARD', KEYS[4])
  if room < n then
    capped = 1
    n = room
  end
end
if n <= 0 then
  return {capped, 0}
end
local ids = redis.call('ZRANGE', KEYS[3], 0, n - 1)
if #ids == 0 then
  return {capped, 0}
end
err = check_counters(KEYS[12], {'pulled', 'expired'})
if err then return err end
local seq = redis.call('GET', KEYS[11])
if seq and not is_int(seq) then
  return redis.error_reply('KEEPER_WRONGTYPE ' .. KEYS[11] .. ' is ' .. seq .. ', want an integer')
end
local now = math.floor(now_us() / 1000)
local metas = hmget(KEYS[7], ids)
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
  wake_r = earlier(KEYS[4], deadline)
  local dl = hmget(KEYS[9], take)
  local bodies = hmget(KEYS[6], take)
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

bulk('ZREM', KEYS[3], ids)
bulk('ZREM', KEYS[5], ids)
if #gone > 0 then
  forget(gone, KEYS[6], KEYS[7], KEYS[8], KEYS[9])
  redis.call('HINCRBY', KEYS[12], 'expired', #gone)
end
if #take > 0 then
  redis.call('INCRBY', KEYS[11], #take)
  if wake_r then wake(WAKE_REQUEUE, deadline, chan, shard) end
  bulk('ZADD', KEYS[4], zargs)
  bulk('HSET', KEYS[9], dargs)
  bulk('HSET', KEYS[10], targs)
  redis.call('HINCRBY', KEYS[12], 'pulled', #take)
end
mark_dirty(KEYS[13], chan, shard)
return out
