#!/usr/bin/env bash
# `make clean`: remove build outputs. With --all (`make distclean`) also the
# local tools: .tools/ (venv, links, logs) and tests/browser/node_modules/.
# Tools installed system-wide or in ~/.cargo/bin (tansu) are left alone.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

if command -v cargo >/dev/null 2>&1; then
  cargo clean
else
  rm -rf "$HERALD_TARGET_DIR"
fi
rm -rf "$HERALD_ROOT/fuzz/target"
if [[ "${1:-}" == "--all" ]]; then
  rm -rf "$HERALD_ROOT/.tools" "$HERALD_ROOT/tests/browser/node_modules"
fi
