-- extend: a consumer still works on a message; move its lease deadline to
-- now + lease (like SQS ChangeMessageVisibility).
-- KEYS[1] deleted: the tombstone of a deleted queue (see check_live in lib.lua)
-- KEYS[2] inflight  KEYS[3] tok
-- ARGV[1] id  ARGV[2] delivery: its delivery token  ARGV[3] lease_ms
-- ARGV[4] wake: the wake channel  ARGV[5] shard: its name
-- Returns the new deadline, ms.
-- Errors: KEEPER_DELETED, KEEPER_STALE as for ack; nothing changes then.
local err = check_live(KEYS[1])
if err then return err end
err = check_types({KEYS[2], 'zset', KEYS[3], 'hash'})
if err then return err end
local id = ARGV[1]
if redis.call('HGET', KEYS[3], id) ~= ARGV[2] or not redis.call('ZSCORE', KEYS[2], id) then
  return redis.error_reply('KEEPER_STALE message ' .. id .. ' is not in flight under token ' .. ARGV[2])
end
local due = math.floor(now_us() / 1000) + tonumber(ARGV[3])
if earlier(KEYS[2], due) then wake(WAKE_REQUEUE, due, ARGV[4], ARGV[5]) end
redis.call('ZADD', KEYS[2], 'XX', due, id)
return due
