-- defer_attempt: end an attempt with an unknown outcome: drop the lease, set the next try.
-- KEYS[1] {bN}:x:<s>   exchanges (HASH code field..seq2 -> cmsgpack record)
-- KEYS[2] {bN}:e       outbox stream
-- ARGV[1] now (ms)
-- ARGV[2] exchange field (code field .. seq2)
-- ARGV[3] next attempt time (ms)
-- ARGV[4] park ('1' parks it for an operator)
-- ARGV[5] exchange id (for the event)
-- ARGV[6] event trim threshold (ms, XADD MINID)
-- Returns {0, record...} OK; {17} EXCHANGE_NOT_FOUND; {18} EXCHANGE_FINISHED
local rcall = redis.call
local raw = rcall('HGET', KEYS[1], ARGV[2])
if not raw then return {17} end
local x = cmsgpack.unpack(raw)
if x[1] ~= 'P' then return {18} end

x[9] = tonumber(ARGV[3])
x[10] = ''
x[11] = 0
if ARGV[4] == '1' then x[8] = 1 end
rcall('HSET', KEYS[1], ARGV[2], cmsgpack.pack(x))
rcall('XADD', KEYS[2], 'MINID', '~', ARGV[6], '*', 'k', 'exchange.deferred', 't', ARGV[1],
  'exchange', ARGV[5], 'parked', x[8])
local r = {0}
for i = 1, 16 do r[i + 1] = x[i] end
return r
