-- access_check_keys: record each HMAC key's fingerprint the first time its id is seen; name the ids whose recorded fingerprint differs.
-- KEYS[1] {auth}:hmac  HMAC key id -> key fingerprint (HASH; a keyed hash of a constant, never the key)
-- ARGV[1..] pairs: key id, fingerprint
-- Returns {0, id...} OK: the ids whose recorded fingerprint is not the one given
local rcall = redis.call
local out = {0}
for i = 1, #ARGV - 1, 2 do
  if rcall('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 0
      and rcall('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
    out[#out + 1] = ARGV[i]
  end
end
return out
