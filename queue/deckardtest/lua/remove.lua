-- remove: delete ids from all six keys of a queue (Deckard's Remove).
-- KEYS[1] ready  KEYS[2] tmp  KEYS[3] lock_ack  KEYS[4] lock_nack
-- KEYS[5] lock_ack_score  KEYS[6] lock_nack_score
-- ARGV[1..n] ids
-- Returns how many entries were deleted over the six keys.
local total = 0
for _, key in ipairs(KEYS) do
  total = total + redis.call('ZREM', key, unpack(ARGV))
end
return total
