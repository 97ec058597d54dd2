-- begin_batch: open a batch (ISSUING) with the campaign's next ordinal.
-- KEYS[1] {g}:c:<id>            campaign record (HASH)
-- KEYS[2] {g}:b:<id>:<batch>    batch record (HASH)
-- KEYS[3] {g}:e                 outbox stream
-- KEYS[4] {g}:bo:<id>           batch ids by ordinal (HASH ordinal -> batch id)
-- ARGV[1] batch id
-- ARGV[2] requested count
-- ARGV[3] now (ms)
-- ARGV[4] event trim threshold (ms, XADD MINID)
-- Returns {0, ordinal} OK; {9} CAMPAIGN_NOT_FOUND; {14} BATCH_EXISTS; {16} CAMPAIGN_EXPIRED
local rcall = redis.call
local now = tonumber(ARGV[3])
local dl = rcall('HGET', KEYS[1], 'dl')
if not dl then return {9} end
if rcall('EXISTS', KEYS[2]) == 1 then return {14} end
if now >= tonumber(dl) then return {16} end

local ord = rcall('HINCRBY', KEYS[1], 'nb', 1)
rcall('HSET', KEYS[2], 'id', ARGV[1], 'ord', ord, 'req', ARGV[2], 'st', 'I',
  'ct', ARGV[3], 'ut', ARGV[3], 'la', ARGV[3])
rcall('HSET', KEYS[4], ord, ARGV[1])
rcall('XADD', KEYS[3], 'MINID', '~', ARGV[4], '*', 'k', 'batch.created', 't', ARGV[3],
  'campaign', rcall('HGET', KEYS[1], 'id'), 'batch', ARGV[1], 'requested', ARGV[2])
return {0, ord}
