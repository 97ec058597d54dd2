-- access_put_key: store a new API key record (never its token: the record holds a keyed hash).
-- KEYS[1] {auth}:keys   API keys (HASH key id -> record JSON)
-- KEYS[2] {auth}:order  key ids by creation (ZSET, score = create time in ms)
-- ARGV[1] key id
-- ARGV[2] record JSON
-- ARGV[3] create time (ms)
-- Returns {0} OK: stored; {1} EXISTING: the id is taken, nothing written
local rcall = redis.call
if rcall('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1} end
rcall('HSET', KEYS[1], ARGV[1], ARGV[2])
rcall('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {0}
