#!/usr/bin/env bash
# `make lint`: formatting and clippy, warnings are errors.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

# clippy runs rdkafka-sys's build script, which compiles librdkafka with cmake.
bash scripts/install-deps.sh build
cargo fmt --all --check
# The server crate's modules depend on each other one way (no import circle).
python3 scripts/check-layers.py
mapfile -t lock < <(cargo_lock_flags)
cargo clippy --workspace --all-targets "${lock[@]}" -- -D warnings
