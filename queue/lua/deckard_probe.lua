-- deckard_probe: the earliest deadlines of a Deckard queue, and its pool
-- sizes when asked. The keeper's safety sweep and the poller (when keyspace
-- notifications are off; it asks for the sizes, to see change) probe
-- read-only; the first probe after the keeper takes a queue also claims it:
-- it raises the fence to the new token at once, so a previous owner that
-- is paused or cut off is refused from that moment on. A read-only probe
-- costs Redis three ZRANGEs (a key of another type fails it with Redis's
-- WRONGTYPE before anything is written).
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua; read only for a
-- claim)
-- KEYS[5] lock_ack  KEYS[6] lock_nack  KEYS[7] tmp  KEYS[8] ready
-- ARGV[4] claim: "1" to claim (fence) the queue
-- ARGV[5] sizes: "1" to return the pool sizes too
-- Returns {locked_head_ms, tmp_head_ms} or, with sizes, {locked_head_ms,
-- tmp_head_ms, ready, tmp, lock_ack, lock_nack}; a head is -1 when its
-- pools are empty, 0 when it is negative (due).
-- Errors: KEEPER_DELETED, KEEPER_FENCED <fence> <owner> (claims only),
-- KEEPER_WRONGTYPE (claims only), WRONGTYPE.
-- Every read and check comes before the first write.
local ACK, NACK, TMP, READY = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local claim = ARGV[4] == '1'
if claim then
  local err = probe_check(true)
  if err then return err end
  err = check_types({ACK, 'zset', NACK, 'zset', TMP, 'zset', READY, 'zset'})
  if err then return err end
end
local locked = due_head(ACK)
local hn = due_head(NACK)
if locked < 0 or (hn >= 0 and hn < locked) then
  locked = hn
end
local out = {locked, due_head(TMP)}
if ARGV[5] == '1' then
  out[3] = redis.call('ZCARD', READY)
  out[4] = redis.call('ZCARD', TMP)
  out[5] = redis.call('ZCARD', ACK)
  out[6] = redis.call('ZCARD', NACK)
end

if claim then
  claim_fence()
end
return out
