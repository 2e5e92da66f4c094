-- trim (housekeeping): keep a shard within its max size by dropping the ready
-- messages with the lowest score (the oldest, with default priorities), the
-- way a capped stream drops its oldest entries. In-flight and locked messages
-- count towards the size but are never dropped.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua)
-- KEYS[5] ready  KEYS[6] inflight  KEYS[7] locked  KEYS[8] ttl  KEYS[9] body
-- KEYS[10] meta  KEYS[11] prio  KEYS[12] dlv  KEYS[13] stats  KEYS[14] clean
-- KEYS[15] trimwake: the trim-wake flag (cleared: the next enqueue over the
-- cap wakes the keeper again)
-- ARGV[4] batch  ARGV[5] max_size (0 = none)
-- One call takes any number of shards of one hash slot: the keys and
-- arguments above repeat in that order once per shard (see each_shard).
-- Returns, for each shard in order, its error or {trimmed, excess_left,
-- now_us, ready_left}; excess_left may stay positive when in-flight and
-- locked messages alone exceed the cap.
-- Errors: KEEPER_BADARG, KEEPER_DELETED, KEEPER_FENCED <fence> <owner>,
-- KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local function trim_shard(k, a)
  use_head(k, a)
  local READY, INFLIGHT, LOCKED, TTL = KEYS[k + 5], KEYS[k + 6], KEYS[k + 7], KEYS[k + 8]
  local BODY, META, PRIO = KEYS[k + 9], KEYS[k + 10], KEYS[k + 11]
  local DLV, STATS, CLEAN, TRIMWAKE = KEYS[k + 12], KEYS[k + 13], KEYS[k + 14], KEYS[k + 15]
  local batch, err = batch_arg(a)
  if err then return err end
  err = fence_check('trim')
  if err then return err end
  err = check_types({READY, 'zset', INFLIGHT, 'zset', LOCKED, 'zset', TTL, 'zset', BODY, 'hash',
    META, 'hash', PRIO, 'hash', DLV, 'hash', STATS, 'hash', CLEAN, 'string', TRIMWAKE, 'string'})
  if err then return err end
  err = check_counters(STATS, {'trimmed'})
  if err then return err end
  local now = now_us()
  local maxsize = tonumber(ARGV[a + 5])
  local ready, excess, ids = 0, 0, {}
  if maxsize > 0 then
    ready = redis.call('ZCARD', READY)
    excess = ready + redis.call('ZCARD', INFLIGHT) + redis.call('ZCARD', LOCKED) - maxsize
    local n = math.min(excess, ready, batch)
    if n > 0 then
      ids = redis.call('ZRANGE', READY, 0, n - 1)
    end
  end

  fence_raise()
  redis.call('DEL', TRIMWAKE)
  if #ids > 0 then
    bulk('ZREM', READY, ids)
    bulk('ZREM', TTL, ids)
    forget(ids, BODY, META, PRIO, DLV)
    redis.call('HINCRBY', STATS, 'trimmed', #ids)
    redis.call('DEL', CLEAN)
  end
  record('trim', 1, #ids)
  return {#ids, math.max(excess - #ids, 0), now, ready - #ids}
end

return each_shard(15, 5, trim_shard)
