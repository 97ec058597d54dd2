-- store_get: read the provider value under a key.
-- KEYS[1] {p:<id>}:v   values (HASH key -> value, opaque sealed bytes)
-- ARGV[1] key
-- Returns {0, value} OK: the value under ARGV[1]; {0} OK: no such key
local rcall = redis.call
local cur = rcall('HGET', KEYS[1], ARGV[1])
if cur then return {0, cur} end
return {0}
