-- deckard_timeout (housekeeping): move the ids of a Deckard queue's tmp pool
-- whose ack deadline has passed back to ready with score 0 (ahead of
-- everything, as Deckard does), oldest deadline first, negative deadlines
-- included.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua)
-- KEYS[5] tmp  KEYS[6] ready  KEYS[7] stats
-- ARGV[4] batch
-- Returns {moved, next_due_ms (-1 = none), now_us}.
-- Errors: KEEPER_BADARG, KEEPER_DELETED, KEEPER_FENCED <fence> <owner>,
-- KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local TMP, READY, STATS = KEYS[5], KEYS[6], KEYS[7]
local batch, err = batch_arg()
if err then return err end
err = fence_check('requeue')
if err then return err end
err = check_types({TMP, 'zset', READY, 'zset', STATS, 'hash'})
if err then return err end
err = check_counters(STATS, {'requeued'})
if err then return err end
local now = now_us()
local now_ms = math.floor(now / 1000)
local ids = redis.call('ZRANGEBYSCORE', TMP, '-inf', now_ms, 'LIMIT', 0, batch)
local zargs = {}
for _, id in ipairs(ids) do
  zargs[#zargs + 1] = 0
  zargs[#zargs + 1] = id
end

fence_raise()
if #ids > 0 then
  bulk('ZADD', READY, zargs)
  -- The lowest ranks: ZRANGEBYSCORE from -inf returned them in rank order.
  redis.call('ZREMRANGEBYRANK', TMP, 0, #ids - 1)
  redis.call('HINCRBY', STATS, 'requeued', #ids)
end
record('requeue', 1, #ids)
return {#ids, due_head(TMP), now}
