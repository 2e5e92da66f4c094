-- seed (benchmarks and load tests only): write n locked messages into one
-- shard, server-side, so that a million-message setup takes seconds rather
-- than a million round trips. Messages get bodies, metadata and a priority
-- like enqueued ones, and are counted as enqueued.
-- KEYS[1] locked  KEYS[2] body  KEYS[3] meta  KEYS[4] prio  KEYS[5] stats
-- ARGV[1] id prefix  ARGV[2] first index  ARGV[3] count (at most 100000)
-- ARGV[4] unlock time of index 0, ms  ARGV[5] step between unlock times, µs
-- ARGV[6] payload
-- Returns the count written.
local first, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local t0, step = tonumber(ARGV[4]), tonumber(ARGV[5])
local z, b, m, p = {}, {}, {}, {}
local function flush()
  if #z > 0 then
    redis.call('ZADD', KEYS[1], unpack(z))
    redis.call('HSET', KEYS[2], unpack(b))
    redis.call('HSET', KEYS[3], unpack(m))
    redis.call('HSET', KEYS[4], unpack(p))
    z, b, m, p = {}, {}, {}, {}
  end
end
for i = 0, n - 1 do
  local idx = first + i
  local id = ARGV[1] .. idx
  z[#z + 1] = t0 + math.floor(idx * step / 1000)
  z[#z + 1] = id
  b[#b + 1] = id
  b[#b + 1] = ARGV[6]
  m[#m + 1] = id
  m[#m + 1] = string.format('%d|0', t0)
  p[#p + 1] = id
  p[#p + 1] = string.format('%d', t0)
  -- unpack is bounded by Lua's C stack (about 8000 values)
  if #z >= 2000 then flush() end
end
flush()
redis.call('HINCRBY', KEYS[5], 'enqueued', n)
return n
