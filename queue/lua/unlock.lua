-- unlock (housekeeping): move locked messages whose unlock time has come back
-- to ready, oldest due first, with the score they are to be served at.
-- KEYS[1] fence  KEYS[2] locked  KEYS[3] ready  KEYS[4] prio  KEYS[5] stats
-- KEYS[6] clean
-- ARGV[1] ownership token  ARGV[2] batch size
-- Returns {moved, next_due_ms (-1 = none), now_us, lag_us_1, ..., lag_us_n}
-- where lag = moved time - unlock time.
-- KEYS[7] history stream  ARGV[3] "1" to record this pass in it
-- Errors: KEEPER_FENCED <fence> when a higher token already wrote here.
-- Every read and check comes before the first write.
local err = check_types({KEYS[1], 'string', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'hash',
  KEYS[5], 'hash', KEYS[6], 'string', KEYS[7], 'stream'})
if err then return err end
err = fence_check(KEYS[1], ARGV[1], KEYS[7], ARGV[3], 'unlock')
if err then return err end
err = check_counters(KEYS[5], {'unlocked'})
if err then return err end
local now = now_us()
local now_ms = math.floor(now / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {0, -1, now}
local ids, zargs = {}, {}
for i = 1, #due, 2 do
  ids[#ids + 1] = due[i]
end
if #ids > 0 then
  local prios = hmget(KEYS[4], ids)
  for i, id in ipairs(ids) do
    zargs[#zargs + 1] = score_of(prios[i], now_ms)
    zargs[#zargs + 1] = id
    out[#out + 1] = now - tonumber(due[2 * i]) * 1000
  end
end

fence_raise(KEYS[1], ARGV[1])
if #ids > 0 then
  bulk('ZREM', KEYS[2], ids)
  bulk('ZADD', KEYS[3], zargs)
  redis.call('HINCRBY', KEYS[5], 'unlocked', #ids)
  redis.call('DEL', KEYS[6])
  out[1] = #ids
end
record(KEYS[7], ARGV[3], 'unlock', ARGV[1], 1, out[1])
out[2] = head_score(KEYS[2])
return out
