-- enqueue: add one message to a shard, unless a message with its id exists.
-- KEYS[1] ready  KEYS[2] locked  KEYS[3] inflight  KEYS[4] ttl
-- KEYS[5] body   KEYS[6] meta    KEYS[7] prio      KEYS[8] dlv
-- KEYS[9] stats  KEYS[10] clean  KEYS[11] trim-wake flag
-- ARGV[1] id  ARGV[2] payload  ARGV[3] priority score ("" = enqueue time, ms)
-- ARGV[4] delay ms  ARGV[5] ttl ms (0 = none)  ARGV[6] max payload bytes
-- ARGV[7] max size (0 = unbounded)  ARGV[8] wake channel  ARGV[9] shard name
-- Returns {1, enqueued_ms} when added; {0, enqueued_ms of the existing one}
-- when the id is already in the shard (nothing changes).
-- Errors: KEEPER_TOOBIG, KEEPER_WRONGTYPE, KEEPER_BADARG.
-- Every read and check comes before the first write.
local err = check_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'hash', KEYS[6], 'hash', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash', KEYS[10], 'string', KEYS[11], 'string'})
if err then return err end
local id, payload = ARGV[1], ARGV[2]
if #payload > tonumber(ARGV[6]) then
  return redis.error_reply('KEEPER_TOOBIG payload is ' .. #payload .. ' bytes, the limit is ' .. ARGV[6])
end
if ARGV[3] ~= '' and not string.find(ARGV[3], '^-?%d+$') then
  return redis.error_reply('KEEPER_BADARG priority ' .. ARGV[3] .. ' is not an integer')
end
err = check_counters(KEYS[9], {'enqueued', 'deduplicated'})
if err then return err end
local existing = redis.call('HGET', KEYS[6], id)
if existing then
  local enq = parse_meta(existing)
  redis.call('HINCRBY', KEYS[9], 'deduplicated', 1)
  return {0, enq}
end
local now = math.floor(now_us() / 1000)
local delay, ttl, maxsize = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local chan, shard = ARGV[8], ARGV[9]
local exp, due = 0, 0
if ttl > 0 then exp = now + ttl end
if delay > 0 then due = now + delay end
local wake_e = exp > 0 and earlier(KEYS[4], exp)
local wake_u = due > 0 and earlier(KEYS[2], due)
-- Over the cap (this message included): wake the keeper, once per trim
-- pass (the flag is cleared by the pass), so a shard kept over its cap by
-- in-flight messages does not turn every enqueue into a publish.
local over = maxsize > 0 and
  redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]) + 1 > maxsize

redis.call('HSET', KEYS[5], id, payload)
redis.call('HSET', KEYS[6], id, string.format('%d|%d', now, exp))
redis.call('HSET', KEYS[7], id, ARGV[3] ~= '' and ARGV[3] or string.format('%d', now))
if exp > 0 then
  if wake_e then wake('e', exp, chan, shard) end
  redis.call('ZADD', KEYS[4], exp, id)
end
if due > 0 then
  if wake_u then wake('u', due, chan, shard) end
  redis.call('ZADD', KEYS[2], due, id)
else
  redis.call('ZADD', KEYS[1], ARGV[3] ~= '' and ARGV[3] or now, id)
end
redis.call('HINCRBY', KEYS[9], 'enqueued', 1)
if over and redis.call('SET', KEYS[11], '1', 'NX') then
  redis.call('PUBLISH', chan, 't ' .. shard .. ' ' .. string.format('%d', now))
end
mark_dirty(KEYS[10], chan, shard)
return {1, now}
