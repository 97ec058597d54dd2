-- record_stored: note a stored chunk of a batch (activity time, never moved back, and event).
-- KEYS[1] {g}:c:<id>            campaign record (HASH)
-- KEYS[2] {g}:b:<id>:<batch>    batch record (HASH)
-- KEYS[3] {g}:e                 outbox stream
-- ARGV[1] now (ms)
-- ARGV[2] codes stored by the chunk
-- ARGV[3] codes of the batch stored so far
-- ARGV[4] event trim threshold (ms, XADD MINID)
-- Returns {0} OK; {13} BATCH_NOT_FOUND
local rcall = redis.call
if rcall('EXISTS', KEYS[1]) == 0 or rcall('EXISTS', KEYS[2]) == 0 then return {13} end

-- Activity time only moves forward: a keepalive touch made while the
-- chunk was stored may already be later than ARGV[1].
if tonumber(ARGV[1]) > (tonumber(rcall('HGET', KEYS[2], 'la')) or 0) then
  rcall('HSET', KEYS[2], 'la', ARGV[1])
end
rcall('XADD', KEYS[3], 'MINID', '~', ARGV[4], '*', 'k', 'batch.stored', 't', ARGV[1],
  'campaign', rcall('HGET', KEYS[1], 'id'), 'batch', rcall('HGET', KEYS[2], 'id'),
  'count', ARGV[2], 'issued', ARGV[3])
return {0}
