-- inspect (read-only): where one message is and what it carries.
-- KEYS[1] ready  KEYS[2] inflight  KEYS[3] locked  KEYS[4] dead  KEYS[5] body
-- KEYS[6] meta  KEYS[7] prio  KEYS[8] dlv
-- ARGV[1] id
-- Returns {state, score, meta, priority, deliveries, payload_bytes} with state
-- "ready", "inflight", "locked", "dead", or "" when the message is unknown.
local id = ARGV[1]
local meta = redis.call('HGET', KEYS[6], id)
local sets = {{'ready', KEYS[1]}, {'inflight', KEYS[2]}, {'locked', KEYS[3]}, {'dead', KEYS[4]}}
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
return {state, score, meta or '', redis.call('HGET', KEYS[7], id) or '',
  redis.call('HGET', KEYS[8], id) or '0', redis.call('HSTRLEN', KEYS[5], id)}
