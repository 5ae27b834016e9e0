#!/usr/bin/env bash
# `make lint`: formatting and clippy, warnings are errors.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

# clippy runs rdkafka-sys's build script, which compiles librdkafka with cmake.
bash scripts/install-deps.sh build
cargo fmt --all --check
mapfile -t lock < <(cargo_lock_flags)
cargo clippy --workspace --all-targets "${lock[@]}" -- -D warnings
