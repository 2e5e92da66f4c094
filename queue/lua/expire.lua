-- expire (housekeeping): drop messages whose TTL passed, oldest first. The
-- TTL index holds only messages that are ready, locked or dead; an in-flight
-- message is checked when its lease ends (requeue, nack) instead.
-- KEYS[1..3], ARGV[1..3]: fence, fence owner, history; token, owner, record
-- (see lib.lua)
-- KEYS[4] ttl  KEYS[5] ready  KEYS[6] locked  KEYS[7] dead  KEYS[8] body
-- KEYS[9] meta  KEYS[10] prio  KEYS[11] dlv  KEYS[12] stats  KEYS[13] clean
-- ARGV[4] batch size
-- Returns {expired, next_due_ms, now_us}; -1 for none.
-- Errors: KEEPER_FENCED <fence> <owner>, KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local TTL, READY, LOCKED, DEAD = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local BODY, META, PRIO, DLV, STATS, CLEAN = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12], KEYS[13]
local err = fence_check('expire')
if err then return err end
err = check_types({TTL, 'zset', READY, 'zset', LOCKED, 'zset', DEAD, 'zset', BODY, 'hash',
  META, 'hash', PRIO, 'hash', DLV, 'hash', STATS, 'hash', CLEAN, 'string'})
if err then return err end
err = check_counters(STATS, {'expired'})
if err then return err end
local now = now_us()
local ids = redis.call('ZRANGEBYSCORE', TTL, '-inf', math.floor(now / 1000), 'LIMIT', 0, tonumber(ARGV[4]))

fence_raise()
if #ids > 0 then
  bulk('ZREM', TTL, ids)
  bulk('ZREM', READY, ids)
  bulk('ZREM', LOCKED, ids)
  bulk('ZREM', DEAD, ids)
  forget(ids, BODY, META, PRIO, DLV)
  redis.call('HINCRBY', STATS, 'expired', #ids)
  redis.call('DEL', CLEAN)
end
record('expire', 1, #ids)
return {#ids, head_score(TTL), now}
