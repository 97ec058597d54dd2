-- store_codes: store a chunk of one batch's codes that fall in this bucket (HSETNX each).
-- The chunk's event is recorded once in {g} by record_stored (a stream per
-- bucket would cost more memory than the codes of a small batch).
-- KEYS[1] {bN}:c:<s>   code records (HASH code field -> state.login8.seq2.ordinal)
-- KEYS[2] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy, counters)
-- ARGV[1] now (ms)
-- ARGV[2] batch ordinal
-- ARGV[3] campaign deadline known to the caller (ms)
-- ARGV[4] campaign version known to the caller
-- ARGV[5] retention after the deadline (ms)
-- ARGV[6..] pairs: code field (10 bytes), code record (ACTIVE)
-- Returns {0, bucket_batch_issued, i...} OK: the batch's stored codes in this bucket after
-- the chunk, then the 1-based pair index of each code whose field already existed
local rcall = redis.call
local now, ord = tonumber(ARGV[1]), ARGV[2]
local dl, ver = tonumber(ARGV[3]), tonumber(ARGV[4])
local m = rcall('HMGET', KEYS[2], 'dl', 'ver', 'sw')
local sync = true
if m[2] and tonumber(m[2]) >= ver then dl = tonumber(m[1]) sync = false end

local out = {0, 0}
local stored = 0
for i = 6, #ARGV, 2 do
  if rcall('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    stored = stored + 1
  else
    out[#out + 1] = (i - 4) / 2
  end
end
if sync then
  rcall('HSET', KEYS[2], 'dl', dl, 'ver', ver)
  if m[3] and dl > now then rcall('HDEL', KEYS[2], 'sw') end
end
local issued = rcall('HINCRBY', KEYS[2], 'bi:' .. ord, stored)
if stored > 0 then
  rcall('HINCRBY', KEYS[2], 'n', stored)
  rcall('HINCRBY', KEYS[2], 'bl:' .. ord, stored)
  local ttl = dl + tonumber(ARGV[5]) - now
  if ttl > 0 then rcall('PEXPIRE', KEYS[1], ttl) end
end
out[2] = issued
return out
