-- deckard_measure (housekeeping): the counts of a Deckard queue's pools,
-- the oldest timestamp score of ready, and keeper's counters for the queue.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua)
-- KEYS[5] ready  KEYS[6] tmp  KEYS[7] lock_ack  KEYS[8] lock_nack  KEYS[9] stats
-- Returns {now_us, ready, tmp, lock_ack, lock_nack, ready_head_score (nil =
-- none), field1, value1, ...} (the stats hash). ready_head_score is the
-- lowest ready score in [ADD_TIME_MIN, now]: scores there are add times in
-- ms (Deckard's default), while a lower one (0 marks a nacked or timed-out
-- id at the top priority) or one past now is a priority, not an age.
-- Errors: KEEPER_DELETED, KEEPER_FENCED <fence> <owner>, KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local READY, TMP, ACK, NACK, STATS = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local err = fence_check('measure')
if err then return err end

-- The reads, under pcall: a read of a wrong-typed key fails by itself and
-- nothing here writes before them, so the types are asked only then (as
-- in measure.lua).
local function reads()
  local now = now_us()
  local head = redis.call('ZRANGEBYSCORE', READY, ADD_TIME_MIN, math.floor(now / 1000), 'WITHSCORES', 'LIMIT', 0, 1)[2] or false
  local out = {now, redis.call('ZCARD', READY), redis.call('ZCARD', TMP), redis.call('ZCARD', ACK),
    redis.call('ZCARD', NACK), head}
  local stats = redis.call('HGETALL', STATS)
  for i = 1, #stats do
    out[#out + 1] = stats[i]
  end
  return out
end

local ok, out = pcall(reads)
if not ok then
  return read_failed(out, {READY, 'zset', TMP, 'zset', ACK, 'zset', NACK, 'zset', STATS, 'hash'})
end

fence_raise()
record('measure', 1, 0)
return out
