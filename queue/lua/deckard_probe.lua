-- deckard_probe: the earliest deadlines and the pool sizes of a Deckard
-- queue. The keeper's safety sweep and the poller (when keyspace
-- notifications are off) probe read-only; the first probe after the keeper
-- takes a queue also claims it: it raises the fence to the new token at
-- once, so a previous owner that is paused or cut off is refused from that
-- moment on.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua; the fence is read
-- only for a claim)
-- KEYS[5] lock_ack  KEYS[6] lock_nack  KEYS[7] tmp  KEYS[8] ready
-- ARGV[4] claim: "1" to claim (fence) the queue
-- Returns {locked_head_ms, tmp_head_ms, ready, tmp, lock_ack, lock_nack};
-- a head is -1 when its pools are empty, 0 when it is negative (due).
-- Errors: KEEPER_DELETED, KEEPER_FENCED <fence> <owner> (claims only),
-- KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local ACK, NACK, TMP, READY = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local claim = ARGV[4] == '1'
local err = probe_check(claim)
if err then return err end
err = check_types({ACK, 'zset', NACK, 'zset', TMP, 'zset', READY, 'zset'})
if err then return err end
local now_ms = math.floor(now_us() / 1000)
local locked = due_head(ACK, now_ms)
local hn = due_head(NACK, now_ms)
if locked < 0 or (hn >= 0 and hn < locked) then
  locked = hn
end
local out = {locked, due_head(TMP, now_ms), redis.call('ZCARD', READY), redis.call('ZCARD', TMP),
  redis.call('ZCARD', ACK), redis.call('ZCARD', NACK)}

if claim then
  claim_fence()
end
return out
