-- access_audit: append audit events and drop those past retention.
-- KEYS[1] {audit}:s  the audit trail (STREAM, field e = event JSON)
-- ARGV[1] oldest id to keep (ms; older entries are trimmed, approximately)
-- ARGV[2..] event JSON, one per entry, in order
-- Returns {0, id...} OK: the id of each entry appended
local rcall = redis.call
local ids = {0}
for i = 2, #ARGV do
  ids[#ids + 1] = rcall('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', 'e', ARGV[i])
end
return ids
