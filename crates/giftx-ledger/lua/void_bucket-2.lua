-- void_bucket: flag a voided batch in this bucket's copy (its ACTIVE codes read VOID).
-- KEYS[1] {bN}:m:<s>   bucket meta of the campaign (HASH v:<ordinal> flags, counters)
-- KEYS[2] {bN}:e       outbox stream
-- ARGV[1] batch ordinal
-- ARGV[2] now (ms)
-- ARGV[3] event trim threshold (ms, XADD MINID)
-- Returns {0, voided} OK: live codes of the batch this call voided here (0 on a repeat)
local rcall = redis.call
local f = 'v:' .. ARGV[1]
if rcall('HEXISTS', KEYS[1], f) == 1 then return {0, 0} end
local live = tonumber(rcall('HGET', KEYS[1], 'bl:' .. ARGV[1]) or '0')

rcall('HSET', KEYS[1], f, 1)
if live > 0 then
  rcall('XADD', KEYS[2], 'MINID', '~', ARGV[3], '*', 'k', 'batch.voided.bucket', 't', ARGV[2],
    'batch', ARGV[1], 'count', live)
end
return {0, live}
