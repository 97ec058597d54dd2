-- acquire_lease: take or renew a named singleton lease.
-- KEYS[1] {g}:lease:<name>   lease (HASH holder, until)
-- ARGV[1] holder
-- ARGV[2] until (ms)
-- ARGV[3] now (ms)
-- Returns {0, 1} OK (held by ARGV[1] until ARGV[2]); {0, 0} OK (another holder's lease runs)
local rcall = redis.call
local cur = rcall('HMGET', KEYS[1], 'holder', 'until')
if cur[1] and cur[1] ~= ARGV[1] and tonumber(cur[2]) > tonumber(ARGV[3]) then
  return {0, 0}
end

rcall('HSET', KEYS[1], 'holder', ARGV[1], 'until', ARGV[2])
return {0, 1}
