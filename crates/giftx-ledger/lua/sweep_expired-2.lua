-- sweep_expired: mark this bucket's live codes of a campaign past its deadline EXPIRED.
-- Deletes nothing: past deadline + retention, purge_bucket deletes (after purge_campaign).
-- KEYS[1] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy, counters, sw flag)
-- KEYS[2] {bN}:e       outbox stream
-- ARGV[1] now (ms)
-- ARGV[2] campaign deadline known to the caller (ms)
-- ARGV[3] campaign version known to the caller
-- ARGV[4] voided batch ordinals known to the caller (',1,4,')
-- ARGV[5] event trim threshold (ms, XADD MINID)
-- Returns {0, expired} OK: codes this call marked (0 before the deadline and on a repeat)
local rcall = redis.call
local now = tonumber(ARGV[1])
local h = rcall('HGETALL', KEYS[1])
if #h == 0 then return {0, 0} end
local m = {}
for i = 1, #h, 2 do m[h[i]] = h[i + 1] end
local dl, ver = tonumber(ARGV[2]), tonumber(ARGV[3])
local sync = true
if m.ver and tonumber(m.ver) >= ver then dl = tonumber(m.dl) sync = false end
local count = not (now < dl or (m.sw and not sync))
local n = 0
if count then
  for k, v in pairs(m) do
    local ord = string.match(k, '^bl:(%d+)$')
    if ord and not m['v:' .. ord] and not string.find(ARGV[4], ',' .. ord .. ',', 1, true) then
      n = n + tonumber(v)
    end
  end
end

if not count then return {0, 0} end
local series = string.match(KEYS[1], ':m:(%d+)$')
if sync then rcall('HSET', KEYS[1], 'dl', dl, 'ver', ver) end
rcall('HSET', KEYS[1], 'sw', 1)
if n > 0 then
  rcall('XADD', KEYS[2], 'MINID', '~', ARGV[5], '*', 'k', 'campaign.swept', 't', ARGV[1],
    'series', series, 'count', n)
end
return {0, n}
