-- begin_attempt: take (or renew) a PENDING exchange's lease and count one more attempt.
-- KEYS[1] {bN}:x:<s>   exchanges (HASH code field..seq2 -> cmsgpack record)
-- KEYS[2] {bN}:e       outbox stream
-- ARGV[1] now (ms)
-- ARGV[2] exchange field (code field .. seq2)
-- ARGV[3] lease holder
-- ARGV[4] lease until (ms)
-- ARGV[5] exchange id (for the event)
-- ARGV[6] event trim threshold (ms, XADD MINID)
-- Returns {0, record...} OK; {17} EXCHANGE_NOT_FOUND; {18} EXCHANGE_FINISHED; {19} LEASED
local rcall = redis.call
local now = tonumber(ARGV[1])
local raw = rcall('HGET', KEYS[1], ARGV[2])
if not raw then return {17} end
local x = cmsgpack.unpack(raw)
if x[1] ~= 'P' then return {18} end
if x[10] ~= '' and x[10] ~= ARGV[3] and x[11] > now then return {19} end

x[7] = x[7] + 1
x[10] = ARGV[3]
x[11] = tonumber(ARGV[4])
rcall('HSET', KEYS[1], ARGV[2], cmsgpack.pack(x))
rcall('XADD', KEYS[2], 'MINID', '~', ARGV[6], '*', 'k', 'exchange.attempt', 't', ARGV[1],
  'exchange', ARGV[5], 'attempt', x[7])
local r = {0}
for i = 1, 16 do r[i + 1] = x[i] end
return r
