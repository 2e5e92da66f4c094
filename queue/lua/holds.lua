-- holds: whether a message with this id is in the shard, which is the id's
-- home under one of its queue's earlier partition counts. An enqueue asks
-- every earlier home before it adds the id to its current home; since no
-- client with the current config writes to an old home, and older clients
-- are refused, nothing can add the id there in between.
-- KEYS[1] deleted: the tombstone  KEYS[2] gen: the shard's config generation
-- KEYS[3] meta  KEYS[4] stats
-- ARGV[1] id  ARGV[2] generation: the client's config's
-- Returns the enqueue time (ms) of the message found, counting the enqueue
-- as deduplicated there; -1 when the id is not in the shard.
-- Errors: KEEPER_DELETED, KEEPER_STALECONFIG <generation>, KEEPER_WRONGTYPE.
local err = check_live(KEYS[1])
if err then return err end
err = check_gen(KEYS[2], ARGV[2])
if err then return err end
err = check_types({KEYS[3], 'hash', KEYS[4], 'hash'})
if err then return err end
err = check_counters(KEYS[4], {'deduplicated'})
if err then return err end
local m = redis.call('HGET', KEYS[3], ARGV[1])
if not m then
  return -1
end
redis.call('HINCRBY', KEYS[4], 'deduplicated', 1)
local enq = parse_meta(m)
return enq
