-- store_list: one page of provider keys with a prefix, in byte order, with their values.
-- KEYS[1] {p:<id>}:k   key index (ZSET key, score 0, ordered by bytes)
-- KEYS[2] {p:<id>}:v   values (HASH key -> value, opaque sealed bytes)
-- ARGV[1] ZRANGEBYLEX start: '[' .. prefix, or '(' .. after when after >= prefix
-- ARGV[2] prefix
-- ARGV[3] limit (>= 0)
-- Returns {0, more, k1, v1, k2, v2, ...} OK: up to ARGV[3] keys with their values;
-- more is 1 when a further key with the prefix follows the last one, else 0
local rcall = redis.call
local limit, prefix = tonumber(ARGV[3]), ARGV[2]
local found = rcall('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, limit + 1)
local keys, more = {}, 0
for _, k in ipairs(found) do
  if string.sub(k, 1, #prefix) ~= prefix then break end
  if #keys == limit then more = 1 break end
  keys[#keys + 1] = k
end

local out = {0, more}
if #keys == 0 then return out end
local values = rcall('HMGET', KEYS[2], unpack(keys))
for i, k in ipairs(keys) do
  out[#out + 1] = k
  out[#out + 1] = values[i]
end
return out
