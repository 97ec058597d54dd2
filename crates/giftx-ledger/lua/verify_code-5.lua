-- verify_code: check a code and its login key; report its state and latest exchange.
-- KEYS[1] {bN}:c:<s>   code records (HASH code field -> state.login8.seq2.serial4.ordinal)
-- KEYS[2] {bN}:x:<s>   exchanges (HASH code field..seq2 -> cmsgpack record)
-- KEYS[3] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy, counters)
-- KEYS[4] {bN}:l       lockout (HASH code field -> fails:until)
-- KEYS[5] {bN}:e       outbox stream
-- ARGV[1] now (ms)
-- ARGV[2] code field (10 bytes)
-- ARGV[3] login key digest prefix (8 bytes)
-- ARGV[4] campaign deadline known to the caller (ms)
-- ARGV[5] campaign version known to the caller
-- ARGV[6] voided batch ordinals known to the caller (',1,4,')
-- ARGV[7] lockout threshold
-- ARGV[8] lockout duration (ms)
-- ARGV[9] event trim threshold (ms, XADD MINID)
-- ARGV[10] retention after the deadline (ms)
-- Returns {0, state, seq, record...} OK: state one of A P R E V, seq 0 when no exchange
-- (then no record); {2} LOGIN_KEY_MISMATCH (also: no such code, or the campaign's codes
-- are past deadline + retention: then this bucket's codes and exchanges of the campaign
-- are deleted here, whatever Redis's own clock says); {3, until} LOCKED
-- The login key prefix is compared in constant time (OR of the XORs of all 8 bytes).
-- 64 bits are plenty: lockout allows ARGV[7] guesses per lockout duration.
local rcall = redis.call
local now, field = tonumber(ARGV[1]), ARGV[2]
local function seq2(n) return string.char(math.floor(n / 256), n % 256) end
local function same_key(rec, key)
  if #key ~= 8 then return false end
  local d = 0
  for i = 1, 8 do
    d = bit.bor(d, bit.bxor(string.byte(rec, i + 1), string.byte(key, i)))
  end
  return d == 0
end

local rec = rcall('HGET', KEYS[1], field)
if not rec then return {2} end
local ord = string.sub(rec, 16)
local dl, ver = tonumber(ARGV[4]), tonumber(ARGV[5])
local m = rcall('HMGET', KEYS[3], 'dl', 'ver', 'v:' .. ord)
if m[2] and tonumber(m[2]) >= ver then dl = tonumber(m[1]) end
local lk = rcall('HGET', KEYS[4], field)
if now >= dl + tonumber(ARGV[10]) then
  rcall('DEL', KEYS[1], KEYS[2])
  if lk then rcall('HDEL', KEYS[4], field) end
  rcall('XADD', KEYS[5], 'MINID', '~', ARGV[9], '*', 'k', 'campaign.purged', 't', ARGV[1],
    'series', string.match(KEYS[1], ':c:(%d+)$'))
  return {2}
end
local fails, locked = 0, 0
if lk then
  local a, b = string.match(lk, '^(%d+):(%d+)$')
  fails, locked = tonumber(a), tonumber(b)
end
if locked > now then return {3, locked} end
if not same_key(rec, ARGV[3]) then
  fails = fails + 1
  if fails >= tonumber(ARGV[7]) then
    local untl = now + tonumber(ARGV[8])
    rcall('HSET', KEYS[4], field, '0:' .. string.format('%d', untl))
    rcall('XADD', KEYS[5], 'MINID', '~', ARGV[9], '*', 'k', 'code.locked', 't', ARGV[1],
      'until', string.format('%d', untl))
    return {3, untl}
  end
  rcall('HSET', KEYS[4], field, fails .. ':0')
  return {2}
end

local st = string.sub(rec, 1, 1)
if st == 'A' then
  if m[3] or string.find(ARGV[6], ',' .. ord .. ',', 1, true) then
    st = 'V'
  elseif now >= dl then
    st = 'E'
  end
end
local seq = string.byte(rec, 10) * 256 + string.byte(rec, 11)
local r = {0, st, 0}
if seq > 0 then
  local raw = rcall('HGET', KEYS[2], field .. seq2(seq))
  if raw then
    r[3] = seq
    local x = cmsgpack.unpack(raw)
    for i = 1, 18 do r[i + 3] = x[i] end
  end
end
if lk then rcall('HDEL', KEYS[4], field) end
return r
