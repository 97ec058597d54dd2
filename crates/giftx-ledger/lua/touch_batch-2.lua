-- touch_batch: check a batch takes codes (ISSUING, not stalled) and record activity.
-- KEYS[1] {g}:c:<id>            campaign record (HASH)
-- KEYS[2] {g}:b:<id>:<batch>    batch record (HASH)
-- ARGV[1] now (ms)
-- ARGV[2] stall timeout (ms)
-- Returns {0, ordinal} OK; {13} BATCH_NOT_FOUND; {15} BATCH_CLOSED
local rcall = redis.call
local now = tonumber(ARGV[1])
if rcall('EXISTS', KEYS[1]) == 0 then return {13} end
local b = rcall('HMGET', KEYS[2], 'st', 'la', 'ord')
if not b[1] then return {13} end
if b[1] ~= 'I' or now - tonumber(b[2]) > tonumber(ARGV[2]) then return {15} end

rcall('HSET', KEYS[2], 'la', ARGV[1])
return {0, tonumber(b[3])}
