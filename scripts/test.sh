#!/usr/bin/env bash
# Runs the whole giftx test suite on a fresh Debian machine.
#
# Installs what is missing (redis-server, used by the tests' private Redis
# instances on free ports), then builds and runs every test of the
# workspace. Never touches a Redis on the default port.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: installing redis-server" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is missing; install Rust from https://rustup.rs (stable)" >&2
  exit 1
fi

# Two test threads per binary keep a 2-core machine responsive; each test
# binary runs its own redis-server.
export RUST_BACKTRACE=1
cargo test --workspace --locked -- --test-threads="${GIFTX_TEST_THREADS:-4}"
