-- requeue (housekeeping): recover expired leases, oldest deadline first. A
-- message goes back to ready with its score; to dead when it has been
-- delivered max-deliveries times already; or is dropped when its TTL passed.
-- Deliveries are counted at pull, so the requeued copy already carries +1.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua)
-- KEYS[5] inflight  KEYS[6] ready  KEYS[7] dead  KEYS[8] ttl  KEYS[9] tok
-- KEYS[10] dlv  KEYS[11] prio  KEYS[12] meta  KEYS[13] body  KEYS[14] stats
-- KEYS[15] clean
-- ARGV[4] batch  ARGV[5] max_deliveries (0 = unlimited)
-- One call takes any number of shards of one hash slot: the keys and
-- arguments above repeat in that order once per shard (see each_shard).
-- Returns, for each shard in order, its error or {handled, next_due_ms,
-- now_us, requeued, dead_lettered, expired, ttl_head_ms}; -1 for none.
-- Errors: KEEPER_BADARG, KEEPER_DELETED, KEEPER_FENCED <fence> <owner>,
-- KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local function requeue_shard(k, a)
  use_head(k, a)
  local INFLIGHT, READY = KEYS[k + 5], KEYS[k + 6]
  local DEAD, TTL, TOK = KEYS[k + 7], KEYS[k + 8], KEYS[k + 9]
  local DLV, PRIO, META = KEYS[k + 10], KEYS[k + 11], KEYS[k + 12]
  local BODY, STATS, CLEAN = KEYS[k + 13], KEYS[k + 14], KEYS[k + 15]
  local batch, err = batch_arg(a)
  if err then return err end
  err = fence_check('requeue')
  if err then return err end
  -- The ttl index is read after the writes (its new head): checked first.
  -- The keys read below (inflight, dlv, prio, meta) fail by themselves if
  -- wrong-typed, before any write; the counters and the keys written unread
  -- are checked only when there is something to write.
  err = check_types({TTL, 'zset'})
  if err then return err end
  local now = now_us()
  local now_ms = math.floor(now / 1000)
  local maxd = tonumber(ARGV[a + 5])
  local ids = redis.call('ZRANGEBYSCORE', INFLIGHT, '-inf', now_ms, 'LIMIT', 0, batch)
  local ready, deadz, ttlz, gone = {}, {}, {}, {}
  if #ids > 0 then
    local dl = hmget(DLV, ids)
    local prios = hmget(PRIO, ids)
    local metas = hmget(META, ids)
    for i, id in ipairs(ids) do
      local _, exp = parse_meta(metas[i])
      if exp > 0 and exp <= now_ms then
        gone[#gone + 1] = id
      else
        if maxd > 0 and (tonumber(dl[i]) or 0) >= maxd then
          deadz[#deadz + 1] = now_ms
          deadz[#deadz + 1] = id
        else
          ready[#ready + 1] = score_of(prios[i], now_ms)
          ready[#ready + 1] = id
        end
        if exp > 0 then
          ttlz[#ttlz + 1] = exp
          ttlz[#ttlz + 1] = id
        end
      end
    end
  end

  if #ids > 0 then
    err = check_counters(STATS, {'requeued', 'dead_lettered', 'expired'})
    if err then return err end
    err = check_types({TOK, 'hash', READY, 'zset', DEAD, 'zset', BODY, 'hash', CLEAN, 'string'})
    if err then return err end
  end
  fence_raise()
  local requeued, dead, expired = #ready / 2, #deadz / 2, #gone
  if #ids > 0 then
    bulk('ZREM', INFLIGHT, ids)
    bulk('HDEL', TOK, ids)
    bulk('ZADD', READY, ready)
    bulk('ZADD', DEAD, deadz)
    bulk('ZADD', TTL, ttlz)
    forget(gone, BODY, META, PRIO, DLV)
    if requeued > 0 then redis.call('HINCRBY', STATS, 'requeued', requeued) end
    if dead > 0 then redis.call('HINCRBY', STATS, 'dead_lettered', dead) end
    if expired > 0 then redis.call('HINCRBY', STATS, 'expired', expired) end
    redis.call('DEL', CLEAN)
  end
  record('requeue', 1, #ids)
  return {#ids, head_score(INFLIGHT), now, requeued, dead, expired, head_score(TTL)}
end

return each_shard(15, 5, requeue_shard)
