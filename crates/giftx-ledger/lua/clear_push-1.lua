-- clear_push: forget a campaign's pending deadline push once every bucket has it.
-- KEYS[1] {g}:c:<id>   campaign record (HASH)
-- ARGV[1] version that was pushed
-- Returns {0} OK (also when a newer push is pending, which then stays)
local rcall = redis.call
local p = rcall('HGET', KEYS[1], 'push')
if p and tonumber(p) <= tonumber(ARGV[1]) then rcall('HDEL', KEYS[1], 'push') end
return {0}
