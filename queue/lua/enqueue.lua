-- enqueue: add one message to a shard, unless a message with its id exists.
-- KEYS[1] deleted: the tombstone of a deleted queue (see check_live in lib.lua)
-- KEYS[2] gen: the shard's config generation (see check_gen in lib.lua)
-- KEYS[3] ready  KEYS[4] locked  KEYS[5] inflight  KEYS[6] ttl
-- KEYS[7] body   KEYS[8] meta    KEYS[9] prio      KEYS[10] dlv
-- KEYS[11] stats  KEYS[12] clean  KEYS[13] trimwake: the trim-wake flag
-- ARGV[1] id  ARGV[2] payload  ARGV[3] priority: the score ("" = enqueue
-- time, ms)  ARGV[4] delay_ms  ARGV[5] ttl_ms (0 = none)  ARGV[6] max_payload:
-- bytes  ARGV[7] max_size (0 = unbounded)  ARGV[8] wake: the wake channel
-- ARGV[9] shard: its name  ARGV[10] generation: the client's config's
-- Returns {1, enqueued_ms} when added; {0, enqueued_ms of the existing one}
-- when the id is already in the shard (nothing changes).
-- Errors: KEEPER_DELETED, KEEPER_STALECONFIG <generation>, KEEPER_TOOBIG,
-- KEEPER_WRONGTYPE, KEEPER_BADARG.
-- Every read and check comes before the first write.
local err = check_live(KEYS[1])
if err then return err end
err = check_gen(KEYS[2], ARGV[10])
if err then return err end
err = check_types({KEYS[3], 'zset', KEYS[4], 'zset', KEYS[5], 'zset', KEYS[6], 'zset',
  KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash', KEYS[10], 'hash', KEYS[11], 'hash', KEYS[12], 'string', KEYS[13], 'string'})
if err then return err end
local id, payload = ARGV[1], ARGV[2]
if #payload > tonumber(ARGV[6]) then
  return redis.error_reply('KEEPER_TOOBIG payload is ' .. #payload .. ' bytes, the limit is ' .. ARGV[6])
end
if ARGV[3] ~= '' and not string.find(ARGV[3], '^-?%d+$') then
  return redis.error_reply('KEEPER_BADARG priority ' .. ARGV[3] .. ' is not an integer')
end
err = check_counters(KEYS[11], {'enqueued', 'deduplicated'})
if err then return err end
local existing = redis.call('HGET', KEYS[8], id)
if existing then
  local enq = parse_meta(existing)
  redis.call('HINCRBY', KEYS[11], 'deduplicated', 1)
  return {0, enq}
end
local now = math.floor(now_us() / 1000)
local delay, ttl, maxsize = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local chan, shard = ARGV[8], ARGV[9]
local exp, due = 0, 0
if ttl > 0 then exp = now + ttl end
if delay > 0 then due = now + delay end
local wake_e = exp > 0 and earlier(KEYS[6], exp)
local wake_u = due > 0 and earlier(KEYS[4], due)
-- Over the cap (this message included): wake the keeper, once per trim
-- pass (the flag is cleared by the pass), so a shard kept over its cap by
-- in-flight messages does not turn every enqueue into a publish.
local over = maxsize > 0 and
  redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[5]) + 1 > maxsize

redis.call('HSET', KEYS[7], id, payload)
redis.call('HSET', KEYS[8], id, string.format('%d|%d', now, exp))
redis.call('HSET', KEYS[9], id, ARGV[3] ~= '' and ARGV[3] or string.format('%d', now))
if exp > 0 then
  if wake_e then wake(WAKE_EXPIRE, exp, chan, shard) end
  redis.call('ZADD', KEYS[6], exp, id)
end
if due > 0 then
  if wake_u then wake(WAKE_UNLOCK, due, chan, shard) end
  redis.call('ZADD', KEYS[4], due, id)
else
  redis.call('ZADD', KEYS[3], ARGV[3] ~= '' and ARGV[3] or now, id)
end
redis.call('HINCRBY', KEYS[11], 'enqueued', 1)
if over and redis.call('SET', KEYS[13], '1', 'NX') then
  redis.call('PUBLISH', chan, WAKE_TRIM .. ' ' .. shard .. ' ' .. string.format('%d', now))
end
mark_dirty(KEYS[12], chan, shard)
return {1, now}
