-- add: put ids in the ready pool, skipping every id already in any of the
-- four pools, so a re-add never changes a score (Deckard's Insert).
-- KEYS[1] ready  KEYS[2] lock_nack  KEYS[3] lock_ack  KEYS[4] tmp
-- ARGV[1..2n] score_1, id_1, ..., score_n, id_n
-- Returns the ids added.
local added, zargs = {}, {}
for i = 1, #ARGV, 2 do
  local present = false
  for _, pool in ipairs(KEYS) do
    if redis.call('ZSCORE', pool, ARGV[i + 1]) then
      present = true
      break
    end
  end
  if not present then
    zargs[#zargs + 1] = ARGV[i]
    zargs[#zargs + 1] = ARGV[i + 1]
    added[#added + 1] = ARGV[i + 1]
  end
end
if #zargs > 0 then
  redis.call('ZADD', KEYS[1], unpack(zargs))
end
return added
