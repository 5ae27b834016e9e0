#!/usr/bin/env bash
# Dependency advisory check (part of `make test`): cargo audit of Cargo.lock
# against the RustSec advisory database, offline.
#
# The database is a snapshot beside the repository, not a fetch: CI has no
# network for it, and a fixed snapshot makes the check repeatable. It is
# looked for in $ADVISORY_DB, then ../shared/advisory-db (a CI clone has
# shared/ beside it), then /work/shared/advisory-db.
#
# Usage: scripts/audit.sh [cargo audit options]...   e.g. --ignore RUSTSEC-YYYY-NNNN
# Installs cargo-audit when missing (cargo install, about 4 minutes).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HERALD_ROOT"

# Advisories that do not apply to herald, each with its reason. None so far.
IGNORED=()

find_db() {
  local dir
  if [[ -n "${ADVISORY_DB:-}" ]]; then
    [[ -d "$ADVISORY_DB/crates" ]] || die "ADVISORY_DB=$ADVISORY_DB is not a RustSec advisory database (no crates/ folder in it)"
    printf '%s\n' "$ADVISORY_DB"
    return
  fi
  for dir in "$HERALD_ROOT/../shared/advisory-db" /work/shared/advisory-db; do
    if [[ -d "$dir/crates" ]]; then
      (cd "$dir" && pwd)
      return
    fi
  done
  die "no advisory database: looked in $HERALD_ROOT/../shared/advisory-db and /work/shared/advisory-db; set ADVISORY_DB to a copy of https://github.com/rustsec/advisory-db"
}

need_cargo
db="$(find_db)"
if ! cargo audit --version >/dev/null 2>&1; then
  log "installing cargo-audit (cargo install, about 4 minutes, log in ${HERALD_TOOLS#"$HERALD_ROOT"/}/logs/cargo-audit.log)"
  mkdir -p "$HERALD_TOOLS/logs"
  cargo install cargo-audit --locked >"$HERALD_TOOLS/logs/cargo-audit.log" 2>&1 \
    || { tail -n 40 "$HERALD_TOOLS/logs/cargo-audit.log" >&2; die "cargo install cargo-audit failed"; }
fi

snapshot=""
[[ -f "$db/SNAPSHOT.txt" ]] && snapshot=" ($(head -n 1 "$db/SNAPSHOT.txt" | grep -Eo 'of [0-9]{4}-[0-9]{2}-[0-9]{2}' || true))"
log "auditing Cargo.lock against $db$snapshot"
ignore=()
for id in "${IGNORED[@]}"; do ignore+=(--ignore "$id"); done
# Vulnerabilities fail the check; unmaintained or unsound crates are printed as warnings.
cargo audit --db "$db" --no-fetch --file "$HERALD_ROOT/Cargo.lock" "${ignore[@]}" "$@"
