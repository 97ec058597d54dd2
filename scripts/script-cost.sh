#!/usr/bin/env bash
# Instructions redis-server runs per EVALSHA of the ledger's claim script,
# next to the claim-sized script giftx-bench uses as its ceiling and to
# `return 1`, counted with callgrind: the same figure on a busy machine as
# on a quiet one (BENCHMARKS.md, "Where Redis's time goes").
#
# Needs valgrind, redis-server and redis-benchmark. Starts its own
# redis-server under callgrind on a free port (AOF, appendfsync always, as
# giftx requires) in a temporary directory; never the Redis on 6379.
#
# Usage: scripts/script-cost.sh [calls per script, default 3000]
set -euo pipefail
cd "$(dirname "$0")/.."
calls=${1:-3000}
codes=50000

for tool in valgrind callgrind_control redis-server redis-benchmark redis-cli; do
  command -v "$tool" >/dev/null || { echo "script-cost.sh: $tool is missing" >&2; exit 1; }
done

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.%p" \
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes \
  --appendfsync always --dir "$dir" >"$dir/valgrind.log" 2>&1 &
vg=$!
trap 'redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; kill "$vg" 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.2
done
pid=$(redis-cli -p "$port" info server | tr -d '\r' | sed -n 's/^process_id://p')

# The claim-sized ceiling of crates/giftx-bench/src/ceilings.rs, on the
# argument positions of claim_code-7.lua (field ARGV[2], now ARGV[1]).
cat >"$dir/ceiling.lua" <<'EOF'
local f = ARGV[2]
local rec = redis.call('HGET', KEYS[1], f)
local dl = redis.call('HGET', KEYS[3], 'deadline')
local lock = redis.call('HGET', KEYS[4], f)
redis.call('HSET', KEYS[1], f, 'P0123456789abcdef0123')
redis.call('HSET', KEYS[2], f, ARGV[4] .. ARGV[5] .. ARGV[4])
redis.call('HINCRBY', KEYS[3], 'n:active', -1)
redis.call('HINCRBY', KEYS[3], 'n:pending', 1)
redis.call('ZADD', KEYS[5], ARGV[1], f)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', '10000', '*', 'k', 'claim', 't', ARGV[1], 'c', f)
return 1
EOF
echo 'return 1' >"$dir/return1.lua"

# The state a run starts from: $codes ACTIVE code records (field = 12
# decimal digits, as redis-benchmark's __rand_int__ writes them) for the
# claims; for the completions, $codes PENDING exchanges (field = those 12
# digits: a 10-byte code field and 2 bytes of sequence, as the ledger's)
# of code records under their first 10 digits.
reset() {
  redis-cli -p "$port" flushall >/dev/null
  redis-cli -p "$port" eval "
    local n = tonumber(ARGV[1])
    for i = 0, n - 1 do
      local f = string.format('%012d', i)
      redis.call('HSET', KEYS[1], f, 'ALLLLLLLL' .. '\\0\\0' .. '\\0\\0\\0\\1' .. '1')
      redis.call('HSET', KEYS[2], f, cmsgpack.pack({'P', 'amazon', string.rep('r', 32),
        string.rep('f', 32), 1700000000000, 1700000000000, 1, 0, 0, 'holder-1',
        1700000600000, '', 0, '', 0, '', 1, i + 1}))
      redis.call('HSET', KEYS[4], string.sub(f, 1, 10),
        'PLLLLLLLL' .. '\\0\\1' .. '\\0\\0\\0\\1' .. '1')
    end
    redis.call('HSET', KEYS[3], 'dl', '9999999999999', 'ver', '1', 'bl:1', n, 'p', n,
      'op:amazon', n)
    return 1" 4 '{b1}:c:1' '{b1}:x:2' '{b1}:m:1' '{b1}:c:2' "$codes" >/dev/null
}

# run <lua file> <keys and arguments...>: $calls EVALSHAs of it from 64
# clients, on a fresh state; prints redis-server's instructions per call.
run() {
  reset
  local sha
  sha=$(redis-cli -p "$port" script load "$(cat "$1")")
  shift
  rm -f "$dir"/cg."$pid".*
  callgrind_control -z "$pid" >/dev/null 2>&1
  redis-benchmark -p "$port" -c 64 -n "$calls" -r "$codes" -q EVALSHA "$sha" "$@" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  local ir
  ir=$(grep -h '^summary:\|^totals:' "$dir"/cg."$pid".* | tail -1 | awk '{print $2}')
  echo $((ir / calls))
}

claim_args=(7 '{b1}:c:1' '{b1}:x:1' '{b1}:m:1' '{b1}:l' '{b1}:p' '{b1}:e' '{b1}:f:1'
  1700000000000 __rand_int__ LLLLLLLL "$(printf 'r%.0s' $(seq 32))"
  "$(printf 'f%.0s' $(seq 32))" amazon '' 0 holder-1 1700000600000 9999999999999 1
  ',' 86400000 5 600000 0001abcdef 1600000000000)
complete_script="$dir/complete.lua"
cat crates/giftx-ledger/lua/lib/exchange_record.lua \
  crates/giftx-ledger/lua/complete_exchange-5.lua >"$complete_script"

claim=$(run crates/giftx-ledger/lua/claim_code-7.lua "${claim_args[@]}")
complete=$(run "$complete_script" 5 '{b1}:c:2' '{b1}:x:2' '{b1}:m:1' '{b1}:p' '{b1}:e' \
  1700000001000 __rand_int__ 1 "$(printf 's%.0s' $(seq 90))" 0001abcdef0001 \
  1600000000000 9999999999999 1 86400000)
ceiling=$(run "$dir/ceiling.lua" "${claim_args[@]}")
trivial=$(run "$dir/return1.lua" "${claim_args[@]}")
printf 'redis-server instructions per EVALSHA (%s calls, 64 clients, callgrind)\n' "$calls"
printf '  %-34s %9s\n' 'claim_code-7.lua' "$claim" 'complete_exchange-5.lua' "$complete" \
  'claim + complete (one Exchange)' "$((claim + complete))" \
  'claim-sized ceiling script' "$ceiling" 'return 1' "$trivial"
awk -v a="$claim" -v c="$complete" -v b="$ceiling" 'BEGIN {
  printf "  one Exchange / ceiling script: %.2f\n", (a + c) / b }'
