-- expire (housekeeping): drop messages whose TTL passed, oldest first. The
-- TTL index holds only messages that are ready, locked or dead; an in-flight
-- message is checked when its lease ends (requeue, nack) instead.
-- KEYS[1] fence  KEYS[2] ttl  KEYS[3] ready  KEYS[4] locked  KEYS[5] dead
-- KEYS[6] body  KEYS[7] meta  KEYS[8] prio  KEYS[9] dlv  KEYS[10] stats
-- KEYS[11] clean
-- ARGV[1] ownership token  ARGV[2] batch size
-- Returns {expired, next_due_ms, now_us}; -1 for none.
-- KEYS[12] history stream  ARGV[3] "1" to record this pass in it
-- Errors: KEEPER_FENCED <fence>.
-- Every read and check comes before the first write.
local err = check_types({KEYS[1], 'string', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'zset', KEYS[6], 'hash', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash',
  KEYS[10], 'hash', KEYS[11], 'string', KEYS[12], 'stream'})
if err then return err end
err = fence_check(KEYS[1], ARGV[1], KEYS[12], ARGV[3], 'expire')
if err then return err end
err = check_counters(KEYS[10], {'expired'})
if err then return err end
local now = now_us()
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', math.floor(now / 1000), 'LIMIT', 0, tonumber(ARGV[2]))

fence_raise(KEYS[1], ARGV[1])
if #ids > 0 then
  bulk('ZREM', KEYS[2], ids)
  bulk('ZREM', KEYS[3], ids)
  bulk('ZREM', KEYS[4], ids)
  bulk('ZREM', KEYS[5], ids)
  forget(ids, KEYS[6], KEYS[7], KEYS[8], KEYS[9])
  redis.call('HINCRBY', KEYS[10], 'expired', #ids)
  redis.call('DEL', KEYS[11])
end
record(KEYS[12], ARGV[3], 'expire', ARGV[1], 1, #ids)
return {#ids, head_score(KEYS[2]), now}
