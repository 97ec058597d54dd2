-- release_lease: give up a named singleton lease if the caller holds it.
-- KEYS[1] {g}:lease:<name>   lease (HASH holder, until)
-- ARGV[1] holder
-- Returns {0} OK (whether or not it was held)
local rcall = redis.call
if rcall('HGET', KEYS[1], 'holder') == ARGV[1] then rcall('DEL', KEYS[1]) end
return {0}
