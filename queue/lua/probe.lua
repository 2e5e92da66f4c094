-- probe (read-only): the earliest deadline of each timed set of one shard,
-- and its excess over max size. The keeper's safety sweep and its first look
-- at a newly owned shard use it; it writes nothing and takes no token.
-- KEYS[1] locked  KEYS[2] inflight  KEYS[3] ttl  KEYS[4] ready
-- ARGV[1] max size (0 = unbounded: the size is not read)
-- Returns {locked_head_ms, inflight_head_ms, ttl_head_ms, excess}; -1 = none.
local excess = 0
local maxsize = tonumber(ARGV[1])
if maxsize > 0 then
  excess = redis.call('ZCARD', KEYS[4]) + redis.call('ZCARD', KEYS[2]) + redis.call('ZCARD', KEYS[1]) - maxsize
end
return {head_score(KEYS[1]), head_score(KEYS[2]), head_score(KEYS[3]), excess}
