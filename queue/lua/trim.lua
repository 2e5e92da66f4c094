-- trim (housekeeping): keep a shard within its max size by dropping the ready
-- messages with the lowest score (the oldest, with default priorities), the
-- way a capped stream drops its oldest entries. In-flight and locked messages
-- count towards the size but are never dropped.
-- KEYS[1] fence  KEYS[2] ready  KEYS[3] inflight  KEYS[4] locked  KEYS[5] ttl
-- KEYS[6] body  KEYS[7] meta  KEYS[8] prio  KEYS[9] dlv  KEYS[10] stats
-- KEYS[11] clean  KEYS[13] trim-wake flag (cleared: the next enqueue over
-- the cap wakes the keeper again)
-- ARGV[1] ownership token  ARGV[2] batch size  ARGV[3] max size (0 = none)
-- Returns {trimmed, excess_left, now_us, ready_left}; excess_left may stay
-- positive when in-flight and locked messages alone exceed the cap.
-- KEYS[12] history stream  ARGV[4] "1" to record this pass in it
-- Errors: KEEPER_FENCED <fence>.
-- Every read and check comes before the first write.
local err = check_types({KEYS[1], 'string', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'zset', KEYS[6], 'hash', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash',
  KEYS[10], 'hash', KEYS[11], 'string', KEYS[12], 'stream', KEYS[13], 'string'})
if err then return err end
err = fence_check(KEYS[1], ARGV[1], KEYS[12], ARGV[4], 'trim')
if err then return err end
err = check_counters(KEYS[10], {'trimmed'})
if err then return err end
local now = now_us()
local maxsize = tonumber(ARGV[3])
local ready, excess, ids = 0, 0, {}
if maxsize > 0 then
  ready = redis.call('ZCARD', KEYS[2])
  excess = ready + redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[4]) - maxsize
  local n = math.min(excess, ready, tonumber(ARGV[2]))
  if n > 0 then
    ids = redis.call('ZRANGE', KEYS[2], 0, n - 1)
  end
end

fence_raise(KEYS[1], ARGV[1])
redis.call('DEL', KEYS[13])
if #ids > 0 then
  bulk('ZREM', KEYS[2], ids)
  bulk('ZREM', KEYS[5], ids)
  forget(ids, KEYS[6], KEYS[7], KEYS[8], KEYS[9])
  redis.call('HINCRBY', KEYS[10], 'trimmed', #ids)
  redis.call('DEL', KEYS[11])
end
record(KEYS[12], ARGV[4], 'trim', ARGV[1], 1, #ids)
return {#ids, math.max(excess - #ids, 0), now, ready - #ids}
