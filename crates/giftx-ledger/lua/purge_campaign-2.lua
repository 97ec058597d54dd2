-- purge_campaign: mark a campaign purged once deadline + retention has passed (by ARGV[1]).
-- The mark is the only way to the purge: purge_bucket deletes a bucket's codes and
-- exchanges only for a marked campaign, and extend_campaign refuses a marked one (and one
-- whose retention has passed), so no deadline change can race a purge.
-- KEYS[1] {g}:c:<id>   campaign record (HASH; 'pg' = purge time, 'pv' = version purged)
-- KEYS[2] {g}:e        outbox stream
-- ARGV[1] now (ms)
-- ARGV[2] retention after the deadline (ms)
-- ARGV[3] event trim threshold (ms, XADD MINID)
-- Returns {0, version, purge time} OK: purge time 0 when not due yet (then nothing
-- changed), else the time of the mark (an earlier one when already marked);
-- {9} CAMPAIGN_NOT_FOUND
local rcall = redis.call
local cur = rcall('HMGET', KEYS[1], 'dl', 'ver', 'pg', 'id')
if not cur[1] then return {9} end
local ver = tonumber(cur[2])
if cur[3] then return {0, ver, tonumber(cur[3])} end
if tonumber(ARGV[1]) < tonumber(cur[1]) + tonumber(ARGV[2]) then return {0, ver, 0} end

rcall('HSET', KEYS[1], 'pg', ARGV[1], 'pv', ver)
rcall('XADD', KEYS[2], 'MINID', '~', ARGV[3], '*', 'k', 'campaign.purge_marked', 't', ARGV[1],
  'campaign', cur[4], 'version', ver)
return {0, ver, tonumber(ARGV[1])}
