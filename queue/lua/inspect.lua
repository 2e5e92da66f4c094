-- inspect (read-only): where one message is and what it carries.
-- KEYS[1] deleted: the tombstone of a deleted queue (see check_live in lib.lua)
-- KEYS[2] ready  KEYS[3] inflight  KEYS[4] locked  KEYS[5] dead  KEYS[6] body
-- KEYS[7] meta  KEYS[8] prio  KEYS[9] dlv
-- ARGV[1] id
-- Returns {state, score, meta, priority, deliveries, payload_bytes} with state
-- "ready", "inflight", "locked", "dead", or "" when the message is unknown.
local err = check_live(KEYS[1])
if err then return err end
local id = ARGV[1]
local meta = redis.call('HGET', KEYS[7], id)
local sets = {{'ready', KEYS[2]}, {'inflight', KEYS[3]}, {'locked', KEYS[4]}, {'dead', KEYS[5]}}
local state, score = '', ''
for _, s in ipairs(sets) do
  local sc = redis.call('ZSCORE', s[2], id)
  if sc then
    state, score = s[1], sc
    break
  end
end
if state == '' and not meta then
  return {'', '', '', '', '', 0}
end
return {state, score, meta or '', redis.call('HGET', KEYS[8], id) or '',
  redis.call('HGET', KEYS[9], id) or '0', redis.call('HSTRLEN', KEYS[6], id)}
