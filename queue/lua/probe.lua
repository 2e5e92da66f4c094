-- probe: the earliest deadline of each timed set of one shard, and its
-- excess over max size. The keeper's safety sweep probes read-only; the
-- first probe after the keeper takes a shard also claims it: it raises the
-- fence to the new token at once, so a previous owner that is paused or cut
-- off is refused from that moment, not only from the new owner's first
-- housekeeping pass.
-- KEYS[1] locked  KEYS[2] inflight  KEYS[3] ttl  KEYS[4] ready  KEYS[5] fence
-- KEYS[6] history stream
-- ARGV[1] max size (0 = unbounded: the size is not read)  ARGV[2] ownership
-- token  ARGV[3] "1" to claim (fence) the shard  ARGV[4] "1" to record the
-- claim in the history
-- Returns {locked_head_ms, inflight_head_ms, ttl_head_ms, excess}; -1 = none.
-- Errors: KEEPER_FENCED <fence> (claims only), KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local claim = ARGV[3] == '1'
local err = check_types({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'string', KEYS[6], 'stream'})
if err then return err end
if claim then
  err = fence_check(KEYS[5], ARGV[2], KEYS[6], ARGV[4], 'claim')
  if err then return err end
end
local excess = 0
local maxsize = tonumber(ARGV[1])
if maxsize > 0 then
  excess = redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[1]) - maxsize
end
local out = {head_score(KEYS[1]), head_score(KEYS[2]), head_score(KEYS[3]), excess}

if claim then
  fence_raise(KEYS[5], ARGV[2])
  record(KEYS[6], ARGV[4], 'claim', ARGV[2], 1, 0)
end
return out
