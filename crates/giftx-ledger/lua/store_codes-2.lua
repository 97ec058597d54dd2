-- store_codes: store a chunk of one batch's codes that fall in this bucket (insert-if-absent).
-- The chunk's event is recorded once in {g} by record_stored (a stream per
-- bucket would cost more memory than the codes of a small batch).
-- KEYS[1] {bN}:c:<s>   code records (HASH code field -> state.login8.seq2.serial4.ordinal)
-- KEYS[2] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy, counters)
-- ARGV[1] now (ms)
-- ARGV[2] batch ordinal
-- ARGV[3] campaign deadline known to the caller (ms)
-- ARGV[4] campaign version known to the caller
-- ARGV[5] retention after the deadline (ms)
-- ARGV[6] the codes: 22-byte records, code field (10 bytes), login key digest prefix
--         (8 bytes), serial in the batch (4 bytes, big-endian); no code field twice (the
--         caller reports repeats within a chunk)
-- Returns {0, bucket_batch_issued, i...} OK: the batch's stored codes in this bucket after
-- the chunk, then the 1-based record index of each code whose field already existed;
-- an error reply if ARGV[6] is not a whole number of records
-- One HMGET checks every field and one HSET writes the new ones (a redis.call, and an AOF
-- entry, per bucket instead of per code); counters are read first and written once.
local rcall = redis.call
local now, ord = tonumber(ARGV[1]), ARGV[2]
local dl, ver = tonumber(ARGV[3]), tonumber(ARGV[4])
local blob = ARGV[6]
if #blob % 22 ~= 0 then return redis.error_reply('store_codes: ragged code records') end
local n = #blob / 22
local bi, bl = 'bi:' .. ord, 'bl:' .. ord
local m = rcall('HMGET', KEYS[2], 'dl', 'ver', 'sw', bi, 'n', bl)
local sync = true
if m[2] and tonumber(m[2]) >= ver then dl = tonumber(m[1]) sync = false end
local fields = {}
for i = 1, n do fields[i] = string.sub(blob, i * 22 - 21, i * 22 - 12) end
-- unpack() is bounded by the Lua C stack: check and write in slices.
local have = {}
for i = 1, n, 4000 do
  local got = rcall('HMGET', KEYS[1], unpack(fields, i, math.min(i + 3999, n)))
  for j = 1, #got do have[i + j - 1] = got[j] end
end

local out = {0, 0}
local args = {}
for i = 1, n do
  if have[i] then
    out[#out + 1] = i
  else
    args[#args + 1] = fields[i]
    -- state, login8, seq2 (no exchange yet), serial4, ordinal
    args[#args + 1] = 'A' .. string.sub(blob, i * 22 - 11, i * 22 - 4) .. '\0\0'
      .. string.sub(blob, i * 22 - 3, i * 22) .. ord
  end
end
local stored = #args / 2
for i = 1, #args, 4000 do
  rcall('HSET', KEYS[1], unpack(args, i, math.min(i + 3999, #args)))
end
local issued = tonumber(m[4] or 0) + stored
if stored > 0 and sync then
  rcall('HSET', KEYS[2], bi, issued, 'n', tonumber(m[5] or 0) + stored,
    bl, tonumber(m[6] or 0) + stored, 'dl', dl, 'ver', ver)
elseif stored > 0 then
  rcall('HSET', KEYS[2], bi, issued, 'n', tonumber(m[5] or 0) + stored,
    bl, tonumber(m[6] or 0) + stored)
elseif sync then
  rcall('HSET', KEYS[2], bi, issued, 'dl', dl, 'ver', ver)
else
  rcall('HSET', KEYS[2], bi, issued)
end
if sync and m[3] and dl > now then rcall('HDEL', KEYS[2], 'sw') end
if stored > 0 then
  local ttl = dl + tonumber(ARGV[5]) - now
  if ttl > 0 then rcall('PEXPIRE', KEYS[1], ttl) end
end
out[2] = issued
return out
