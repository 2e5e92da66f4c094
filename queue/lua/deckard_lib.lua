-- deckard_lib.lua: helpers of the Deckard layout's scripts, which
-- scripts.go prepends after lib.lua (newDeckardScript). Deckard's scores are
-- epoch milliseconds from its pods' clocks, never Redis TIME, and may be
-- any double: negative ones included (a pod whose clock reads before the
-- epoch, a hand edit), which Deckard's own housekeeper never returns.

-- The latest deadline reported, in ms (about the year 2109, maxWakeMs in
-- Go): a score past it (or +inf) is no deadline anyone waits for, and the
-- keeper's timer arithmetic stays in range; the safety sweep reads it
-- again long before.
local MAX_DUE_MS = 4398046511104

-- The lowest ready score read as an add time (epoch ms, September 2001);
-- lower ones are priorities a client chose (see DeckardAddTimeMin).
local ADD_TIME_MIN = 1000000000000

-- The earliest deadline of a Deckard pool as keeper schedules it: -1 when
-- the pool is empty; 0 (due) for a negative score, so that it is never
-- stranded.
local function due_head(zkey)
  local h = redis.call('ZRANGE', zkey, 0, 0, 'WITHSCORES')[2]
  if h == nil then
    return -1
  end
  local s = tonumber(h)
  if s < 0 then
    return 0
  end
  return math.min(math.floor(s), MAX_DUE_MS)
end
