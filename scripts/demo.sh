#!/usr/bin/env bash
# Sets up and runs the reference e-commerce deployment on embedded defaults:
# embedded Kafka, generated events, speed layer, lake sink, minutely seals, HTTP API.
# Extra arguments go to `duet demo` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/duet-target}"
exec cargo run --locked --bin duet -- demo "$@"
