-- store_stock_add: add items to a provider's available stock, skipping digests ever seen.
-- KEYS[1] {p:<id>}:d   dedupe digests (SET of 32-byte digests, kept forever)
-- KEYS[2] {p:<id>}:q   available stock (LIST of sealed items, taken from the head)
-- ARGV[1..] pairs: dedupe digest (32 bytes), sealed item
-- Returns {0, added, duplicates} OK: items appended, and items skipped because their digest
-- was seen before (in the store or earlier in this call)
local rcall = redis.call
local added, dups = 0, 0
for i = 1, #ARGV - 1, 2 do
  if rcall('SADD', KEYS[1], ARGV[i]) == 1 then
    rcall('RPUSH', KEYS[2], ARGV[i + 1])
    added = added + 1
  else
    dups = dups + 1
  end
end
return {0, added, dups}
