-- measure (housekeeping): the counts, the head of ready and the cumulative
-- counters of one shard, then mark it clean so that it is measured again only
-- after something changes (see mark_dirty in lib.lua).
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua)
-- KEYS[5] ready  KEYS[6] inflight  KEYS[7] locked  KEYS[8] dead  KEYS[9] stats
-- KEYS[10] clean
-- One call takes any number of shards of one hash slot: the keys and
-- arguments above repeat in that order once per shard (see each_shard).
-- Returns, for each shard in order, its error or {now_us, ready, inflight,
-- locked, dead, ready_head_score (nil = none; priorities may be negative, so
-- no number can stand for "none"), field1, value1, field2, value2, ...} (the
-- stats hash).
-- Errors: KEEPER_DELETED, KEEPER_FENCED <fence> <owner>, KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
-- The reads of one shard, run under pcall: a read of a wrong-typed key
-- fails by itself, before anything of that shard was written, so the keys'
-- types are asked only then (six TYPE calls a shard were a fifth of what a
-- measurement cost Redis, BenchmarkMeasure).
local function reads(READY, INFLIGHT, LOCKED, DEAD, STATS)
  local head = redis.call('ZRANGE', READY, 0, 0, 'WITHSCORES')[2] or false
  local out = {now_us(), redis.call('ZCARD', READY), redis.call('ZCARD', INFLIGHT),
    redis.call('ZCARD', LOCKED), redis.call('ZCARD', DEAD), head}
  local stats = redis.call('HGETALL', STATS)
  for i = 1, #stats do
    out[#out + 1] = stats[i]
  end
  return out
end

local function measure_shard(k, a)
  use_head(k, a)
  local READY, INFLIGHT, LOCKED = KEYS[k + 5], KEYS[k + 6], KEYS[k + 7]
  local DEAD, STATS, CLEAN = KEYS[k + 8], KEYS[k + 9], KEYS[k + 10]
  local err = fence_check('measure')
  if err then return err end
  local ok, out = pcall(reads, READY, INFLIGHT, LOCKED, DEAD, STATS)
  if not ok then
    return read_failed(out, {READY, 'zset', INFLIGHT, 'zset', LOCKED, 'zset', DEAD, 'zset', STATS, 'hash'})
  end
  -- The one key written: SET would replace a key of another type.
  err = check_types({CLEAN, 'string'})
  if err then return err end

  fence_raise()
  redis.call('SET', CLEAN, '1')
  record('measure', 1, 0)
  return out
end

return each_shard(10, 3, measure_shard)
