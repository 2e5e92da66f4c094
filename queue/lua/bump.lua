-- bump (queue create and update): set a shard's config generation before
-- the config is published (see check_gen in lib.lua); a generation never
-- goes down.
-- KEYS[1] deleted: the tombstone  KEYS[2] gen: the shard's config generation
-- ARGV[1] generation  ARGV[2] added: "1" for a partition the new config adds (a
-- tombstone left by a queue deleted earlier under the name is removed),
-- "0" for one the queue already has (its tombstone means the queue is being
-- deleted: refused)
-- Returns the shard's generation after: above ARGV[1] when the shard was
-- set higher before (the counter that mints generations was reset).
-- Errors: KEEPER_DELETED.
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[1])
else
  local err = check_live(KEYS[1])
  if err then return err end
end
local g = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if tonumber(ARGV[1]) > g then
  redis.call('SET', KEYS[2], ARGV[1])
  return tonumber(ARGV[1])
end
return g
