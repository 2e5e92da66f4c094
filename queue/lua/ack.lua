-- ack: a consumer finished a message; forget it.
-- KEYS[1] inflight  KEYS[2] tok  KEYS[3] body  KEYS[4] meta  KEYS[5] prio
-- KEYS[6] dlv  KEYS[7] stats  KEYS[8] clean
-- ARGV[1] id  ARGV[2] delivery token  ARGV[3] wake channel  ARGV[4] shard
-- Returns 1.
-- Errors: KEEPER_STALE when the message is not in flight under this token
-- (its lease was recovered, or it is gone); nothing changes then.
-- Every read and check comes before the first write.
local err = check_types({KEYS[1], 'zset', KEYS[2], 'hash', KEYS[3], 'hash', KEYS[4], 'hash',
  KEYS[5], 'hash', KEYS[6], 'hash', KEYS[7], 'hash', KEYS[8], 'string'})
if err then return err end
local id = ARGV[1]
if redis.call('HGET', KEYS[2], id) ~= ARGV[2] or not redis.call('ZSCORE', KEYS[1], id) then
  return redis.error_reply('KEEPER_STALE message ' .. id .. ' is not in flight under token ' .. ARGV[2])
end
err = check_counters(KEYS[7], {'acked'})
if err then return err end

redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
forget({id}, KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('HINCRBY', KEYS[7], 'acked', 1)
mark_dirty(KEYS[8], ARGV[3], ARGV[4])
return 1
