-- store_update: replace the provider value under an existing key (last writer wins).
-- KEYS[1] {p:<id>}:v   values (HASH key -> value, opaque sealed bytes)
-- ARGV[1] key
-- ARGV[2] new value
-- Returns {0, 1} OK: replaced; {0, 0} OK: no such key, nothing written
local rcall = redis.call
if rcall('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {0, 0} end

rcall('HSET', KEYS[1], ARGV[1], ARGV[2])
return {0, 1}
