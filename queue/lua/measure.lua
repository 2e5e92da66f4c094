-- measure (housekeeping): the counts, the head of ready and the cumulative
-- counters of one shard, then mark it clean so that it is measured again only
-- after something changes (see mark_dirty in lib.lua).
-- KEYS[1] fence  KEYS[2] ready  KEYS[3] inflight  KEYS[4] locked  KEYS[5] dead
-- KEYS[6] stats  KEYS[7] clean
-- ARGV[1] ownership token
-- Returns {now_us, ready, inflight, locked, dead, ready_head_score (nil = none;
-- priorities may be negative, so no number can stand for "none"),
-- field1, value1, field2, value2, ...} (the stats hash).
-- KEYS[8] history stream  ARGV[2] "1" to record this pass in it
-- Errors: KEEPER_FENCED <fence>.
-- Every read and check comes before the first write.
local err = check_types({KEYS[1], 'string', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'zset', KEYS[6], 'hash', KEYS[7], 'string', KEYS[8], 'stream'})
if err then return err end
err = fence_check(KEYS[1], ARGV[1], KEYS[8], ARGV[2], 'measure')
if err then return err end
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2] or false
local out = {now_us(), redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]),
  redis.call('ZCARD', KEYS[4]), redis.call('ZCARD', KEYS[5]), head}
local stats = redis.call('HGETALL', KEYS[6])
for i = 1, #stats do
  out[#out + 1] = stats[i]
end

fence_raise(KEYS[1], ARGV[1])
redis.call('SET', KEYS[7], '1')
record(KEYS[8], ARGV[2], 'measure', ARGV[1], 1, 0)
return out
