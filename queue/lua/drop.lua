-- drop (queue delete): delete every message key of one shard and leave a
-- tombstone that every script checks (check_live in lib.lua), so that
-- neither a housekeeping pass still running nor a client holding the
-- queue's config can write here again. The fence and its owner stay: a
-- queue created again under the same name refuses the old tokens.
-- KEYS[1] tombstone  KEYS[2..n] the shard's message keys
-- Returns the number of keys deleted.
redis.call('SET', KEYS[1], '1')
return redis.call('UNLINK', unpack(KEYS, 2))
