-- probe: the earliest deadline of each timed set of one shard, and its
-- excess over max size. The keeper's safety sweep probes read-only; the
-- first probe after the keeper takes a shard also claims it: it raises the
-- fence to the new token at once, so a previous owner that is paused or cut
-- off is refused from that moment, not only from the new owner's first
-- housekeeping pass.
-- KEYS[1..4], ARGV[1..3]: the fence head (see lib.lua; the fence is read
-- only for a claim)
-- KEYS[5] locked  KEYS[6] inflight  KEYS[7] ttl  KEYS[8] ready
-- ARGV[4] max_size (0 = unbounded: the size is not read)  ARGV[5] claim: "1"
-- to claim (fence) the shard
-- Returns {locked_head_ms, inflight_head_ms, ttl_head_ms, excess}; -1 = none.
-- Errors: KEEPER_DELETED, KEEPER_FENCED <fence> <owner> (claims only),
-- KEEPER_WRONGTYPE.
-- Every read and check comes before the first write.
local LOCKED, INFLIGHT, TTL, READY = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local claim = ARGV[5] == '1'
local err = probe_check(claim)
if err then return err end
-- A probe that only reads needs no type checks: a read of a wrong-typed
-- key fails by itself (WRONGTYPE), and nothing was written. Sparing them
-- halves what the safety sweep costs Redis (4 commands of 9).
if claim then
  err = check_types({LOCKED, 'zset', INFLIGHT, 'zset', TTL, 'zset', READY, 'zset'})
  if err then return err end
end
local excess = 0
local maxsize = tonumber(ARGV[4])
if maxsize > 0 then
  excess = redis.call('ZCARD', READY) + redis.call('ZCARD', INFLIGHT) + redis.call('ZCARD', LOCKED) - maxsize
end
local out = {head_score(LOCKED), head_score(INFLIGHT), head_score(TTL), excess}

if claim then
  claim_fence()
end
return out
