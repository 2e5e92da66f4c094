-- nack: a consumer gives a message back, now or locked until a later time.
-- KEYS[1] deleted: the tombstone of a deleted queue (see check_live in lib.lua)
-- KEYS[2] inflight  KEYS[3] ready  KEYS[4] locked  KEYS[5] dead  KEYS[6] ttl
-- KEYS[7] tok  KEYS[8] body  KEYS[9] meta  KEYS[10] prio  KEYS[11] dlv
-- KEYS[12] stats  KEYS[13] clean
-- ARGV[1] id  ARGV[2] delivery: its delivery token  ARGV[3] lock_ms (0 = ready
-- now)  ARGV[4] priority: the score to restore ("" = keep)
-- ARGV[5] max_deliveries (0 = unlimited)  ARGV[6] wake: the wake channel
-- ARGV[7] shard: its name
-- Returns the new state: 1 ready, 2 locked, 3 dead (its deliveries reached
-- max deliveries), 4 expired (its TTL had passed).
-- Errors: KEEPER_DELETED, KEEPER_BADARG; KEEPER_STALE as for ack; nothing
-- changes then.
-- Every read and check comes before the first write.
local err = check_live(KEYS[1])
if err then return err end
err = check_types({KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset', KEYS[5], 'zset',
  KEYS[6], 'zset', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash', KEYS[10], 'hash',
  KEYS[11], 'hash', KEYS[12], 'hash', KEYS[13], 'string'})
if err then return err end
local id = ARGV[1]
if redis.call('HGET', KEYS[7], id) ~= ARGV[2] or not redis.call('ZSCORE', KEYS[2], id) then
  return redis.error_reply('KEEPER_STALE message ' .. id .. ' is not in flight under token ' .. ARGV[2])
end
if ARGV[4] ~= '' and not string.find(ARGV[4], '^-?%d+$') then
  return redis.error_reply('KEEPER_BADARG priority ' .. ARGV[4] .. ' is not an integer')
end
err = check_counters(KEYS[12], {'nacked', 'expired', 'dead_lettered'})
if err then return err end
local lock, maxd, chan, shard = tonumber(ARGV[3]), tonumber(ARGV[5]), ARGV[6], ARGV[7]
local now = math.floor(now_us() / 1000)
local _, exp = parse_meta(redis.call('HGET', KEYS[9], id))
local state, score, due
if exp > 0 and exp <= now then
  state = 4
elseif maxd > 0 and (tonumber(redis.call('HGET', KEYS[11], id)) or 0) >= maxd then
  state = 3
elseif lock > 0 then
  state, due = 2, now + lock
else
  state = 1
  score = ARGV[4]
  if score == '' then score = score_of(redis.call('HGET', KEYS[10], id), now) end
end
local wake_u = state == 2 and earlier(KEYS[4], due)
local wake_e = state ~= 4 and exp > 0 and earlier(KEYS[6], exp)

redis.call('ZREM', KEYS[2], id)
redis.call('HDEL', KEYS[7], id)
redis.call('HINCRBY', KEYS[12], 'nacked', 1)
mark_dirty(KEYS[13], chan, shard)
if state == 4 then
  forget({id}, KEYS[8], KEYS[9], KEYS[10], KEYS[11])
  redis.call('HINCRBY', KEYS[12], 'expired', 1)
  return 4
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[10], id, ARGV[4])
end
if state == 3 then
  redis.call('ZADD', KEYS[5], now, id)
  redis.call('HINCRBY', KEYS[12], 'dead_lettered', 1)
elseif state == 2 then
  if wake_u then wake(WAKE_UNLOCK, due, chan, shard) end
  redis.call('ZADD', KEYS[4], due, id)
else
  redis.call('ZADD', KEYS[3], score, id)
end
if exp > 0 then
  if wake_e then wake(WAKE_EXPIRE, exp, chan, shard) end
  redis.call('ZADD', KEYS[6], exp, id)
end
return state
