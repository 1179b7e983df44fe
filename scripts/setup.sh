#!/usr/bin/env bash
# Installs what building and testing Duet needs on a fresh Debian machine with Rust:
# a C toolchain and make (librdkafka is built from source by rdkafka-sys), zlib, curl,
# redis-server (Debian's, for the Redis store's tests), psql (Debian's postgresql-client), and
# a Python venv with `deltalake` (the cross-check of the lake's tables) and `psycopg` (a client
# of the PostgreSQL port).
# Idempotent: installs only what is missing.
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v c++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -e /usr/include/zlib.h ] || need+=(zlib1g-dev)
# a real Redis for the Redis view store's tests (they start their own servers on loopback)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# psql, the PostgreSQL port's tests' first client
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
# wrk, the HTTP load generator of `duet bench serving`
command -v wrk >/dev/null 2>&1 || need+=(wrk)
# promtool and amtool check docs/ops/ (the alert rules and the Alertmanager example)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v amtool >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# openssl makes the self-signed certificates of the TLS tests (both serving ports)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# headless Chromium renders the live page at / in the tests
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true

# The unused-dependency check of the test script (a small crate, installed once).
if ! command -v cargo-machete >/dev/null 2>&1; then
  echo "setup: installing cargo-machete" >&2
  cargo install --locked --quiet cargo-machete@0.9.2
fi

# A Kafka-compatible broker nobody here wrote, for the tests that run against it as well as
# against the embedded mock cluster (tests start it themselves on 127.0.0.1). Built once from
# the crates registry (about 20 minutes on 2 cores) and cached outside the clone; with the
# libsql storage engine it keeps its data across restarts.
TOOLS="${DUET_TOOLS:-$HOME/.cache/duet-tools}"
if ! "$TOOLS/bin/tansu" --version 2>/dev/null | grep -q "^tansu 0.6.0"; then
  echo "setup: building the tansu broker into $TOOLS (once; about 20 minutes)" >&2
  cargo install --quiet tansu --version 0.6.0 --locked --no-default-features --features libsql \
    --root "$TOOLS" --target-dir "$TOOLS/target"
  rm -rf "$TOOLS/target"
fi

# A Delta reader Duet did not write, for the end-to-end cross-check (scripts/crosscheck.py).
VENV="${DUET_VENV:-$HOME/.cache/duet-venv}"
if ! "$VENV/bin/python" -c "import deltalake, pyarrow, psycopg" >/dev/null 2>&1; then
  echo "setup: creating $VENV with deltalake and pyarrow" >&2
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  # psycopg: the PostgreSQL port's tests' second client
  "$VENV/bin/pip" install -q --disable-pip-version-check "deltalake==1.6.6" "pyarrow==26.0.1" \
    "psycopg[binary]==3.3.9"
fi
