-- store_stock_status: count a provider's available and handed-out stock items.
-- KEYS[1] {p:<id>}:q   available stock (LIST of sealed items)
-- KEYS[2] {p:<id>}:a   assignments (HASH key -> sealed item)
-- Returns {0, available, handed_out} OK: LLEN of KEYS[1], HLEN of KEYS[2]
local rcall = redis.call
return {0, rcall('LLEN', KEYS[1]), rcall('HLEN', KEYS[2])}
