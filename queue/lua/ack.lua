-- ack: a consumer finished a message; forget it.
-- KEYS[1] deleted: the tombstone of a deleted queue (see check_live in lib.lua)
-- KEYS[2] inflight  KEYS[3] tok  KEYS[4] body  KEYS[5] meta  KEYS[6] prio
-- KEYS[7] dlv  KEYS[8] stats  KEYS[9] clean
-- ARGV[1] id  ARGV[2] delivery: its delivery token  ARGV[3] wake: the wake channel
-- ARGV[4] shard: the shard's name
-- Returns 1.
-- Errors: KEEPER_DELETED; KEEPER_STALE when the message is not in flight
-- under this token (its lease was recovered, or it is gone); nothing changes
-- then.
-- Every read and check comes before the first write.
local err = check_live(KEYS[1])
if err then return err end
err = check_types({KEYS[2], 'zset', KEYS[3], 'hash', KEYS[4], 'hash', KEYS[5], 'hash',
  KEYS[6], 'hash', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'string'})
if err then return err end
local id = ARGV[1]
if redis.call('HGET', KEYS[3], id) ~= ARGV[2] or not redis.call('ZSCORE', KEYS[2], id) then
  return redis.error_reply('KEEPER_STALE message ' .. id .. ' is not in flight under token ' .. ARGV[2])
end
err = check_counters(KEYS[8], {'acked'})
if err then return err end

redis.call('ZREM', KEYS[2], id)
redis.call('HDEL', KEYS[3], id)
forget({id}, KEYS[4], KEYS[5], KEYS[6], KEYS[7])
redis.call('HINCRBY', KEYS[8], 'acked', 1)
mark_dirty(KEYS[9], ARGV[3], ARGV[4])
return 1
