-- pull: move the n lowest-scored ids of ready (within [min, max] when a range
-- is given) to tmp, each with the ack deadline as its score (Deckard's
-- PullMessages).
-- KEYS[1] ready  KEYS[2] tmp
-- ARGV[1] n  ARGV[2] deadline_ms  ARGV[3] min ("-inf" = none)  ARGV[4] max ("+inf" = none)
-- Returns the ids pulled, lowest score first.
local ids
if ARGV[3] == '-inf' and ARGV[4] == '+inf' then
  ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], ARGV[4], 'LIMIT', 0, tonumber(ARGV[1]))
end
if #ids == 0 then
  return ids
end
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[2], ARGV[2], id)
end
redis.call('ZREM', KEYS[1], unpack(ids))
return ids
