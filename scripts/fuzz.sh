#!/usr/bin/env bash
# Long fuzzing runs with cargo-fuzz (libFuzzer), beyond the bounded proptest fuzzing of the
# test suite (which also covers the HTTP query strings, through the router).
# usage: scripts/fuzz.sh [TARGET] [SECONDS]
#   targets: config_load, filter_parse, event_decode (default: all, 60 s each)
# cargo-fuzz needs nightly flags; the stable toolchain allows them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz@0.13.2
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/duet-fuzz-target}"
targets=("${1:-config_load filter_parse event_decode}")
seconds="${2:-60}"
for t in ${targets[@]}; do
  echo "== fuzz $t for ${seconds}s"
  cargo fuzz run "$t" --fuzz-dir fuzz -- -max_total_time="$seconds" -rss_limit_mb=4096
done
