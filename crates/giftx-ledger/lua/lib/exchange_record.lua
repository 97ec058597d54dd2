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
-- Past deadline + retention (by ARGV[1]; deadline = the newer of dl/ver and
-- the bucket's copy) this answers nil, as for an exchange that does not
-- exist, and changes nothing: deleting is the purge step's alone
-- (purge_bucket, after purge_campaign marked the campaign), never a side
-- effect of a deadline a caller happens to hold. (id and trim are unused
-- since; kept so the callers' arguments stay as they are.)
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
  if tonumber(ARGV[1]) >= dl + tonumber(retention) then return nil end
  return x, m
end

-- The OK reply of those scripts: {0, record fields 1..18}.
local function exchange_reply(x)
  local r = {0}
  for i = 1, 18 do r[i + 1] = x[i] end
  return r
end

