-- lock: move one id from tmp to a lock pool with its unlock time as score,
-- and save the score to restore at unlock unless the client gave none
-- (Deckard's LockMessage: an ack or nack with lock_ms).
-- KEYS[1] tmp  KEYS[2] lock  KEYS[3] lock_score
-- ARGV[1] unlock_ms  ARGV[2] id  ARGV[3] score ("-1" = none given)
-- Returns 1 when locked, 0 when the id was no longer in tmp.
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
if ARGV[3] ~= '-1' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
end
return 1
