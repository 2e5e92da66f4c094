-- drop (queue delete): delete every message key of one shard and leave a
-- tombstone that every script checks (check_live in lib.lua), so that
-- neither a housekeeping pass still running nor a client holding the
-- queue's config can write here again. The fence and its owner stay: a
-- queue created again under the same name refuses the old tokens.
-- KEYS[1] deleted: the tombstone; then the shard's message keys (Go: messages)
-- KEYS[2] ready  KEYS[3] inflight  KEYS[4] locked  KEYS[5] dead  KEYS[6] ttl
-- KEYS[7] body  KEYS[8] meta  KEYS[9] prio  KEYS[10] dlv  KEYS[11] tok
-- KEYS[12] clean  KEYS[13] stats  KEYS[14] history  KEYS[15] trimwake
-- Returns the number of keys deleted.
redis.call('SET', KEYS[1], '1')
return redis.call('UNLINK', unpack(KEYS, 2))
