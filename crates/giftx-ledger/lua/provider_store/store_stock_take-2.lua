-- store_stock_take: bind one available stock item to a key, or return the one already bound.
-- KEYS[1] {p:<id>}:a   assignments (HASH key -> sealed item, kept forever)
-- KEYS[2] {p:<id>}:q   available stock (LIST of sealed items, taken from the head)
-- ARGV[1] key
-- Returns {0, item} OK: item taken from the stock and bound to ARGV[1];
-- {1, item} EXISTING: the item bound to ARGV[1] earlier, nothing written;
-- {0} OK: no item bound to ARGV[1] and none left, nothing written
local rcall = redis.call
local cur = rcall('HGET', KEYS[1], ARGV[1])
if cur then return {1, cur} end
if rcall('LLEN', KEYS[2]) == 0 then return {0} end

local item = rcall('LPOP', KEYS[2])
rcall('HSET', KEYS[1], ARGV[1], item)
return {0, item}
