-- store_put_if_absent: store a provider value under a key unless the key is taken.
-- KEYS[1] {p:<id>}:v   values (HASH key -> value, opaque sealed bytes)
-- KEYS[2] {p:<id>}:k   key index for list (ZSET key, score 0, ordered by bytes)
-- ARGV[1] key
-- ARGV[2] value
-- Returns {0} OK: ARGV[2] stored under ARGV[1]; {1, value} EXISTING: the key was taken,
-- nothing written, value is the one stored earlier
local rcall = redis.call
local cur = rcall('HGET', KEYS[1], ARGV[1])
if cur then return {1, cur} end

rcall('HSET', KEYS[1], ARGV[1], ARGV[2])
rcall('ZADD', KEYS[2], 0, ARGV[1])
return {0}
