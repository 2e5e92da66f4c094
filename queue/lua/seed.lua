-- seed (benchmarks and load tests only): write n locked messages into one
-- shard, server-side, so that a million-message setup takes seconds rather
-- than a million round trips. Messages get bodies, metadata and a priority
-- like enqueued ones, and are counted as enqueued.
-- KEYS[1] deleted: the tombstone of a deleted queue (see check_live in lib.lua)
-- KEYS[2] locked  KEYS[3] body  KEYS[4] meta  KEYS[5] prio  KEYS[6] stats
-- ARGV[1] prefix: of the ids  ARGV[2] first: index  ARGV[3] count (at most
-- MAX_SEED)  ARGV[4] first_due_ms: unlock time of index 0  ARGV[5] step_us:
-- between unlock times  ARGV[6] payload
-- Returns the count written.
-- Errors: KEEPER_DELETED, KEEPER_BADARG, KEEPER_WRONGTYPE; every check comes
-- before the first write.
local err = check_live(KEYS[1])
if err then return err end
err = check_types({KEYS[2], 'zset', KEYS[3], 'hash', KEYS[4], 'hash', KEYS[5], 'hash', KEYS[6], 'hash'})
if err then return err end
err = check_counters(KEYS[6], {'enqueued'})
if err then return err end
local first, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local t0, step = tonumber(ARGV[4]), tonumber(ARGV[5])
if not (first and n and t0 and step) or n < 0 or n > MAX_SEED then
  return redis.error_reply('KEEPER_BADARG seed takes a count in 0..' .. MAX_SEED .. ' and numeric times, got ' .. ARGV[3])
end
local z, b, m, p = {}, {}, {}, {}
local meta, prio = string.format('%d|0', t0), string.format('%d', t0)
-- Written in chunks as it goes: nothing below can fail once the checks
-- above passed, and the tables stay small.
local function flush()
  bulk('ZADD', KEYS[2], z)
  bulk('HSET', KEYS[3], b)
  bulk('HSET', KEYS[4], m)
  bulk('HSET', KEYS[5], p)
  z, b, m, p = {}, {}, {}, {}
end
for i = 0, n - 1 do
  local idx = first + i
  local id = ARGV[1] .. idx
  z[#z + 1] = t0 + math.floor(idx * step / 1000)
  z[#z + 1] = id
  b[#b + 1] = id
  b[#b + 1] = ARGV[6]
  m[#m + 1] = id
  m[#m + 1] = meta
  p[#p + 1] = id
  p[#p + 1] = prio
  if #z >= CHUNK then flush() end
end
flush()
redis.call('HINCRBY', KEYS[6], 'enqueued', n)
return n
