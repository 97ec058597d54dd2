-- begin_attempt: take (or renew) a PENDING exchange's lease and count one more attempt.
-- KEYS[1] {bN}:c:<s>   code records (not used here)
-- KEYS[2] {bN}:x:<s>   exchanges (HASH code field..seq2 -> cmsgpack record)
-- KEYS[3] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy)
-- KEYS[4] {bN}:p       PENDING exchanges (ZSET; not used here)
-- KEYS[5] {bN}:e       outbox stream
-- ARGV[1] now (ms)
-- ARGV[2] exchange field (code field .. seq2)
-- ARGV[3] lease holder
-- ARGV[4] lease until (ms)
-- ARGV[5] exchange id (for the event)
-- ARGV[6] event trim threshold (ms, XADD MINID)
-- ARGV[7] campaign deadline known to the caller (ms)
-- ARGV[8] campaign version known to the caller
-- ARGV[9] retention after the deadline (ms)
-- Returns {0, record...} OK; {17} EXCHANGE_NOT_FOUND; {18} EXCHANGE_FINISHED; {19} LEASED
-- Past deadline + retention (by ARGV[1], not Redis's clock; deadline = the newer of
-- ARGV[7]/ARGV[8] and the bucket's copy) the campaign's codes and exchanges in this
-- bucket read as gone: this reads {17} and changes nothing (purge_bucket deletes).
-- That lookup, and exchange_reply, are in lib/exchange_record.lua, which the
-- loader (src/redis/scripts.rs) puts before this file.
local rcall = redis.call
local now = tonumber(ARGV[1])
local x = exchange_record(ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
if not x then return {17} end
if x[1] ~= 'P' then return {18} end
if x[10] ~= '' and x[10] ~= ARGV[3] and x[11] > now then return {19} end

x[7] = x[7] + 1
x[10] = ARGV[3]
x[11] = tonumber(ARGV[4])
rcall('HSET', KEYS[2], ARGV[2], cmsgpack.pack(x))
rcall('XADD', KEYS[5], 'MINID', '~', ARGV[6], '*', 'k', 'exchange.attempt', 't', ARGV[1],
  'exchange', ARGV[5], 'attempt', x[7])
return exchange_reply(x)
