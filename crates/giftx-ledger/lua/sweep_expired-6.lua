-- sweep_expired: mark this bucket's live codes of a campaign past its deadline EXPIRED,
-- and past deadline + retention delete its codes and exchanges here (counters stay).
-- KEYS[1] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy, counters, sw flag)
-- KEYS[2] {bN}:e       outbox stream
-- KEYS[3] {bN}:c:<s>   code records (deleted past retention)
-- KEYS[4] {bN}:x:<s>   exchanges (deleted past retention)
-- KEYS[5] {bN}:p       PENDING exchanges (ZSET; the campaign's entries removed past retention)
-- KEYS[6] {bN}:f:<s>   exchanges given with a preference (deleted past retention)
-- ARGV[1] now (ms)
-- ARGV[2] campaign deadline known to the caller (ms)
-- ARGV[3] campaign version known to the caller
-- ARGV[4] voided batch ordinals known to the caller (',1,4,')
-- ARGV[5] event trim threshold (ms, XADD MINID)
-- ARGV[6] retention after the deadline (ms)
-- ARGV[7] the campaign's exchange id prefix (4 hex digits of its series)
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
local purge = now >= dl + tonumber(ARGV[6])
local stale = {}
if purge then
  for _, id in ipairs(rcall('ZRANGE', KEYS[5], 0, -1)) do
    if string.sub(id, 1, 4) == ARGV[7] then stale[#stale + 1] = id end
  end
end
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

local series = string.match(KEYS[1], ':m:(%d+)$')
if purge then
  local gone = rcall('DEL', KEYS[3], KEYS[4], KEYS[6])
  for i = 1, #stale, 1000 do
    rcall('ZREM', KEYS[5], unpack(stale, i, math.min(i + 999, #stale)))
  end
  if gone > 0 or #stale > 0 then
    rcall('XADD', KEYS[2], 'MINID', '~', ARGV[5], '*', 'k', 'campaign.purged', 't', ARGV[1],
      'series', series)
  end
end
if not count then return {0, 0} end
if sync then rcall('HSET', KEYS[1], 'dl', dl, 'ver', ver) end
rcall('HSET', KEYS[1], 'sw', 1)
if n > 0 then
  rcall('XADD', KEYS[2], 'MINID', '~', ARGV[5], '*', 'k', 'campaign.swept', 't', ARGV[1],
    'series', series, 'count', n)
end
return {0, n}
