#!/usr/bin/env bash
# Runs the whole giftx test suite on a fresh Debian machine.
#
# Installs what is missing (redis-server, used by the tests' private Redis
# instances on free ports; chromium for the portal's browser tests; the
# Python venv with grpcio and Playwright), then builds and runs every test of the
# workspace. Never touches a Redis on the default port.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v redis-server >/dev/null 2>&1; then
  echo "test.sh: installing redis-server" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
# openssl: the TLS Redis tests make a throwaway CA and server certificate.
if ! command -v openssl >/dev/null 2>&1; then
  echo "test.sh: installing openssl" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "test.sh: cargo is missing; install Rust from https://rustup.rs (stable)" >&2
  exit 1
fi

# The portal's browser tests drive Debian's chromium (never a downloaded
# browser: Playwright is pointed at /usr/bin/chromium).
if ! command -v chromium >/dev/null 2>&1; then
  echo "test.sh: installing chromium" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "test.sh: installing python3-venv" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

export RUST_BACKTRACE=1

# The API from an independent client: Python grpcio stubs generated from
# proto/ at test time, against a real giftxd process.
cargo build --locked --bin giftxd --bin giftctl --bin giftx-portal
venv=target/pyenv
if [ ! -x "$venv/bin/python" ] || ! cmp -s tests/python/requirements.txt "$venv/requirements.txt"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
  cp tests/python/requirements.txt "$venv/requirements.txt"
fi
GIFTXD=target/debug/giftxd "$venv/bin/python" tests/python/test_story.py
GIFTXD=target/debug/giftxd GIFTCTL=target/debug/giftctl "$venv/bin/python" tests/python/test_trust.py

# The apology portal in headless Chromium, against real giftxd and
# giftx-portal processes.
CHROMIUM=/usr/bin/chromium "$venv/bin/python" tests/browser/test_portal.py

# Every Rust test. Each test binary runs its own redis-server.
cargo test --workspace --locked -- --test-threads="${GIFTX_TEST_THREADS:-4}"
