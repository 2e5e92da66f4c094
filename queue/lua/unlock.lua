-- unlock (housekeeping): move locked messages whose unlock time has come back
-- to ready, oldest due first, with the score they are to be served at, and
-- count each one's lag in the shard's unlock-lag histogram.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua)
-- KEYS[5] locked  KEYS[6] ready  KEYS[7] prio  KEYS[8] stats  KEYS[9] clean
-- ARGV[4] batch
-- One call takes any number of shards of one hash slot: the keys and
-- arguments above repeat in that order once per shard (see each_shard).
-- Returns, for each shard in order, its error or {moved, next_due_ms (-1 =
-- none), now_us, lag_us_1, ..., lag_us_n} where lag = moved time - unlock
-- time.
-- The histogram is kept in the stats hash: LAG_FIELDS[i] (lag_le_<bound>us)
-- counts the lags up to LAG_BOUNDS_US[i] (and above the previous bound),
-- the last of LAG_FIELDS (lag_le_inf) those above every bound, lag_sum_us
-- their sum, each lag counted there up to LAG_SUM_CAP_US (so that a pass at
-- the largest batch adds less than 2^53 and the sum stays exact in Lua's
-- numbers; see LagHistogram in counters.go).
-- Errors: KEEPER_BADARG, KEEPER_DELETED, KEEPER_FENCED <fence> <owner>,
-- KEEPER_WRONGTYPE.
-- Every read and check comes before the first write, move_members's ZADD,
-- which checks ready's type by itself.
local function unlock_shard(k, a)
  use_head(k, a)
  local LOCKED, READY, PRIO = KEYS[k + 5], KEYS[k + 6], KEYS[k + 7]
  local STATS, CLEAN = KEYS[k + 8], KEYS[k + 9]
  local batch, err = batch_arg(a)
  if err then return err end
  err = fence_check('unlock')
  if err then return err end
  local now = now_us()
  local now_ms = math.floor(now / 1000)
  -- A message without a priority is served from now: its score formatted
  -- once, not by redis.call for each such message.
  local now_score = string.format('%d', now_ms)
  local due, next_due = due_members(LOCKED, now_ms, batch)
  local out = {0, -1, now}
  local ids, zargs = {}, {}
  local buckets, lag_sum = {}, 0 -- stats field -> lags counted there
  for i = 1, #due, 2 do
    ids[#ids + 1] = due[i]
  end
  if #ids > 0 then
    local prios = hmget(PRIO, ids)
    for i, id in ipairs(ids) do
      zargs[#zargs + 1] = score_of(prios[i], now_score)
      zargs[#zargs + 1] = id
      local lag = now - tonumber(due[2 * i]) * 1000
      out[#out + 1] = lag
      -- A hand-written fractional score must not make HINCRBY fail half-way.
      lag = math.max(0, math.floor(lag))
      local field = LAG_FIELDS[#LAG_FIELDS]
      for j, b in ipairs(LAG_BOUNDS_US) do
        if lag <= b then
          field = LAG_FIELDS[j]
          break
        end
      end
      buckets[field] = (buckets[field] or 0) + 1
      lag_sum = lag_sum + math.min(lag, LAG_SUM_CAP_US)
    end
  end
  local counters, deltas = {'unlocked', 'lag_sum_us'}, {#ids, lag_sum}
  for field, n in pairs(buckets) do
    counters[#counters + 1], deltas[#deltas + 1] = field, n
  end
  -- The keys read above (locked, prio) failed by themselves if wrong-typed,
  -- before any write; the counters (read by check_counters, which fails the
  -- same way), the clean flag, and ready (by move_members, whose ZADD comes
  -- first) are checked only when there is something to write.
  if #ids > 0 then
    local vals, dirty
    err, vals = check_counters(STATS, counters)
    if err then return err end
    dirty, err = flag_set(CLEAN)
    if err then return err end
    err = move_members(LOCKED, ids, READY, zargs)
    if err then return err end
    add_counters(STATS, counters, vals, deltas)
    if dirty then
      redis.call('DEL', CLEAN)
    end
    out[1] = #ids
  end
  fence_raise()
  record('unlock', 1, out[1])
  out[2] = next_due or head_score(LOCKED)
  return out
end

return each_shard(9, 4, unlock_shard)
