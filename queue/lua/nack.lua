-- nack: a consumer gives a message back, now or locked until a later time.
-- KEYS[1] inflight  KEYS[2] ready  KEYS[3] locked  KEYS[4] dead  KEYS[5] ttl
-- KEYS[6] tok  KEYS[7] body  KEYS[8] meta  KEYS[9] prio  KEYS[10] dlv
-- KEYS[11] stats  KEYS[12] clean
-- ARGV[1] id  ARGV[2] delivery token  ARGV[3] lock ms (0 = ready now)
-- ARGV[4] priority score to restore ("" = keep)  ARGV[5] max deliveries
-- (0 = unlimited)  ARGV[6] wake channel  ARGV[7] shard name
-- Returns the new state: 1 ready, 2 locked, 3 dead (its deliveries reached
-- max deliveries), 4 expired (its TTL had passed).
-- Errors: KEEPER_STALE as for ack; nothing changes then.
local err = check_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'zset', KEYS[6], 'hash', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash',
  KEYS[10], 'hash', KEYS[11], 'hash', KEYS[12], 'string'})
if err then return err end
local id = ARGV[1]
if redis.call('HGET', KEYS[6], id) ~= ARGV[2] or not redis.call('ZSCORE', KEYS[1], id) then
  return redis.error_reply('KEEPER_STALE message ' .. id .. ' is not in flight under token ' .. ARGV[2])
end
local lock, maxd, chan, shard = tonumber(ARGV[3]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local now = math.floor(now_us() / 1000)
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[6], id)
redis.call('HINCRBY', KEYS[11], 'nacked', 1)
mark_dirty(KEYS[12], chan, shard)
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[9], id, ARGV[4])
end
local _, exp = parse_meta(redis.call('HGET', KEYS[8], id))
if exp > 0 and exp <= now then
  forget({id}, KEYS[7], KEYS[8], KEYS[9], KEYS[10])
  redis.call('HINCRBY', KEYS[11], 'expired', 1)
  return 4
end
local state
if maxd > 0 and (tonumber(redis.call('HGET', KEYS[10], id)) or 0) >= maxd then
  redis.call('ZADD', KEYS[4], now, id)
  redis.call('HINCRBY', KEYS[11], 'dead_lettered', 1)
  state = 3
elseif lock > 0 then
  local due = now + lock
  wake_if_earlier(KEYS[3], due, 'u', chan, shard)
  redis.call('ZADD', KEYS[3], due, id)
  state = 2
else
  redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[9], id) or now, id)
  state = 1
end
if exp > 0 then
  wake_if_earlier(KEYS[5], exp, 'e', chan, shard)
  redis.call('ZADD', KEYS[5], exp, id)
end
return state
