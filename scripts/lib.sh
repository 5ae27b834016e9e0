# shellcheck shell=bash
# Shared by the scripts in this folder: repo root, PATH, logging.
# Source it; do not run it.

HERALD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HERALD_ROOT

# cargo-installed tools (cargo itself, tansu, cargo-nextest) live here; CI and
# non-login shells may not have it on PATH.
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
case ":$PATH:" in
  *":$CARGO_BIN:"*) ;;
  *) [[ -d "$CARGO_BIN" ]] && PATH="$CARGO_BIN:$PATH" ;;
esac
export PATH

# Where tests find the tools that install-deps.sh sets up (see README.md).
export HERALD_TOOLS="${HERALD_TOOLS:-$HERALD_ROOT/.tools}"

# Honour CARGO_TARGET_DIR like cargo does.
export HERALD_TARGET_DIR="${CARGO_TARGET_DIR:-$HERALD_ROOT/target}"

log() { printf '%s: %s\n' "${0##*/}" "$*"; }
die() { printf '%s: error: %s\n' "${0##*/}" "$*" >&2; exit 1; }

need_cargo() {
  command -v cargo >/dev/null 2>&1 \
    || die "cargo not found (looked on PATH and in $CARGO_BIN); install the Rust toolchain with rustup first"
}

# Extra cargo flags: in CI, refuse to touch Cargo.lock.
cargo_lock_flags() {
  if [[ "${CI:-}" == "true" ]]; then printf '%s\n' --locked; fi
}
