-- deckard_inspect: where one id of a Deckard queue is, for operators.
-- KEYS[1] ready  KEYS[2] tmp  KEYS[3] lock_ack  KEYS[4] lock_nack
-- KEYS[5] lock_ack_score  KEYS[6] lock_nack_score
-- ARGV[1] id
-- Returns {pools, ...}: for each pool the id is in (one, unless something
-- broke Deckard's invariant), its name ("ready", "tmp", "lock_ack",
-- "lock_nack"), its score, and its saved score (nil = none; lock pools only).
local names = {'ready', 'tmp', 'lock_ack', 'lock_nack'}
local out = {}
for i = 1, 4 do
  local s = redis.call('ZSCORE', KEYS[i], ARGV[1])
  if s then
    local saved = false
    if i >= 3 then
      saved = redis.call('ZSCORE', KEYS[i + 2], ARGV[1])
    end
    out[#out + 1] = names[i]
    out[#out + 1] = s
    out[#out + 1] = saved
  end
end
return out
