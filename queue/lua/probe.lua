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
-- One call probes any number of shards of one Redis node: the 8 keys and 5
-- arguments above repeat in that order once per shard (see each_shard), so
-- that taking over thousands of shards costs one script run per few hundred
-- of them (the run itself, not the reads, is most of what a one-shard probe
-- costs).
-- Returns one entry per shard, in order: {locked_head_ms, inflight_head_ms,
-- ttl_head_ms, excess}, -1 = none; or that shard's error: KEEPER_DELETED,
-- KEEPER_FENCED <fence> <owner> (claims only), KEEPER_WRONGTYPE. A shard's
-- error does not stop the others.
-- Every read and check of a shard comes before its first write.

-- The reads of one shard, run under pcall: a read of a wrong-typed key
-- fails by itself, before anything of that shard was written.
local function reads(locked, inflight, ttl, ready, maxsize)
  local excess = 0
  if maxsize > 0 then
    excess = redis.call('ZCARD', ready) + redis.call('ZCARD', inflight) + redis.call('ZCARD', locked) - maxsize
  end
  return {head_score(locked), head_score(inflight), head_score(ttl), excess}
end

local function probe_shard(k, a)
  use_head(k, a)
  local locked, inflight, ttl, ready = KEYS[k + 5], KEYS[k + 6], KEYS[k + 7], KEYS[k + 8]
  local maxsize = tonumber(ARGV[a + 4]) or 0
  local claim = ARGV[a + 5] == '1'
  local err = probe_check(claim)
  if err then return err end
  local ok, out = pcall(reads, locked, inflight, ttl, ready, maxsize)
  if not ok then
    return read_failed(out, {locked, 'zset', inflight, 'zset', ttl, 'zset', ready, 'zset'})
  end
  if claim then
    -- A claim also refuses a wrong-typed ready set that it did not read.
    if maxsize <= 0 then
      err = check_types({ready, 'zset'})
      if err then return err end
    end
    claim_fence()
  end
  return out
end

return each_shard(8, 5, probe_shard)
