-- store_stock_get: read the stock item bound to a key, without taking one.
-- KEYS[1] {p:<id>}:a   assignments (HASH key -> sealed item, kept forever)
-- ARGV[1] key
-- Returns {0, item} OK: the item bound to ARGV[1]; {0} OK: none bound
local rcall = redis.call
local cur = rcall('HGET', KEYS[1], ARGV[1])
if cur then return {0, cur} end
return {0}
