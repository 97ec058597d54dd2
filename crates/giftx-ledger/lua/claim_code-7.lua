-- claim_code: check a code and its login key and open an exchange (code ACTIVE -> PENDING).
-- KEYS[1] {bN}:c:<s>   code records (HASH code field -> state.login8.seq2.serial4.ordinal)
-- KEYS[2] {bN}:x:<s>   exchanges (HASH code field..seq2 -> cmsgpack record; and the
--                      request index: code field..request digest -> seq)
-- KEYS[3] {bN}:m:<s>   bucket meta of the campaign (HASH deadline copy, counters)
-- KEYS[4] {bN}:l:<s>:<f> lockout of this code (STRING fails:until:expires, PX to expires;
--                      s = series index, f = the code field in hex)
-- KEYS[5] {bN}:p       PENDING exchanges (ZSET exchange id, score create time)
-- KEYS[6] {bN}:e       outbox stream
-- KEYS[7] {bN}:f:<s>   exchanges given with a preference (ZSET exchange id, score create
--                      time): per code its latest such exchange; same TTL as KEYS[1]
-- ARGV[1] now (ms)
-- ARGV[2] code field (10 bytes)
-- ARGV[3] login key digest prefix (8 bytes)
-- ARGV[4] request digest (32 bytes)
-- ARGV[5] fingerprint (32 bytes)
-- ARGV[6] option id
-- ARGV[7] contact email digest ('' = none)
-- ARGV[8] preferences (bit 1 delete personal data, bit 2 stop mail)
-- ARGV[9] lease holder
-- ARGV[10] lease until (ms)
-- ARGV[11] campaign deadline known to the caller (ms)
-- ARGV[12] campaign version known to the caller
-- ARGV[13] voided batch ordinals known to the caller (',1,4,')
-- ARGV[14] retention after the deadline (ms)
-- ARGV[15] lockout threshold
-- ARGV[16] lockout duration (ms)
-- ARGV[17] exchange id prefix (the id is prefix .. 4 hex digits of seq)
-- ARGV[18] event trim threshold (ms, XADD MINID)
-- ARGV[19] refused exchanges a code may have (MAX_FAILED_EXCHANGES)
-- Returns {0, seq} CLAIMED (the record is what the caller sent: state P, attempts 1, no
-- deliverable, batch ordinal and serial as the two extra elements {0, seq, ord, serial});
-- {1, seq, record...} EXISTING (same request and
-- fingerprint); {2} LOGIN_KEY_MISMATCH (also: no such code); {3, until} LOCKED;
-- {4} EXPIRED; {5} VOID; {6} ALREADY_REDEEMED; {7} IN_FLIGHT; {8} REQUEST_ID_REUSED;
-- {20} TOO_MANY_ATTEMPTS (the code has ARGV[19] exchanges, all FAILED, and this request
-- would start another)
-- record = state, option, request, fingerprint, create, update, attempts, parked,
-- next attempt, lease holder, lease until, contact, preferences, reason, has deliverable,
-- deliverable, batch ordinal, serial (the last two copied from the code record; absent
-- from records written before they existed); stored records may have a 19th value, 1 when
-- the exchange FAILED retryably (release_exchange), never part of a reply
-- Past deadline + retention (by ARGV[1], not Redis's clock) the code reads as one that
-- does not exist; nothing is deleted here (that is purge_bucket's, after purge_campaign).
-- A code that does not exist (never stored, or past retention) takes the same path as a
-- wrong login key: the same reads, the same lockout count and write, the same answers
-- ({2}, then {3, until} at the ARGV[15]-th), so neither the answer, the lockout nor the
-- work tells the two apart. A lockout entry lives until its 'expires' (the lock's end,
-- or ARGV[16] after the last wrong key), by ARGV[1]; its PX lets Redis drop it then, so
-- guesses at codes that do not exist leave nothing behind for long.
-- The login key prefix is compared in constant time (OR of the XORs of all 8 bytes).
-- 64 bits are plenty: lockout allows ARGV[15] guesses per lockout duration.
-- The request is found through the index (one HGET, whatever the code's history); records
-- written before the index existed are not in it, so the latest record (the only one that
-- can be other than FAILED) is also compared. A request whose exchange FAILED retryably
-- (release_exchange ARGV[4]; record value 19 = 1) is not answered with it: it claims the
-- code again as a new exchange, and the index then names the new one. The work of a claim
-- is bounded by a constant: the exchanges of a code are at most ARGV[19] + 1.
local rcall = redis.call
local now, field = tonumber(ARGV[1]), ARGV[2]
local function seq2(n) return string.char(math.floor(n / 256), n % 256) end
local function reply(rc, seq, x)
  local r = {rc, seq}
  for i = 1, 18 do r[i + 2] = x[i] end
  return r
end
local function event(kind, ...)
  rcall('XADD', KEYS[6], 'MINID', '~', ARGV[18], '*', 'k', kind, 't', ARGV[1], ...)
end

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
local dl, ver = tonumber(ARGV[11]), tonumber(ARGV[12])
local opf = 'op:' .. ARGV[6]
local m = rcall('HMGET', KEYS[3], 'dl', 'ver', 'sw', 'v:' .. ord, 'xt', 'bl:' .. ord, 'p', opf)
local sync = true
if m[2] and tonumber(m[2]) >= ver then dl = tonumber(m[1]) sync = false end
if now >= dl + tonumber(ARGV[14]) then rec = nil end
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
  local dur = tonumber(ARGV[16])
  if fails >= tonumber(ARGV[15]) then
    local untl = now + dur
    rcall('SET', KEYS[4], '0:' .. string.format('%d', untl) .. ':' .. string.format('%d', untl),
      'PX', math.max(dur, 1))
    event('code.locked', 'until', string.format('%d', untl))
    return {3, untl}
  end
  rcall('SET', KEYS[4], fails .. ':0:' .. string.format('%d', now + dur),
    'PX', math.max(dur, 1))
  return {2}
end
if lk then rcall('DEL', KEYS[4]) end

local seq = string.byte(rec, 10) * 256 + string.byte(rec, 11)
local ix = field .. ARGV[4]
local function request_record(i)
  local raw = i and i >= 1 and rcall('HGET', KEYS[2], field .. seq2(i))
  if not raw then return nil end
  local x = cmsgpack.unpack(raw)
  if x[3] == ARGV[4] then return x end
  return nil
end
local at = tonumber(rcall('HGET', KEYS[2], ix))
local x = request_record(at)
if not x and seq > 0 and at ~= seq then at = seq x = request_record(seq) end
if x then
  if x[4] ~= ARGV[5] then return {8} end
  if not (x[1] == 'F' and x[19] == 1) then return reply(1, at, x) end
end
local st = string.sub(rec, 1, 1)
if st == 'R' then return {6} end
if st == 'P' then return {7} end
if m[4] or string.find(ARGV[13], ',' .. ord .. ',', 1, true) then return {5} end
if now >= dl then return {4} end
if seq >= tonumber(ARGV[19]) then return {20} end
if seq >= 65535 then return {7} end

local nseq = seq + 1
local id = ARGV[17] .. string.format('%04x', nseq)
local b = {string.byte(rec, 12, 15)}
local serial = ((b[1] * 256 + b[2]) * 256 + b[3]) * 256 + b[4]
local prefs = tonumber(ARGV[8])
x = {'P', ARGV[6], ARGV[4], ARGV[5], now, now, 1, 0, 0, ARGV[9], tonumber(ARGV[10]),
  ARGV[7], prefs, '', 0, '', tonumber(ord), serial}
rcall('HSET', KEYS[1], field,
  'P' .. string.sub(rec, 2, 9) .. seq2(nseq) .. string.sub(rec, 12))
rcall('HSET', KEYS[2], field .. seq2(nseq), cmsgpack.pack(x), ix, nseq)
-- The counters, and the deadline copy when it moved, in one write. The exchanges hash
-- gets its TTL when this bucket first holds one under this deadline ('xt'); the codes
-- hash got its TTL when stored, and push_deadline moves both when the deadline moves.
local mset = {'bl:' .. ord, tonumber(m[6] or 0) - 1, 'p', tonumber(m[7] or 0) + 1,
  opf, tonumber(m[8] or 0) + 1}
local ttl = dl + tonumber(ARGV[14]) - now
if sync then
  mset[#mset + 1] = 'dl' mset[#mset + 1] = dl
  mset[#mset + 1] = 'ver' mset[#mset + 1] = ver
  if m[3] then rcall('HDEL', KEYS[3], 'sw') end
end
if sync or tonumber(m[5]) ~= dl then
  mset[#mset + 1] = 'xt' mset[#mset + 1] = dl
  rcall('PEXPIRE', KEYS[1], ttl)
  rcall('PEXPIRE', KEYS[2], ttl)
end
rcall('HSET', KEYS[3], unpack(mset))
rcall('ZADD', KEYS[5], now, id)
if prefs ~= 0 then
  -- One entry per code: this exchange replaces an earlier one given with a preference
  -- (at most ARGV[19] earlier ones: bounded).
  local older = {}
  for i = 1, seq do older[i] = ARGV[17] .. string.format('%04x', i) end
  for i = 1, #older, 1000 do
    rcall('ZREM', KEYS[7], unpack(older, i, math.min(i + 999, #older)))
  end
  rcall('ZADD', KEYS[7], now, id)
  rcall('PEXPIRE', KEYS[7], ttl)
end
event('code.claimed', 'exchange', id, 'option', ARGV[6])
return {0, nseq, tonumber(ord), serial}
