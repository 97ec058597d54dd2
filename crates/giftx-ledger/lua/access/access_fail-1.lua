-- access_fail: count one failed verification of an end user in the current window.
-- KEYS[1] {eu:<digest>}  failures in the window (STRING counter, expires with the window)
-- ARGV[1] window (ms)
-- Returns {0, n} OK: n = failures in the window, this one included
local rcall = redis.call
local n = rcall('INCR', KEYS[1])
if n == 1 then rcall('PEXPIRE', KEYS[1], ARGV[1]) end
return {0, n}
