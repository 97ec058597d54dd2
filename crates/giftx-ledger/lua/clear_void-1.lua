-- clear_void: forget a batch's pending void push once every bucket has it.
-- KEYS[1] {g}:b:<id>:<batch>    batch record (HASH)
-- Returns {0} OK
local rcall = redis.call
rcall('HDEL', KEYS[1], 'vp')
return {0}
