#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md, into bench-results/:
#   giftx-bench all                  -> summary.md, results.json, latency.svg
#   giftx-bench growth --grow-to 10M -> growth-10m/
#   scripts/script-cost.sh           -> script-cost.txt (callgrind)
#   cargo bench (the ledger alone)   -> ledger.txt
#   cargo bench --bench refusals     -> refusals.txt (claim after 1,000 refusals vs fresh)
#   giftx-bench hardening            -> hardening/hardening.json (verify timing, Exchange beside issuance)
# About 11 minutes on 2 cores; needs ~1.5 GB of free memory for the 10 M
# codes. Installs what is missing from Debian (redis-server, redis-tools,
# valgrind). Starts its own servers on free loopback ports; never the Redis
# on 6379. Run it on a machine nothing else is loading, or compare ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench.sh: installing ${missing[*]}" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

out=bench-results
mkdir -p "$out"
cargo build --release --locked -p giftx-bench -p giftx-server
target/release/giftx-bench all --out "$out/"
target/release/giftx-bench growth --grow-to 10000000 --out "$out/growth-10m"
scripts/script-cost.sh | tee "$out/script-cost.txt"
cargo bench --locked -p giftx-ledger --bench ledger 2>/dev/null | tee "$out/ledger.txt"
cargo bench --locked -p giftx-ledger --bench refusals 2>/dev/null | tee "$out/refusals.txt"
target/release/giftx-bench hardening --out "$out/hardening" | tee "$out/hardening.txt"
target/release/giftx-bench trust --out "$out/trust"  # TLS + API keys + rate limit cost, tenant timing -> trust/summary.md
mkdir -p "$out/sentinel"
cargo bench --locked -p giftx-ledger --bench sentinel 2>/dev/null | tee "$out/sentinel/sentinel.txt"
cp target/bench/sentinel.json "$out/sentinel/sentinel.json"
echo "bench.sh: figures in $out/ (summary.md, growth-10m/summary.md, script-cost.txt, ledger.txt, refusals.txt, hardening.txt, trust/, sentinel/)"
