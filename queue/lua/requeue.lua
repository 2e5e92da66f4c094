-- requeue (housekeeping): recover expired leases, oldest deadline first. A
-- message goes back to ready with its score; to dead when it has been
-- delivered max-deliveries times already; or is dropped when its TTL passed.
-- Deliveries are counted at pull, so the requeued copy already carries +1.
-- KEYS[1] fence  KEYS[2] inflight  KEYS[3] ready  KEYS[4] dead  KEYS[5] ttl
-- KEYS[6] tok  KEYS[7] dlv  KEYS[8] prio  KEYS[9] meta  KEYS[10] body
-- KEYS[11] stats  KEYS[12] clean
-- ARGV[1] ownership token  ARGV[2] batch size  ARGV[3] max deliveries
-- (0 = unlimited)
-- Returns {handled, next_due_ms, now_us, requeued, dead_lettered, expired,
-- ttl_head_ms}; -1 for none.
-- KEYS[13] history stream  ARGV[4] "1" to record this pass in it
-- Errors: KEEPER_FENCED <fence>.
-- Every read and check comes before the first write.
local err = check_types({KEYS[1], 'string', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'zset',
  KEYS[5], 'zset', KEYS[6], 'hash', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash',
  KEYS[10], 'hash', KEYS[11], 'hash', KEYS[12], 'string', KEYS[13], 'stream'})
if err then return err end
err = fence_check(KEYS[1], ARGV[1], KEYS[13], ARGV[4], 'requeue')
if err then return err end
err = check_counters(KEYS[11], {'requeued', 'dead_lettered', 'expired'})
if err then return err end
local now = now_us()
local now_ms = math.floor(now / 1000)
local maxd = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[2]))
local ready, deadz, ttlz, gone = {}, {}, {}, {}
if #ids > 0 then
  local dl = hmget(KEYS[7], ids)
  local prios = hmget(KEYS[8], ids)
  local metas = hmget(KEYS[9], ids)
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

fence_raise(KEYS[1], ARGV[1])
local requeued, dead, expired = #ready / 2, #deadz / 2, #gone
if #ids > 0 then
  bulk('ZREM', KEYS[2], ids)
  bulk('HDEL', KEYS[6], ids)
  bulk('ZADD', KEYS[3], ready)
  bulk('ZADD', KEYS[4], deadz)
  bulk('ZADD', KEYS[5], ttlz)
  forget(gone, KEYS[10], KEYS[9], KEYS[8], KEYS[7])
  if requeued > 0 then redis.call('HINCRBY', KEYS[11], 'requeued', requeued) end
  if dead > 0 then redis.call('HINCRBY', KEYS[11], 'dead_lettered', dead) end
  if expired > 0 then redis.call('HINCRBY', KEYS[11], 'expired', expired) end
  redis.call('DEL', KEYS[12])
end
record(KEYS[13], ARGV[4], 'requeue', ARGV[1], 1, #ids)
return {#ids, head_score(KEYS[2]), now, requeued, dead, expired, head_score(KEYS[5])}
