-- create_campaign: create a campaign and give it the first free series (idempotent).
-- KEYS[1] {g}:c:<id>   campaign record (HASH)
-- KEYS[2] {g}:s        series index -> campaign id (HASH)
-- KEYS[3] {g}:cl       campaign ids in creation order (LIST)
-- KEYS[4] {g}:cr       create request id -> campaign id (HASH)
-- KEYS[5] {g}:e        outbox stream
-- ARGV[1] campaign id
-- ARGV[2] spec (JSON built by the ledger; deadline not included)
-- ARGV[3] deadline (ms)
-- ARGV[4] now (ms)
-- ARGV[5] request id ('' = none)
-- ARGV[6] event trim threshold (ms, XADD MINID)
-- Returns {0, id} CREATED; {1, id} EXISTING (same request id or same spec; id may
-- differ from ARGV[1] for a reused request id); {10} CAMPAIGN_EXISTS; {11} SERIES_EXHAUSTED
local rcall = redis.call
local id, spec, dl, now, req = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local spec0 = spec .. '|' .. dl

if req ~= '' then
  local cid = rcall('HGET', KEYS[4], req)
  if cid then return {1, cid} end
end
local cur = rcall('HGET', KEYS[1], 'spec0')
if cur then
  if cur ~= spec0 then return {10} end
  if req ~= '' then rcall('HSET', KEYS[4], req, id) end
  return {1, id}
end
local series = -1
for i = 0, 1023 do
  if rcall('HEXISTS', KEYS[2], i) == 0 then series = i break end
end
if series < 0 then return {11} end

rcall('HSET', KEYS[1], 'id', id, 'spec', spec, 'spec0', spec0, 'ser', series,
  'ct', now, 'ut', now, 'ver', 1, 'dl', dl, 'nb', 0, 'vo', ',')
rcall('HSET', KEYS[2], series, id)
rcall('RPUSH', KEYS[3], id)
if req ~= '' then rcall('HSET', KEYS[4], req, id) end
rcall('XADD', KEYS[5], 'MINID', '~', ARGV[6], '*', 'k', 'campaign.created', 't', now,
  'campaign', id, 'series', series)
return {0, id}
