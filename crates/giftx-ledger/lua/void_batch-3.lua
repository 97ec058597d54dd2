-- void_batch: mark a batch VOID in the global registry, with its bucket push pending.
-- KEYS[1] {g}:c:<id>            campaign record (HASH; 'vo' lists voided ordinals)
-- KEYS[2] {g}:b:<id>:<batch>    batch record (HASH)
-- KEYS[3] {g}:e                 outbox stream
-- ARGV[1] now (ms)
-- ARGV[2] event trim threshold (ms, XADD MINID)
-- Returns {0, ordinal, push_pending (0/1)} OK (also on a repeat); {13} BATCH_NOT_FOUND
local rcall = redis.call
if rcall('EXISTS', KEYS[1]) == 0 then return {13} end
local b = rcall('HMGET', KEYS[2], 'st', 'ord', 'vp')
if not b[1] then return {13} end
if b[1] == 'V' then
  if b[3] then return {0, tonumber(b[2]), 1} end
  return {0, tonumber(b[2]), 0}
end

local vo = rcall('HGET', KEYS[1], 'vo') or ','
rcall('HSET', KEYS[1], 'vo', vo .. b[2] .. ',')
rcall('HSET', KEYS[2], 'st', 'V', 'vp', 1, 'ut', ARGV[1])
rcall('XADD', KEYS[3], 'MINID', '~', ARGV[2], '*', 'k', 'batch.voided', 't', ARGV[1],
  'campaign', rcall('HGET', KEYS[1], 'id'), 'batch', rcall('HGET', KEYS[2], 'id'))
return {0, tonumber(b[2]), 1}
