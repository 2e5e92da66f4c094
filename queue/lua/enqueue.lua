-- enqueue: add one message to a shard, unless a message with its id exists.
-- KEYS[1] tombstone of a deleted queue (see check_live in lib.lua)
-- KEYS[2] ready  KEYS[3] locked  KEYS[4] inflight  KEYS[5] ttl
-- KEYS[6] body   KEYS[7] meta    KEYS[8] prio      KEYS[9] dlv
-- KEYS[10] stats  KEYS[11] clean  KEYS[12] trim-wake flag
-- ARGV[1] id  ARGV[2] payload  ARGV[3] priority score ("" = enqueue time, ms)
-- ARGV[4] delay ms  ARGV[5] ttl ms (0 = none)  ARGV[6] max payload bytes
-- ARGV[7] max size (0 = unbounded)  ARGV[8] wake channel  ARGV[9] shard name
-- Returns {1, enqueued_ms} when added; {0, enqueued_ms of the existing one}
-- when the id is already in the shard (nothing changes).
-- Errors: KEEPER_DELETED, KEEPER_TOOBIG, KEEPER_WRONGTYPE, KEEPER_BADARG.
-- Every read and check comes before the first write.
local err = check_live(KEYS[1])
if err then return err end
err = check_types({KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset', KEYS[5], 'zset',
  KEYS[6], 'hash', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash', KEYS[10], 'hash', KEYS[11], 'string', KEYS[12], 'string'})
if err then return err end
local id, payload = ARGV[1], ARGV[2]
if #payload > tonumber(ARGV[6]) then
  return redis.error_reply('KEEPER_TOOBIG payload is ' .. #payload .. ' bytes, the limit is ' .. ARGV[6])
end
if ARGV[3] ~= '' and not string.find(ARGV[3], '^-?%d+$') then
  return redis.error_reply('KEEPER_BADARG priority ' .. ARGV[3] .. ' is not an integer')
end
err = check_counters(KEYS[10], {'enqueued', 'deduplicated'})
if err then return err end
local existing = redis.call('HGET', KEYS[7], id)
if existing then
  local enq = parse_meta(existing)
  redis.call('HINCRBY', KEYS[10], 'deduplicated', 1)
  return {0, enq}
end
local now = math.floor(now_us() / 1000)
local delay, ttl, maxsize = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[7])
local chan, shard = ARGV[8], ARGV[9]
local exp, due = 0, 0
if ttl > 0 then exp = now + ttl end
if delay > 0 then due = now + delay end
local wake_e = exp > 0 and earlier(KEYS[5], exp)
local wake_u = due > 0 and earlier(KEYS[3], due)
-- Over the cap (this message included): wake the keeper, once per trim
-- pass (the flag is cleared by the pass), so a shard kept over its cap by
-- in-flight messages does not turn every enqueue into a publish.
local over = maxsize > 0 and
  redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4]) + 1 > maxsize

redis.call('HSET', KEYS[6], id, payload)
redis.call('HSET', KEYS[7], id, string.format('%d|%d', now, exp))
redis.call('HSET', KEYS[8], id, ARGV[3] ~= '' and ARGV[3] or string.format('%d', now))
if exp > 0 then
  if wake_e then wake('e', exp, chan, shard) end
  redis.call('ZADD', KEYS[5], exp, id)
end
if due > 0 then
  if wake_u then wake('u', due, chan, shard) end
  redis.call('ZADD', KEYS[3], due, id)
else
  redis.call('ZADD', KEYS[2], ARGV[3] ~= '' and ARGV[3] or now, id)
end
redis.call('HINCRBY', KEYS[10], 'enqueued', 1)
if over and redis.call('SET', KEYS[12], '1', 'NX') then
  redis.call('PUBLISH', chan, 't ' .. shard .. ' ' .. string.format('%d', now))
end
mark_dirty(KEYS[11], chan, shard)
return {1, now}
