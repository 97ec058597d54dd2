-- release_exchange: PENDING -> FAILED (provider refused); code -> ACTIVE again.
-- KEYS[1] {bN}:c:<s>   code records (HASH code field -> state.login8.seq2.serial4.ordinal)
-- KEYS[2] {bN}:x:<s>   exchanges (HASH code field..seq2 -> cmsgpack record)
-- KEYS[3] {bN}:m:<s>   bucket meta of the campaign (HASH counters)
-- KEYS[4] {bN}:p       PENDING exchanges (ZSET exchange id, score create time)
-- KEYS[5] {bN}:e       outbox stream
-- ARGV[1] now (ms)
-- ARGV[2] exchange field (code field .. seq2)
-- ARGV[3] failure reason
-- ARGV[4] '1': the refusal is retryable (record value 19 = 1): the same request claims
--         the code again later (claim_code) instead of getting this exchange back
-- ARGV[5] exchange id
-- ARGV[6] event trim threshold (ms, XADD MINID)
-- ARGV[7] campaign deadline known to the caller (ms)
-- ARGV[8] campaign version known to the caller
-- ARGV[9] retention after the deadline (ms)
-- Returns {0, record...} OK (also when it had already FAILED: unchanged);
-- {17} EXCHANGE_NOT_FOUND; {18} EXCHANGE_FINISHED (it SUCCEEDED)
-- Past deadline + retention (by ARGV[1], not Redis's clock; deadline = the newer of
-- ARGV[7]/ARGV[8] and the bucket's copy) the campaign's codes and exchanges in this
-- bucket read as gone: this reads {17} and changes nothing (purge_bucket deletes).
-- That lookup, and exchange_reply, are in lib/exchange_record.lua, which the
-- loader (src/redis/scripts.rs) puts before this file.
local rcall = redis.call
local function counters(r) return {'p', 'op:' .. r[2]} end
local x, m = exchange_record(ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], counters)
if not x then return {17} end
if x[1] == 'F' then return exchange_reply(x) end
if x[1] ~= 'P' then return {18} end
local cf = string.sub(ARGV[2], 1, 10)
local rec = rcall('HGET', KEYS[1], cf)

x[1] = 'F'
x[6] = tonumber(ARGV[1])
x[10] = ''
x[11] = 0
x[14] = ARGV[3]
-- Records written before the batch ordinal and serial end at 16: keep the array whole.
x[17] = x[17] or 0
x[18] = x[18] or 0
x[19] = ARGV[4] == '1' and 1 or 0
rcall('HSET', KEYS[2], ARGV[2], cmsgpack.pack(x))
if rec then
  rcall('HSET', KEYS[1], cf, 'A' .. string.sub(rec, 2))
  rcall('HINCRBY', KEYS[3], 'bl:' .. string.sub(rec, 16), 1)
end
-- m: dl, ver, then the counters named by counters(x).
rcall('HSET', KEYS[3], 'p', tonumber(m[3] or 0) - 1, 'op:' .. x[2], tonumber(m[4] or 0) - 1)
rcall('ZREM', KEYS[4], ARGV[5])
rcall('XADD', KEYS[5], 'MINID', '~', ARGV[6], '*', 'k', 'exchange.failed', 't', ARGV[1],
  'exchange', ARGV[5], 'option', x[2])
return exchange_reply(x)
