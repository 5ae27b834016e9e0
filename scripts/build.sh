#!/usr/bin/env bash
# `make build`: install the build dependencies, then build the release binary
# (target/release/herald).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

bash scripts/install-deps.sh build
mapfile -t lock < <(cargo_lock_flags)
cargo build --release --workspace "${lock[@]}"
