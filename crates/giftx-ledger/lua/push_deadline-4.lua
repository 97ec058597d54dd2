-- push_deadline: give this bucket a campaign's new deadline if it is newer than its copy.
-- KEYS[1] {bN}:c:<s>   code records (TTL follows the deadline)
-- KEYS[2] {bN}:x:<s>   exchanges (TTL follows the deadline)
-- KEYS[3] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy, counters)
-- KEYS[4] {bN}:f:<s>   exchanges given with a preference (TTL follows the deadline)
-- ARGV[1] deadline (ms)
-- ARGV[2] version
-- ARGV[3] now (ms)
-- ARGV[4] retention after the deadline (ms)
-- Returns {0, applied (0/1)} OK
-- The bucket's deadline copy (dl, ver) is also synced by the scripts that meet a newer
-- version first (claim_code, store_codes, sweep_expired); they do not move the TTLs of
-- every key here. So the TTLs have their own version, 'tv', and only this script writes
-- it: a bucket whose copy is already current still gets its TTLs moved.
-- When the copy is newer than ARGV[2], the TTLs follow the copy.
-- A deadline move never deletes: when deadline + retention has already passed by ARGV[3]
-- (a stale push), the TTLs are left as they are; deleting is purge_bucket's alone.
local rcall = redis.call
local dl, now, ver = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[2])
local cur = rcall('HMGET', KEYS[3], 'ver', 'tv', 'dl')
if cur[2] and tonumber(cur[2]) >= ver then return {0, 0} end

if cur[1] and tonumber(cur[1]) >= ver then
  ver, dl = tonumber(cur[1]), tonumber(cur[3])
  rcall('HSET', KEYS[3], 'tv', ver)
else
  rcall('HSET', KEYS[3], 'dl', ARGV[1], 'ver', ARGV[2], 'tv', ARGV[2])
  if dl > now then rcall('HDEL', KEYS[3], 'sw') end
end
local ttl = dl + tonumber(ARGV[4]) - now
if ttl > 0 then
  rcall('PEXPIRE', KEYS[1], ttl)
  rcall('PEXPIRE', KEYS[2], ttl)
  rcall('PEXPIRE', KEYS[4], ttl)
end
return {0, 1}
