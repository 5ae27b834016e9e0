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
# The fuzz targets are a workspace of their own (make fuzz builds them with
# nightly flags); checking them here keeps a rename in the library from
# breaking them unseen. Same dependency versions as the node's.
[[ -f fuzz/Cargo.lock && fuzz/Cargo.lock -nt Cargo.lock ]] || cp Cargo.lock fuzz/Cargo.lock
cargo check --manifest-path fuzz/Cargo.toml --target-dir "$HERALD_TARGET_DIR" --bins
