-- read_exchange: read one exchange record (read-only; decodes the stored cmsgpack).
-- KEYS[1] {bN}:x:<s>   exchanges (HASH code field..seq2 -> cmsgpack record)
-- ARGV[1] exchange field (code field .. seq2)
-- Returns {0, record...} OK; {17} EXCHANGE_NOT_FOUND
local rcall = redis.call
local raw = rcall('HGET', KEYS[1], ARGV[1])
if not raw then return {17} end
local x = cmsgpack.unpack(raw)
local r = {0}
for i = 1, 18 do r[i + 1] = x[i] end
return r
