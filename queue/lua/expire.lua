-- expire (housekeeping): drop messages whose TTL passed, oldest first. The
-- TTL index holds only messages that are ready, locked or dead; an in-flight
-- message is checked when its lease ends (requeue, nack) instead.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua)
-- KEYS[5] ttl  KEYS[6] ready  KEYS[7] locked  KEYS[8] dead  KEYS[9] body
-- KEYS[10] meta  KEYS[11] prio  KEYS[12] dlv  KEYS[13] stats  KEYS[14] clean
-- ARGV[4] batch
-- One call takes any number of shards of one hash slot: the keys and
-- arguments above repeat in that order once per shard (see each_shard).
-- Returns, for each shard in order, its error or {expired, next_due_ms,
-- now_us}; -1 for none.
-- Errors: KEEPER_BADARG, KEEPER_DELETED, KEEPER_FENCED <fence> <owner>,
-- KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local function expire_shard(k, a)
  use_head(k, a)
  local TTL, READY, LOCKED, DEAD = KEYS[k + 5], KEYS[k + 6], KEYS[k + 7], KEYS[k + 8]
  local BODY, META, PRIO = KEYS[k + 9], KEYS[k + 10], KEYS[k + 11]
  local DLV, STATS, CLEAN = KEYS[k + 12], KEYS[k + 13], KEYS[k + 14]
  local batch, err = batch_arg(a)
  if err then return err end
  err = fence_check('expire')
  if err then return err end
  err = check_types({TTL, 'zset', READY, 'zset', LOCKED, 'zset', DEAD, 'zset', BODY, 'hash',
    META, 'hash', PRIO, 'hash', DLV, 'hash', STATS, 'hash', CLEAN, 'string'})
  if err then return err end
  err = check_counters(STATS, {'expired'})
  if err then return err end
  local now = now_us()
  local ids = redis.call('ZRANGEBYSCORE', TTL, '-inf', math.floor(now / 1000), 'LIMIT', 0, batch)

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
end

return each_shard(14, 4, expire_shard)
