-- access_take: take calls from a rate limit (GCRA: a token bucket kept as one timestamp).
-- KEYS[1] {rl:<bucket>}  theoretical arrival time in microseconds (STRING, expires when the bucket is full)
-- ARGV[1] now (microseconds, the caller's clock)
-- ARGV[2] emission interval: microseconds per call at the sustained rate
-- ARGV[3] burst tolerance: microseconds of calls that may come at once (interval x (burst - 1))
-- ARGV[4] calls to take at once (a replica's local lease; all or none)
-- Returns {0} OK: allowed, counted; {1, wait} EXISTING: refused, nothing written; wait = microseconds until they fit
local rcall = redis.call
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local tat = tonumber(rcall('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow_at = tat + (n - 1) * interval - tolerance
if now < allow_at then return {1, allow_at - now} end
local new_tat = tat + n * interval
rcall('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1)
return {0}
