-- extend_campaign: move a campaign's deadline in its global record and mark a push pending.
-- KEYS[1] {g}:c:<id>   campaign record (HASH)
-- KEYS[2] {g}:e        outbox stream
-- ARGV[1] new deadline (ms)
-- ARGV[2] force ('1' allows an earlier deadline)
-- ARGV[3] now (ms)
-- ARGV[4] event trim threshold (ms, XADD MINID)
-- Returns {0, version} OK (unchanged version when the deadline is the same);
-- {9} CAMPAIGN_NOT_FOUND; {12} DEADLINE_EARLIER
local rcall = redis.call
local dl, force, now = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local cur = rcall('HMGET', KEYS[1], 'dl', 'ver')
if not cur[1] then return {9} end
local old, ver = tonumber(cur[1]), tonumber(cur[2])
if dl == old then return {0, ver} end
if dl < old and force ~= '1' then return {12} end

ver = ver + 1
rcall('HSET', KEYS[1], 'dl', ARGV[1], 'ver', ver, 'ut', now, 'push', ver)
rcall('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', 'k', 'campaign.extended', 't', now,
  'campaign', rcall('HGET', KEYS[1], 'id'), 'expire_time', ARGV[1], 'version', ver)
return {0, ver}
