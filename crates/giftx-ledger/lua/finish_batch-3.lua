-- finish_batch: close an ISSUING batch as COMPLETE or INCOMPLETE (closed batches stay as they are).
-- KEYS[1] {g}:c:<id>            campaign record (HASH)
-- KEYS[2] {g}:b:<id>:<batch>    batch record (HASH)
-- KEYS[3] {g}:e                 outbox stream
-- ARGV[1] complete ('1' COMPLETE, '0' INCOMPLETE)
-- ARGV[2] now (ms)
-- ARGV[3] issued count (summed over the buckets by the caller)
-- ARGV[4] event trim threshold (ms, XADD MINID)
-- Returns {0} OK; {13} BATCH_NOT_FOUND
local rcall = redis.call
if rcall('EXISTS', KEYS[1]) == 0 then return {13} end
local st = rcall('HGET', KEYS[2], 'st')
if not st then return {13} end
if st ~= 'I' then return {0} end

local nst = 'N'
if ARGV[1] == '1' then nst = 'C' end
rcall('HSET', KEYS[2], 'st', nst, 'ut', ARGV[2], 'iss', ARGV[3])
rcall('XADD', KEYS[3], 'MINID', '~', ARGV[4], '*', 'k', 'batch.finished', 't', ARGV[2],
  'campaign', rcall('HGET', KEYS[1], 'id'), 'batch', rcall('HGET', KEYS[2], 'id'),
  'state', nst, 'issued', ARGV[3])
return {0}
