-- unlock (housekeeping): move locked messages whose unlock time has come back
-- to ready, oldest due first, with the score they are to be served at.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua)
-- KEYS[5] locked  KEYS[6] ready  KEYS[7] prio  KEYS[8] stats  KEYS[9] clean
-- ARGV[4] batch
-- Returns {moved, next_due_ms (-1 = none), now_us, lag_us_1, ..., lag_us_n}
-- where lag = moved time - unlock time.
-- Errors: KEEPER_BADARG, KEEPER_DELETED, KEEPER_FENCED <fence> <owner>,
-- KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local LOCKED, READY, PRIO, STATS, CLEAN = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local batch, err = batch_arg()
if err then return err end
err = fence_check('unlock')
if err then return err end
err = check_types({LOCKED, 'zset', READY, 'zset', PRIO, 'hash', STATS, 'hash', CLEAN, 'string'})
if err then return err end
err = check_counters(STATS, {'unlocked'})
if err then return err end
local now = now_us()
local now_ms = math.floor(now / 1000)
local due = redis.call('ZRANGEBYSCORE', LOCKED, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, batch)
local out = {0, -1, now}
local ids, zargs = {}, {}
for i = 1, #due, 2 do
  ids[#ids + 1] = due[i]
end
if #ids > 0 then
  local prios = hmget(PRIO, ids)
  for i, id in ipairs(ids) do
    zargs[#zargs + 1] = score_of(prios[i], now_ms)
    zargs[#zargs + 1] = id
    out[#out + 1] = now - tonumber(due[2 * i]) * 1000
  end
end

fence_raise()
if #ids > 0 then
  bulk('ZREM', LOCKED, ids)
  bulk('ZADD', READY, zargs)
  redis.call('HINCRBY', STATS, 'unlocked', #ids)
  redis.call('DEL', CLEAN)
  out[1] = #ids
end
record('unlock', 1, out[1])
out[2] = head_score(LOCKED)
return out
