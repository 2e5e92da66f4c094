-- back: move one id from tmp to ready with a score, if it is still in tmp
-- (Deckard's MakeAvailable: an ack or nack without a lock).
-- KEYS[1] ready  KEYS[2] tmp
-- ARGV[1] score  ARGV[2] id
-- Returns 1 when moved, 0 when the id was no longer in tmp.
if redis.call('ZREM', KEYS[2], ARGV[2]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
return 1
