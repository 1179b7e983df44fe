#!/usr/bin/env bash
# The whole test suite, as CI runs it: format, lints, then every test from one build.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

# Build outside the clone so that later runs (and CI on this machine) reuse it.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/duet-target}"
export CARGO_TERM_COLOR=never

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo machete (unused dependencies)"
cargo machete
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
