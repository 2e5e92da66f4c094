-- deckard_unlock (housekeeping): move the ids of a Deckard queue's two lock
-- pools whose unlock time has come back to ready, oldest due first over both
-- pools (a backlog drains in order, nothing starves), negative unlock times
-- included. Each id gets its saved score when the client gave one, else the
-- pass's now (Redis TIME, ms) from lock_ack and 0 from lock_nack; its saved
-- score is removed with it.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua)
-- KEYS[5] lock_ack  KEYS[6] lock_nack  KEYS[7] lock_ack_score
-- KEYS[8] lock_nack_score  KEYS[9] ready  KEYS[10] stats
-- ARGV[4] batch
-- Returns {moved, next_due_ms (-1 = none), now_us, lag_us_1, ..., lag_us_k}
-- where lag = moved time - unlock time, for the ids whose unlock time is not
-- negative (a negative one is no deadline anyone set with a working clock).
-- Errors: KEEPER_BADARG, KEEPER_DELETED, KEEPER_FENCED <fence> <owner>,
-- KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local ACK, NACK, ACK_SCORE, NACK_SCORE, READY, STATS = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local batch, err = batch_arg()
if err then return err end
err = fence_check('unlock')
if err then return err end
err = check_types({ACK, 'zset', NACK, 'zset', ACK_SCORE, 'zset', NACK_SCORE, 'zset', READY, 'zset', STATS, 'hash'})
if err then return err end
err = check_counters(STATS, {'unlocked_ack', 'unlocked_nack'})
if err then return err end
local now = now_us()
local now_ms = math.floor(now / 1000)
local acks = redis.call('ZRANGEBYSCORE', ACK, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, batch)
-- When lock_ack alone fills the batch, no nack due after its last one can
-- be taken: read nacks only up to it.
local nack_max = now_ms
if #acks == 2 * batch then
  nack_max = acks[#acks]
end
local nacks = redis.call('ZRANGEBYSCORE', NACK, '-inf', nack_max, 'WITHSCORES', 'LIMIT', 0, batch)
local out = {0, -1, now}
-- Merge the two ascending lists, oldest first, up to batch.
local ack_ids, nack_ids = {}, {}
local a, n = 1, 1
while #ack_ids + #nack_ids < batch do
  local sa, sn = acks[a + 1] and tonumber(acks[a + 1]), nacks[n + 1] and tonumber(nacks[n + 1])
  if not sa and not sn then
    break
  end
  local s
  if sn == nil or (sa ~= nil and sa <= sn) then
    ack_ids[#ack_ids + 1], s, a = acks[a], sa, a + 2
  else
    nack_ids[#nack_ids + 1], s, n = nacks[n], sn, n + 2
  end
  if s >= 0 then
    out[#out + 1] = now - math.floor(s * 1000)
  end
end
-- Scores to restore: the saved one, else the pool's default; the ids that
-- had a saved score, whose entry goes with them.
local zargs = {}
local function restore(ids, saved_key, default)
  local had = {}
  if #ids == 0 then
    return had
  end
  local saved = chunked_get('ZMSCORE', saved_key, ids)
  for i, id in ipairs(ids) do
    zargs[#zargs + 1] = saved[i] or default
    zargs[#zargs + 1] = id
    if saved[i] then
      had[#had + 1] = id
    end
  end
  return had
end
local ack_saved = restore(ack_ids, ACK_SCORE, now_ms)
local nack_saved = restore(nack_ids, NACK_SCORE, 0)

-- The ids taken from a pool are its lowest ranks (ZRANGEBYSCORE from -inf
-- returns them in rank order, and the merge takes a prefix of each), so
-- they go by rank: no lookup per id.
fence_raise()
if #zargs > 0 then
  bulk('ZADD', READY, zargs)
end
if #ack_ids > 0 then
  redis.call('ZREMRANGEBYRANK', ACK, 0, #ack_ids - 1)
  bulk('ZREM', ACK_SCORE, ack_saved)
  redis.call('HINCRBY', STATS, 'unlocked_ack', #ack_ids)
end
if #nack_ids > 0 then
  redis.call('ZREMRANGEBYRANK', NACK, 0, #nack_ids - 1)
  bulk('ZREM', NACK_SCORE, nack_saved)
  redis.call('HINCRBY', STATS, 'unlocked_nack', #nack_ids)
end
out[1] = #ack_ids + #nack_ids
record('unlock', 1, out[1])
local ha, hn = due_head(ACK), due_head(NACK)
if ha < 0 or (hn >= 0 and hn < ha) then
  ha = hn
end
out[2] = ha
return out
