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
-- ARGV[6], ARGV[7], ... the codes, two arguments each: the code field (10 bytes), then its
--         new record as stored ('A', login key digest prefix (8 bytes), '\0\0' (no exchange
--         yet), serial in the batch (4 bytes, big-endian), batch ordinal = ARGV[2]); no
--         code field twice (the caller reports repeats within a chunk)
-- Returns {0, bucket_batch_issued, i...} OK: the batch's stored codes in this bucket after
-- the chunk, then the 1-based index of each code whose field already existed;
-- an error reply if a code lacks its record
-- The records come ready to store, so the common case (no field taken) is one HMGET check
-- and one HSET of the arguments as they are: no per-code string work in Lua, one
-- redis.call and one AOF entry per bucket instead of per code; counters are read first and
-- written once.
-- When the bucket reaches PIN_AT (64) codes of the campaign, the script first writes the pin:
-- field '#' (never a code field: those are 10 bytes) with a value longer than
-- hash-max-listpack-value (64 by default), which makes Redis keep KEYS[1] a real hash table
-- from then on (also across AOF rewrites and restarts). A listpack is searched linearly,
-- twice per stored code (check, then insert), so its cost grows with the bucket (past
-- 1,000,000 codes it dominated the store); a hash table costs the same at any size, about
-- 90 bytes per code. Meta 'cp' notes that the pin was written.
local rcall = redis.call
local now, ord = tonumber(ARGV[1]), ARGV[2]
local dl, ver = tonumber(ARGV[3]), tonumber(ARGV[4])
local na = #ARGV
if na < 5 or (na - 5) % 2 ~= 0 then
  return redis.error_reply('store_codes: a code without its record')
end
local n = (na - 5) / 2
local bi, bl = 'bi:' .. ord, 'bl:' .. ord
local m = rcall('HMGET', KEYS[2], 'dl', 'ver', 'sw', bi, 'n', bl, 'cp')
local sync = true
if m[2] and tonumber(m[2]) >= ver then dl = tonumber(m[1]) sync = false end
local fields = {}
for i = 1, n do fields[i] = ARGV[4 + 2 * i] end
-- unpack() is bounded by the Lua C stack: check and write in slices.
local out = {0, 0}
for i = 1, n, 4000 do
  local got = rcall('HMGET', KEYS[1], unpack(fields, i, math.min(i + 3999, n)))
  for j = 1, #got do
    if got[j] then out[#out + 1] = i + j - 1 end
  end
end

local stored = n - (#out - 2)
local PIN_AT = 64
local pin = stored > 0 and not m[7] and tonumber(m[5] or 0) + stored >= PIN_AT
if pin then rcall('HSET', KEYS[1], '#', string.rep('#', 100)) end
if #out == 2 then
  for i = 6, na, 4000 do
    rcall('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 3999, na)))
  end
elseif stored > 0 then
  local args, k = {}, 3
  for i = 1, n do
    if out[k] == i then
      k = k + 1
    else
      args[#args + 1] = ARGV[4 + 2 * i]
      args[#args + 1] = ARGV[5 + 2 * i]
    end
  end
  for i = 1, #args, 4000 do
    rcall('HSET', KEYS[1], unpack(args, i, math.min(i + 3999, #args)))
  end
end
local issued = tonumber(m[4] or 0) + stored
local w = {bi, issued}
if stored > 0 then
  w[#w + 1] = 'n'
  w[#w + 1] = tonumber(m[5] or 0) + stored
  w[#w + 1] = bl
  w[#w + 1] = tonumber(m[6] or 0) + stored
end
if sync then
  w[#w + 1] = 'dl'
  w[#w + 1] = dl
  w[#w + 1] = 'ver'
  w[#w + 1] = ver
end
if pin then
  w[#w + 1] = 'cp'
  w[#w + 1] = 1
end
rcall('HSET', KEYS[2], unpack(w))
if sync and m[3] and dl > now then rcall('HDEL', KEYS[2], 'sw') end
if stored > 0 then
  local ttl = dl + tonumber(ARGV[5]) - now
  if ttl > 0 then rcall('PEXPIRE', KEYS[1], ttl) end
end
out[2] = issued
return out
