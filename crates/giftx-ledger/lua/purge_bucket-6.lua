-- purge_bucket: delete this bucket's codes and exchanges of a campaign marked purged.
-- Run only after purge_campaign marked the campaign; the caller passes the version the
-- mark was made at, and a bucket whose deadline copy is newer than it is left alone.
-- Counters in the meta hash stay (GetCampaignStats reports them as history, with the
-- purge time). Safe to repeat.
-- KEYS[1] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy, counters; 'pg' set)
-- KEYS[2] {bN}:e       outbox stream
-- KEYS[3] {bN}:c:<s>   code records (deleted)
-- KEYS[4] {bN}:x:<s>   exchanges (deleted)
-- KEYS[5] {bN}:p       PENDING exchanges (ZSET; the campaign's entries removed)
-- KEYS[6] {bN}:f:<s>   exchanges given with a preference (deleted)
-- ARGV[1] now (ms)
-- ARGV[2] campaign version the purge mark was made at
-- ARGV[3] event trim threshold (ms, XADD MINID)
-- ARGV[4] the campaign's exchange id prefix (4 hex digits of its series)
-- Returns {0, purged (0/1)} OK: 0 when the bucket's copy is newer than ARGV[2]; 1 also
-- for a bucket without the campaign's meta (it never held a code of it) or already purged
local rcall = redis.call
local m = rcall('HMGET', KEYS[1], 'ver', 'pg')
if not m[1] or m[2] then return {0, 1} end
if tonumber(m[1]) > tonumber(ARGV[2]) then return {0, 0} end

local stale = {}
for _, id in ipairs(rcall('ZRANGE', KEYS[5], 0, -1)) do
  if string.sub(id, 1, 4) == ARGV[4] then stale[#stale + 1] = id end
end
local gone = rcall('DEL', KEYS[3], KEYS[4], KEYS[6])
for i = 1, #stale, 1000 do
  rcall('ZREM', KEYS[5], unpack(stale, i, math.min(i + 999, #stale)))
end
rcall('HSET', KEYS[1], 'pg', ARGV[1])
if gone > 0 or #stale > 0 then
  rcall('XADD', KEYS[2], 'MINID', '~', ARGV[3], '*', 'k', 'campaign.purged', 't', ARGV[1],
    'series', string.match(KEYS[1], ':m:(%d+)$'))
end
return {0, 1}
