-- exchange_record: the opening shared by the scripts that change one exchange
-- (begin_attempt, defer_attempt, complete_exchange, release_exchange). Redis
-- scripts cannot include one another, so src/redis/scripts.rs puts this file
-- before each of them when it loads them.
-- Their KEYS: [1] code records, [2] exchanges, [3] bucket meta, [4] PENDING
-- exchanges, [5] outbox stream; their ARGV[1] is now (ms), ARGV[2] the
-- exchange field.
--
-- exchange_record(id, trim, dl, ver, retention, extra): the exchange's record
-- (decoded), or nil when there is none; and the bucket meta fields 'dl',
-- 'ver' followed by the fields named by extra(record) (a function; optional),
-- read in one HMGET, so callers get the counters they change for free.
-- Past deadline + retention (by
-- ARGV[1]; deadline = the newer of dl/ver and the bucket's copy) the
-- campaign's codes and exchanges in this bucket are gone: they are deleted
-- here (with their PENDING entries; event trimmed at `trim`) and this
-- answers nil.
local function exchange_record(id, trim, known_dl, known_ver, retention, extra)
  local raw = redis.call('HGET', KEYS[2], ARGV[2])
  if not raw then return nil end
  local x = cmsgpack.unpack(raw)
  local m
  if extra then
    m = redis.call('HMGET', KEYS[3], 'dl', 'ver', unpack(extra(x)))
  else
    m = redis.call('HMGET', KEYS[3], 'dl', 'ver')
  end
  local dl = tonumber(known_dl)
  if m[2] and tonumber(m[2]) >= tonumber(known_ver) then dl = tonumber(m[1]) end
  if tonumber(ARGV[1]) >= dl + tonumber(retention) then
    local series = string.sub(id, 1, 4)
    local stale = {}
    for _, pid in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
      if string.sub(pid, 1, 4) == series then stale[#stale + 1] = pid end
    end
    redis.call('DEL', KEYS[1], KEYS[2])
    for i = 1, #stale, 1000 do
      redis.call('ZREM', KEYS[4], unpack(stale, i, math.min(i + 999, #stale)))
    end
    redis.call('XADD', KEYS[5], 'MINID', '~', trim, '*', 'k', 'campaign.purged', 't', ARGV[1],
      'series', string.match(KEYS[1], ':c:(%d+)$'))
    return nil
  end
  return x, m
end

-- The OK reply of those scripts: {0, record fields 1..18}.
local function exchange_reply(x)
  local r = {0}
  for i = 1, 18 do r[i + 1] = x[i] end
  return r
end

