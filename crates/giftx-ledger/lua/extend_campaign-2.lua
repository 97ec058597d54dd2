-- extend_campaign: move a campaign's deadline in its global record and mark a push pending.
-- KEYS[1] {g}:c:<id>   campaign record (HASH)
-- KEYS[2] {g}:e        outbox stream
-- ARGV[1] new deadline (ms)
-- ARGV[2] force ('1' allows an earlier deadline)
-- ARGV[3] now (ms)
-- ARGV[4] event trim threshold (ms, XADD MINID)
-- ARGV[5] retention after the deadline (ms)
-- Returns {0, version} OK (unchanged version when the deadline is the same);
-- {9} CAMPAIGN_NOT_FOUND; {12} DEADLINE_EARLIER; {30} DEADLINE_IN_PAST (earlier than the
-- current deadline and before ARGV[3], force or not); {31} CAMPAIGN_PURGED (marked purged
-- by purge_campaign, or its deadline + retention has passed by ARGV[3]: no change then,
-- so a deadline move never races the purge)
-- A deadline move never deletes anything; with these bounds a forced earlier deadline is
-- at or after now, so it can be moved back later and nothing is lost meanwhile.
local rcall = redis.call
local dl, force, now = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local cur = rcall('HMGET', KEYS[1], 'dl', 'ver', 'pg')
if not cur[1] then return {9} end
local old, ver = tonumber(cur[1]), tonumber(cur[2])
if cur[3] or tonumber(now) >= old + tonumber(ARGV[5]) then return {31} end
if dl == old then return {0, ver} end
if dl < old and dl < tonumber(now) then return {30} end
if dl < old and force ~= '1' then return {12} end

ver = ver + 1
rcall('HSET', KEYS[1], 'dl', ARGV[1], 'ver', ver, 'ut', now, 'push', ver)
rcall('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', 'k', 'campaign.extended', 't', now,
  'campaign', rcall('HGET', KEYS[1], 'id'), 'expire_time', ARGV[1], 'version', ver)
return {0, ver}
