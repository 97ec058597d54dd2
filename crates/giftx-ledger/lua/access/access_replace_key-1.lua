-- access_replace_key: replace an API key record if it is still what the caller read (revocation).
-- KEYS[1] {auth}:keys   API keys (HASH key id -> record JSON)
-- ARGV[1] key id
-- ARGV[2] the record JSON the caller read
-- ARGV[3] the new record JSON
-- Returns {0} OK: replaced; {1} EXISTING: the record changed since it was read (or is gone), nothing written
local rcall = redis.call
if rcall('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return {1} end
rcall('HSET', KEYS[1], ARGV[1], ARGV[3])
return {0}
