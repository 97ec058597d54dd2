-- verify_code: check a code and its login key; report its state and latest exchange.
-- KEYS[1] {bN}:c:<s>   code records (HASH code field -> state.login8.seq2.serial4.ordinal)
-- KEYS[2] {bN}:x:<s>   exchanges (HASH code field..seq2 -> cmsgpack record)
-- KEYS[3] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy, counters)
-- KEYS[4] {bN}:l:<s>:<f> lockout of this code (STRING fails:until:expires, PX to expires;
--                      s = series index, f = the code field in hex)
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
-- are past deadline + retention by ARGV[1], whatever Redis's own clock says: nothing is
-- deleted here, that is purge_bucket's); {3, until} LOCKED
-- A code that does not exist takes the same path as a wrong login key: the same reads,
-- the same lockout count and write, the same answers, as in claim_code (which see for
-- the lockout entry). The caller runs this script also for a series no campaign holds.
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
local ord = rec and string.sub(rec, 16) or ''
local dl, ver = tonumber(ARGV[4]), tonumber(ARGV[5])
local m = rcall('HMGET', KEYS[3], 'dl', 'ver', 'v:' .. ord)
if m[2] and tonumber(m[2]) >= ver then dl = tonumber(m[1]) end
if now >= dl + tonumber(ARGV[10]) then rec = nil end
local lk = rcall('GET', KEYS[4])
local fails, locked = 0, 0
if lk then
  local a, b, c = string.match(lk, '^(%d+):(%d+):(%d+)$')
  if c and tonumber(c) > now then fails, locked = tonumber(a), tonumber(b) end
end
if locked > now then return {3, locked} end
local matched = same_key(rec or '\0\0\0\0\0\0\0\0\0', ARGV[3])
if not rec or not matched then
  fails = fails + 1
  local dur = tonumber(ARGV[8])
  if fails >= tonumber(ARGV[7]) then
    local untl = now + dur
    rcall('SET', KEYS[4], '0:' .. string.format('%d', untl) .. ':' .. string.format('%d', untl),
      'PX', math.max(dur, 1))
    rcall('XADD', KEYS[5], 'MINID', '~', ARGV[9], '*', 'k', 'code.locked', 't', ARGV[1],
      'until', string.format('%d', untl))
    return {3, untl}
  end
  rcall('SET', KEYS[4], fails .. ':0:' .. string.format('%d', now + dur),
    'PX', math.max(dur, 1))
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
if lk then rcall('DEL', KEYS[4]) end
return r
